"""The host part of a profile fitted from the host decodes (``qtsim calibrate --host``; the
plan that measures them is :mod:`qtsim.calibration.probes.host`), no torch.

The fit runs through the model's own host timeline (:func:`qtsim.model.physical.step_time_s`,
overlap off, every traced op counted):

- ``h_op_s``: host time per traced aten op (dispatch plus a tiny CPU kernel: on a CPU the op
  runs on the dispatching thread);
- ``h_step_s``: per-step host time beyond the traced ops (``generate``'s Python between
  forwards);
- ``h_call_<path>_s`` for the quantized paths: host time per linear call beyond its traced aten
  ops (bitsandbytes' Python wrappers, quant-state handling and its CPU ops); the 16-bit paths'
  linears are nothing but aten ops, so their ``h_call`` is 0 by definition (the reference).

Depths separate per-layer from per-step cost; the 16-bit paths pin ``h_op_s``. The device part
of these decodes is set to a nominal, stated bandwidth (:data:`NOMINAL_BW_GBS`) with no per-call
or casting cost: at hidden 64 it is well under 1% of a step. ``h_launch_s`` (the CUDA launch
cost) cannot be measured without a GPU: it is written as a stated prior, 0 for a CPU host that
decodes on the CPU (no kernels are launched); give a GPU host part a GPU calibration's value.
"""

from __future__ import annotations

import json
import platform
from datetime import date
from pathlib import Path

import numpy as np

from qtsim import __version__
from qtsim.calibration.fit.measured import compute_dtype_4bit, decode_points, fit_host_constants
from qtsim.calibration.measure.raw import RawStore
from qtsim.errors import FitError
from qtsim.model import paths
from qtsim.profiles.files import file_sha256
from qtsim.profiles.hosts import HostPart
from qtsim.profiles.schema import Param

#: bandwidth assumed for the (negligible) device part of the host decodes, GB/s
NOMINAL_BW_GBS = 20.0



def device_base() -> dict:
    """The nominal device part of the host decodes: bandwidth only, no per-call cost."""
    base = {"mem_bw_gbs": NOMINAL_BW_GBS, "h_launch_s": 0.0, "t_kernel_s": 0.0}
    for p in paths.PATHS:
        for n in paths.path_param_names(p):
            base[n] = 0.0
    return base



def fit_host_frame(frame, notes: list[str] | None = None):
    """Fit the host constants to the host decodes in ``frame`` (a raw summary frame)."""
    notes = [] if notes is None else notes
    pts = decode_points(frame, notes)
    st = fit_host_constants(pts, device_base(), notes, name="host", cd4=compute_dtype_4bit(frame),
                            fit_layertok=False, fit_vocab=False)
    for k in ("t_vocab_s", "t_layertok_s"):
        st.params.pop(k, None)
    return st, pts



def _first(frame, col, default=""):
    if col in frame and frame[col].notna().any():
        return frame[col].dropna().iloc[0]
    return default



def host_part_from_fit(st, frame, raw_path: str, name: str, notes: list[str]):
    """A :class:`qtsim.profiles.hosts.HostPart` from the host fit, with provenance."""
    today = date.today().isoformat()
    device = str(_first(frame, "device", "cpu"))
    stack = {"python": str(_first(frame, "python", "") or platform.python_version())}
    for k in ("torch", "transformers", "bitsandbytes"):
        stack[k] = str(_first(frame, k, "not recorded"))
    threads = _first(frame, "torch_threads", "")
    basis = f"qtsim calibrate --host {today} on {device} from {raw_path}"
    phys = {}
    for k, p in st.params.items():
        note = f"; {p.note}" if p.note else ""
        src = "fixed" if p.note and not p.note.startswith("fitted") else "calibrated"
        phys[k] = Param(float(f"{p.value:.6g}"), float(f"{p.stderr:.4g}"), p.unit, src,
                        basis + note)
    for fam in ("fp16", "bf16"):
        for side in ("b1", "bn"):
            phys[f"h_call_{fam}_{side}_s"] = Param(
                0.0, 0.0, "s/call", "fixed",
                "reference: a 16-bit linear's host work is its traced aten ops (priced by h_op_s)")
    phys["h_launch_s"] = Param(
        0.0, 0.0, "s/kernel", "prior",
        "stated prior: a CPU host decoding on the CPU launches no CUDA kernels; a GPU's launch "
        "cost needs a GPU calibration")
    host = {"name": name,
            "description": f"HF transformers generate, eager, on {device} "
                           f"({threads} torch threads), measured by qtsim calibrate --host",
            "execution": "HF transformers generate, eager (no CUDA graphs)",
            "cpu": device, "torch_threads": int(threads) if threads != "" else 0,
            "stack": stack}
    prov = {"source": "calibrated", "date": today, "device": device, "qtsim_version": __version__,
            "n_measurements": int(st.n_points), "raw_data": raw_path,
            "raw_sha256": file_sha256(raw_path),
            "basis": "tiny-width (hidden 64) random-weight Qwen3-layout decodes at depths "
                     f"{', '.join(str(d) for d in sorted(set(map(int, frame['num_layers']))))} "
                     "on every kernel path at batch 1 and 3, fitted through "
                     "qtsim.model.physical.step_time_s (overlap off, every traced op counted; device "
                     f"part nominal: {NOMINAL_BW_GBS:g} GB/s, no per-call cost)"}
    fit_doc = {**{k: (float(f"{v:.6g}") if isinstance(v, float) and np.isfinite(v) else str(v))
                  for k, v in st.summary().items()},
               "residuals_pct": [round(100 * r, 2) for r in st.residuals], "notes": list(notes)}
    return HostPart(host, prov, phys, fit_doc)



def build_host_part(raw_path, name: str | None = None):
    """Read the host decodes in ``raw_path`` and fit a host part (no torch)."""
    frame = RawStore(raw_path, readonly=True).summary_frame("decode")
    if frame is None or len(frame) == 0:
        raise FitError(f"{raw_path}: no host decode points")
    frame = frame.assign(num_layers=[json.loads(c)["num_hidden_layers"]
                                     for c in frame["config_json"]])
    notes: list[str] = []
    st, _ = fit_host_frame(frame, notes)
    name = name or f"{_first(frame, 'hardware', 'cpu')}-host"
    return host_part_from_fit(st, frame, str(Path(raw_path)), name, notes), st


__all__ = ["NOMINAL_BW_GBS", "device_base", "fit_host_frame", "host_part_from_fit",
           "build_host_part"]
