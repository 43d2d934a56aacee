"""Host calibration: the host/software part of a profile, measured on this machine (no GPU).

DESIGN.md sec. 2a: host constants describe the CPU and the software stack (Python, torch,
transformers, bitsandbytes), not the accelerator. ``qtsim calibrate --host`` measures them by
greedy-decoding **tiny-width** random-weight models (hidden 64: the weights of a whole layer fit
in L1/L2, so the work each aten op does is negligible beside its dispatch) at three depths on
every kernel path (fp16, bf16, LLM.int8() at threshold 6 and 0, NF4 with and without double
quantisation) at batch 1 and 3, records every decode to HDF5 like ``calibrate`` does
(:mod:`qtsim.calibration.raw`, append-only, resumable), then fits through the model's own host
timeline (:func:`qtsim.model.physical.step_time_s`, overlap off, every traced op counted):

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

import platform
from datetime import date
from pathlib import Path

import numpy as np

from qtsim import __version__
from qtsim.errors import FitError
from qtsim.model import paths
from qtsim.profiles.files import file_sha256
from qtsim.profiles.schema import Param

#: the tiny architecture the host decodes use (Qwen3 layout, as the CPU calibration's decodes)
HOST_CONFIG = {
    "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
    "head_dim": 32, "vocab_size": 512, "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
}
HOST_DEPTHS = (1, 4, 10)
HOST_BATCHES = (1, 3)
HOST_PRECISIONS = ("fp16", "bf16", "int8", "int8_t0", "nf4", "nf4dq")
HOST_NEW_TOKENS = 12
HOST_PROMPT = 8
#: bandwidth assumed for the (negligible) device part of the host decodes, GB/s
NOMINAL_BW_GBS = 20.0


def host_configs(depths=HOST_DEPTHS) -> list[tuple[str, dict]]:
    return [(f"host-qwen3-h64-{d}l", {**HOST_CONFIG, "num_hidden_layers": int(d)})
            for d in depths]


def host_plan(device, depths=HOST_DEPTHS, batches=HOST_BATCHES, precisions=HOST_PRECISIONS,
              reps: int = 3) -> list:
    """Decode points of the host calibration (grouped so each model is built once)."""
    from qtsim.calibration.plan import DecodeSpec

    plan = []
    for name, cfg in host_configs(depths):
        for p in precisions:
            base, dq, thr = paths.family_settings(p)
            for b in batches:
                plan.append(DecodeSpec(name, cfg, base, b, HOST_PROMPT, HOST_NEW_TOKENS, reps,
                                       double_quant=dq, threshold=thr))
    return plan


def device_base() -> dict:
    """The nominal device part of the host decodes: bandwidth only, no per-call cost."""
    base = {"mem_bw_gbs": NOMINAL_BW_GBS, "h_launch_s": 0.0, "t_kernel_s": 0.0}
    for p in paths.PATHS:
        for n in paths.path_param_names(p):
            base[n] = 0.0
    return base


def fit_host_frame(frame, notes: list[str] | None = None):
    """Fit the host constants to the host decodes in ``frame`` (a raw summary frame)."""
    from qtsim.calibration.fit import compute_dtype_4bit, decode_points, fit_host_constants

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
    from qtsim.profiles.hosts import HostPart

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
    import json

    from qtsim.calibration.raw import RawStore

    frame = RawStore(raw_path, readonly=True).summary_frame("decode")
    if frame is None or len(frame) == 0:
        raise FitError(f"{raw_path}: no host decode points")
    frame = frame.assign(num_layers=[json.loads(c)["num_hidden_layers"]
                                     for c in frame["config_json"]])
    notes: list[str] = []
    st, _ = fit_host_frame(frame, notes)
    name = name or f"{_first(frame, 'hardware', 'cpu')}-host"
    return host_part_from_fit(st, frame, str(Path(raw_path)), name, notes), st


__all__ = ["HOST_CONFIG", "HOST_DEPTHS", "HOST_BATCHES", "HOST_PRECISIONS", "host_plan",
           "fit_host_frame", "build_host_part", "host_part_from_fit", "device_base"]
