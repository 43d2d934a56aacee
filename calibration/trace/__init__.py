"""The operation inventory: one real decode step traced per architecture and kernel path
(aten ops, CUDA kernels, syncs per layer), and what bitsandbytes' CUDA backend launches per
op. ``python -m qtsim.calibration.trace OUT.json`` writes ``data/reference/op_inventory.json``
(read by :mod:`qtsim.model.inventory`)."""
