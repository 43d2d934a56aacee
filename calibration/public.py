"""Fit the timeline model's device and host constants jointly to published decode latencies.

The bitsandbytes maintainers' table (``data/reference/bnb_maintainers_decode.csv``; conditions
in ``peer_measurements.md``: HF transformers 4.46.3 ``generate``, eager, torch 2.5.1,
bitsandbytes 0.45.0.dev, 64 prompt + 64 new tokens) gives per-token decode latency on an H100
SXM server and an RTX 4090 desktop. Neither GPU's table alone separates host from device: the
H100 8B rows are host-bound, the RTX 4090 rows largely device-bound, so the fit is joint:

- device (shared, scaled by each GPU's datasheet): ``eta_bw`` (effective / datasheet
  bandwidth), ``t_kernel_s`` (device time per kernel);
- host (the server's): ``h_op_s`` (per traced aten operation), ``h_step_s`` (per step),
  ``h_call_<path>_s`` (per linear call of a bitsandbytes path beyond its traced operations);
  the desktop host does the same work ``host_speedup`` times faster.

Everything else is physics (bytes per weight, dequantisation traffic) or datasheet
(throughputs), and the step comes from :func:`qtsim.model.physical.step_time_s` itself, so a change
to the model changes this fit. :func:`score` fits on some rows and scores the others.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from qtsim.errors import FitError
from qtsim.model import physical
from qtsim.model.architecture import load_architecture

TABLE = "bnb_maintainers_decode.csv"
SERVER, DESKTOP = "h100-sxm", "rtx-4090"
QUANT_PATHS = ("nf4_b1", "nf4_bn", "nf4dq_b1", "nf4dq_bn", "int8", "int8_t0")
#: CUDA launch cost on the host per kernel (cudaLaunchKernel through torch; a stated prior: it
#: is nearly collinear with h_op_s in HF eager, where almost every operation launches a kernel)
H_LAUNCH_S = 2.5e-6
#: the published stack (bitsandbytes 0.45) has no fused 4-bit GEMM: batch >= 2 dequantises
FUSED_4BIT_MAX_BATCH = 0.0
#: (name, initial value, lower bound, upper bound, scale) of the fitted constants
FREE = (("eta_bw", 0.8, 0.3, 1.0, 1.0), ("t_kernel_s", 3.0, 0.5, 30.0, 1e-6),
        ("h_op_s", 8.0, 0.5, 60.0, 1e-6), ("h_step_s", 500.0, 0.0, 5e3, 1e-6),
        ("host_speedup", 2.0, 0.5, 6.0, 1.0)) + tuple(
    (f"h_call_{p}_s", 30.0, 0.0, 500.0, 1e-6) for p in QUANT_PATHS)


#: effective / datasheet bandwidth prior (NVIDIA aiconfigurator's mem_bw_empirical_scaling_factor
#: 0.8, +-0.1), a penalty in the fit so that host-bound rows alone cannot push it anywhere
ETA_PRIOR = (0.8, 0.1)
PRIOR_WEIGHT = 0.1  # one prior sigma weighs like a 10% step-time residual


def read_rows() -> list[dict]:
    """The published rows, with kernel-path family and numbers parsed."""
    text = (resources.files("qtsim.data.reference") / TABLE).read_text()
    rows = []
    for r in csv.DictReader(text.splitlines()):
        fam = {"nf4dq": "nf4dq", "nf4": "nf4", "bf16": "bf16", "int8": "int8",
               "int8_t0": "int8_t0"}[r["path"]]
        rows.append({**r, "family": fam, "batch": float(r["batch"]),
                     "prompt_tokens": float(r["prompt_tokens"]),
                     "new_tokens": float(r["new_tokens"]),
                     "step_s": float(r["decode_ms_per_token"]) * 1e-3})
    return rows


def gpu_specs() -> dict[str, dict]:
    text = (resources.files("qtsim.data.reference") / "gpu_specs.csv").read_text()
    return {r["gpu"]: r for r in csv.DictReader(text.splitlines())}


def device_params(spec: dict, eta_bw: float, t_kernel_s: float) -> dict:
    """Device constants of one GPU from its datasheet row and the shared fitted factors.

    Matmuls at half the datasheet dense throughput (16-bit, or int8 for LLM.int8()); the
    dequantise-then-GEMM 4-bit path writes a 16-bit copy and reads it back (4 bytes per weight
    at the effective bandwidth); per-call device costs are the path's kernels x ``t_kernel_s``.
    """
    bw = eta_bw * float(spec["mem_bw_gbs"])
    t16 = 2.0 / (0.5 * float(spec["fp16_dense_tflops"]) * 1e12)
    t8 = 2.0 / (0.5 * float(spec["int8_dense_tops"]) * 1e12)
    deq = 2.0 * 2.0 / (bw * 1e9)
    p = {"mem_bw_gbs": bw, "t_kernel_s": t_kernel_s, "p_awake_w": 0.0, "e_byte_j": 0.0,
         "e_flop_j": 0.0}
    for path, tok, w in (("fp16", t16, 0.0), ("bf16", t16, 0.0), ("int8", t8, 0.0),
                         ("int8_t0", t8, 0.0), ("nf4_b1", t16, 0.0), ("nf4_bn", t16, deq),
                         ("nf4dq_b1", t16, 0.0), ("nf4dq_bn", t16, deq)):
        p.update({f"t_call_{path}_s": 0.0, f"t_weight_{path}_s": w, f"t_tokweight_{path}_s": tok})
    return p


def host_params(v: dict, speedup: float = 1.0) -> dict:
    """Host constants of the server (``speedup`` 1) or a host ``speedup`` times faster."""
    out = {"h_op_s": v["h_op_s"] / speedup, "h_launch_s": H_LAUNCH_S / speedup,
           "h_step_s": v["h_step_s"] / speedup, "h_fused4bit_max_batch": FUSED_4BIT_MAX_BATCH}
    out.update({f"h_call_{p}_s": v[f"h_call_{p}_s"] / speedup for p in QUANT_PATHS})
    return out


def predict(rows: list[dict], v: dict, overlap: bool = True) -> np.ndarray:
    """Predicted decode step, s, for each row under constants ``v`` (SI units).

    ``overlap=False`` is the simpler, additive form (host + device, as on a CPU), kept so that
    held-out error and AIC can decide between the two (:func:`compare_forms`).
    """
    specs = gpu_specs()
    out = np.empty(len(rows))
    cache = {}
    for i, r in enumerate(rows):
        key = r["model"]
        if key not in cache:
            cache[key] = load_architecture(key).counts()
        params = {**device_params(specs[r["gpu"]], v["eta_bw"], v["t_kernel_s"]),
                  **host_params(v, v["host_speedup"] if r["gpu"] == DESKTOP else 1.0)}
        ctx = r["prompt_tokens"] + r["new_tokens"] / 2.0
        out[i] = float(physical.step_time_s(cache[key], r["family"], r["batch"], ctx, params,
                                            native="bf16", compute_dtype_4bit="bf16",
                                            overlap=overlap))
    return out


@dataclass
class PublicFit:
    """Fitted constants (SI) with stderr, fit statistics and per-row residuals."""

    values: dict
    stderr: dict
    aic: float
    bic: float
    fit_rows: list = field(default_factory=list)
    fit_pred: np.ndarray | None = None


def fit(rows: list[dict], overlap: bool = True) -> PublicFit:
    """Least squares in relative step-time error (lmfit), bounds from :data:`FREE`.

    Without desktop rows the host speed-up is not identifiable and is held at 1.
    """
    import lmfit

    if len(rows) <= len(FREE):
        raise FitError(f"{len(rows)} published rows cannot determine {len(FREE)} constants")
    obs = np.array([r["step_s"] for r in rows])
    ps = lmfit.Parameters()
    scale = {}
    desktop = any(r["gpu"] == DESKTOP for r in rows)
    for name, init, lo, hi, sc in FREE:
        if name == "host_speedup" and not desktop:
            ps.add(name, value=1.0, vary=False)
        else:
            ps.add(name, value=init, min=lo, max=hi)
        scale[name] = sc

    def si(p):
        return {k: p[k].value * scale[k] for k in scale}

    def residual(p):
        v = si(p)
        prior = (v["eta_bw"] - ETA_PRIOR[0]) / ETA_PRIOR[1]
        return np.r_[(predict(rows, v, overlap) - obs) / obs, prior * PRIOR_WEIGHT]

    res = lmfit.minimize(residual, ps, method="least_squares")
    if not res.success:
        raise FitError(f"public-rows fit did not converge ({res.message})")
    vals = si(res.params)
    se = {k: (res.params[k].stderr or 0.0) * scale[k] for k in scale}
    return PublicFit(vals, se, float(res.aic), float(res.bic), rows, predict(rows, vals, overlap))


def split(rows: list[dict], how: str):
    """(fit rows, scored rows) for a named split: ``8b->32b`` (fit the Llama-3.1-8B rows of
    both GPUs, score Qwen2.5-32B) or ``h100->4090`` (fit the H100, score the RTX 4090 with the
    server host, since a held-out host is unknown)."""
    if how == "8b->32b":
        return ([r for r in rows if r["model"] == "llama-3.1-8b"],
                [r for r in rows if r["model"] != "llama-3.1-8b"])
    if how == "h100->4090":
        return [r for r in rows if r["gpu"] == SERVER], [r for r in rows if r["gpu"] == DESKTOP]
    raise ValueError(f"unknown split {how!r}")


def decisive_verdicts(rows: list[dict], step: np.ndarray, margin: float = 0.05):
    """For each quantized row whose measured time differs from the same GPU/model/batch 16-bit
    row by more than ``margin``: (row, measured slower?, predicted slower?)."""
    ref = {(r["gpu"], r["model"], r["batch"]): i for i, r in enumerate(rows) if r["family"] == "bf16"}
    out = []
    for i, r in enumerate(rows):
        j = ref.get((r["gpu"], r["model"], r["batch"]))
        if r["family"] == "bf16" or j is None:
            continue
        m = r["step_s"] / rows[j]["step_s"]
        if abs(m - 1.0) > margin:
            out.append((r, bool(m > 1.0), bool(step[i] / step[j] > 1.0)))
    return out


def score(how: str = "8b->32b", overlap: bool = True) -> dict:
    """Fit on one part of the published rows, score the other: MAPE, verdicts, residuals."""
    rows = read_rows()
    fit_rows, test_rows = split(rows, how)
    f = fit(fit_rows, overlap)
    v = dict(f.values)
    if how == "h100->4090":
        v["host_speedup"] = 1.0  # the held-out desktop host is unknown: the server's is assumed
    pred = predict(test_rows, v, overlap)
    obs = np.array([r["step_s"] for r in test_rows])
    ape = np.abs(pred - obs) / obs
    verdicts = decisive_verdicts(test_rows, pred)
    return {"split": how, "fit": f, "rows": test_rows, "pred_s": pred, "obs_s": obs,
            "mape": float(np.mean(ape)), "max_ape": float(np.max(ape)),
            "fit_mape": float(np.mean(np.abs(f.fit_pred - [r["step_s"] for r in fit_rows])
                                      / [r["step_s"] for r in fit_rows])),
            "verdicts_right": sum(m == p for _, m, p in verdicts), "verdicts": len(verdicts)}


def compare_forms(how: str = "8b->32b") -> list[dict]:
    """The timeline form (asynchronous overlap between traced synchronisations) against the
    additive form (host + device): AIC/BIC of each fitted to every row, and held-out MAPE."""
    rows = read_rows()
    out = []
    for name, overlap in (("timeline (overlap, traced syncs)", True), ("additive (host + device)", False)):
        f = fit(rows, overlap)
        s = score(how, overlap)
        out.append({"form": name, "aic": f.aic, "bic": f.bic, "heldout_mape": s["mape"],
                    "verdicts_right": s["verdicts_right"], "verdicts": s["verdicts"]})
    return out
