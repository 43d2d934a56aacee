"""The physical model: pure functions of arrays with units, the paper's equations."""
