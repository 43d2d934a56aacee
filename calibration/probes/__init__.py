"""Measurement, stage 2: what is measured and how it runs: the calibration plans and their
point specs, the microbenchmarks, full decodes, power-state windows, the host decodes, the
contention probes, and the runner that executes a plan into the raw store
(:mod:`qtsim.calibration.measure`)."""
