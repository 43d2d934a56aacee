"""Fleets on Ray, above the stages they orchestrate: calibration and validation campaigns over many GPU nodes on Ray, and big simulate
grids chunked over Ray workers.

A **slot** is one device to measure: a Ray custom resource ``qtsim:<slot>`` (one unit of it,
declared when the node joins: ``ray start --address HEAD --resources '{"qtsim:node7": 1}'``)
and the hardware asked of it (``h100``, ``l4``, ``cpu``...). A slot's task asks for its
resource (so it runs on that node and nowhere else) and, for a GPU, ``num_gpus=1`` (Ray then
sets ``CUDA_VISIBLE_DEVICES`` to the GPU it grants; the task measures device 0 of what it sees).

Each task calls the measurement library (:func:`~qtsim.calibration.probes.runner.run_plan` over a
plan from :mod:`qtsim.calibration.probes.plan`, or held-out validation specs) and appends every point
to a raw HDF5 on the node's own disk (``WORK/<campaign>/<slot>/<kind>.h5``), exactly as
``qtsim calibrate``/``validate`` do; it returns the file's bytes when done, and the head writes
them to ``OUT/nodes/<slot>/`` (no shared filesystem needed). The head then fits one profile
per slot (``qtsim fit``'s :func:`~qtsim.calibration.fit.profile_builder.build_profile`, no torch)
and writes the fleet summary: per hardware model, the spread of every fitted constant between
units (mean, sd, min, max, CV) as CSV and JSON, and a plot.

Faults:

- a worker or node lost mid-run: Ray retries the task (``max_retries``) on the slot's node;
  the retry resumes the node's raw file (points already appended are skipped, raw data is
  append-only and point ids unique), so no point is lost or measured twice. A retry that finds
  a different unit behind the slot (another GPU UUID or host) is refused rather than mixed;
- a slot whose device is not the requested hardware (or whose Ray node has no GPU) is refused,
  with the reason in the manifest and the summary;
- the head keeps a manifest (``OUT/campaign.json``, rewritten atomically after every change):
  an interrupted campaign resumes with ``--resume``, skipping slots already gathered.

Modules: :mod:`~qtsim.calibration.fleet.slots` (slots and what Ray must hold),
:mod:`~qtsim.calibration.fleet.node` (one slot measured on its node),
:mod:`~qtsim.calibration.fleet.head` (manifest, tasks, gathering),
:mod:`~qtsim.calibration.fleet.summary` (per-node fits, spreads, validation summary),
:mod:`~qtsim.calibration.fleet.tiles` (big simulate grids) and
:mod:`~qtsim.calibration.fleet.campaigns`, which strings them together for ``qtsim fleet``.
"""
