"""Measurement, stage 1: the device behind a small interface (CPU or one CUDA GPU), the energy
meters and their measurement window (NVML, RAPL, the HLI estimate), the conditions recorded
with every point, and the raw HDF5 store. Knows nothing of what is measured (that is
:mod:`qtsim.calibration.probes`); torch and pynvml load inside the functions that need them."""
