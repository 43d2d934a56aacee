"""The simulator: profiles composed with the model over whole grids, B* and N*."""
