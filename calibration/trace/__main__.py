"""``python -m qtsim.calibration.trace OUT.json``: write the operation inventory."""

from qtsim.calibration.trace.step import main

raise SystemExit(main())
