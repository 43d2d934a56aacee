"""Fit a hardware profile's constants from recorded raw HDF5 (lmfit; never torch).

Three stages, each a least-squares fit with lmfit ``Parameters`` and ``minimize``; residuals
are relative (each point weighted by 1/observed), so microsecond kernels and millisecond steps
count alike:

1. **Kernel paths** from linear microbenchmarks (kind ``linear``): per path, time per call
   ``t_call + W (bytes_per_weight / BW + t_weight) + B W t_tokweight`` with one bandwidth shared
   by all paths (``t_weight`` of the ``fp16`` reference path is 0 by definition, which is what
   separates bandwidth from casting). Batch-1 paths (``*_b1``) only ever see B = 1, so their
   ``t_tokweight`` cannot be told from ``t_weight``: it is fixed to the reference path's.
2. **Host constants** from short decodes (kind ``decode``) of small real architectures, in
   ``inventory`` mode (the default): the measured step time is the model's own host + device
   timelines (:func:`qtsim.model.physical.step_time_s`, overlap off on a CPU) with the traced
   operation counts, and the fit finds ``h_op_s`` (s per traced non-linear aten op),
   ``h_step_s``, ``h_call_<path>_s`` per quantized path, ``t_layertok_s`` and ``t_vocab_s``.
   Stage 1's ``t_call`` already holds each linear's own dispatch (measured on the same thread),
   so only the non-linear ops are priced (``[hardware] t_call_includes_dispatch``). The older
   ``lumped`` mode (``t_step_s + L t_layer_<fam>_s`` per-family floors) stays selectable for
   comparison. Two or more depths are needed to separate per-step from per-layer cost.
3. **Energy** where a real meter (NVML counter, RAPL) measured it: ``p_awake_w``, ``e_byte_j``,
   ``e_flop_j`` from every point's energy. With only the HLI estimate (TDP x time), the power
   model is that assumption: ``p_awake_w`` = the assumed TDP, the others 0, labelled so.

A fit that does not converge, a constant the data cannot identify (no stderr), or one that
comes out significantly negative raises :class:`qtsim.errors.FitError` and no profile is
written. A constant negative within 2 sigma of 0 is held at 0 and says so.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from qtsim import __version__
from qtsim.calibration.fit.power_fit import power_constants, state_powers
from qtsim.errors import FitError
from qtsim.model import paths, physical
from qtsim.model.architecture import from_config
from qtsim.profiles.files import file_sha256
from qtsim.profiles.profile import HardwareProfile
from qtsim.profiles.schema import Param

REAL_METERS = ("nvml_counter", "rapl", "nvml_poll")
#: constants are fitted in units that make them O(1) (us, ps), which keeps lmfit's numerical
#: derivatives and its bound handling well conditioned; results are converted back to SI
SCALES = (("t_tokweight_", 1e-12), ("t_weight_", 1e-12), ("inv_bw", 1e-12), ("t_call_", 1e-6),
          ("t_vocab", 1e-9),
          ("t_layertok_", 1e-6), ("t_layer_", 1e-6), ("t_step", 1e-6), ("h_op", 1e-6),
          ("h_step", 1e-6), ("h_call_", 1e-6), ("h_prefill", 1e-6), ("e_byte", 1e-12),
          ("e_flop", 1e-12), ("p_static", 1.0))


def scale_of(name: str) -> float:
    for prefix, sc in SCALES:
        if name.startswith(prefix):
            return sc
    return 1.0


def si_values(params) -> dict[str, float]:
    """lmfit parameter values in SI units."""
    return {k: v * scale_of(k) for k, v in params.valuesdict().items()}


@dataclass
class FittedParam:
    value: float
    stderr: float
    unit: str
    note: str = ""
    source: str = ""  # the profile source; "" = from the note (profile_from_fit)


@dataclass
class StageResult:
    """One lmfit stage: fitted values with stderr, correlations and fit statistics."""

    name: str
    params: dict[str, FittedParam]
    n_points: int
    aic: float
    bic: float
    redchi: float
    mape: float  # mean absolute percentage error of the fit on its own points
    max_ape: float
    correlation: dict[str, dict[str, float]] = field(default_factory=dict)
    residuals: list[float] = field(default_factory=list)
    reference: str = ""

    def summary(self) -> dict:
        return {"n_points": self.n_points, "aic": self.aic, "bic": self.bic,
                "redchi": self.redchi, "mape_pct": 100 * self.mape, "max_ape_pct": 100 * self.max_ape}


@dataclass
class FitResult:
    stages: list[StageResult]
    energy_method: str
    notes: list[str]
    mode: str = "lumped"

    def params(self) -> dict[str, FittedParam]:
        out = {}
        for s in self.stages:
            out.update(s.params)
        return out


def _lmfit():
    import lmfit

    return lmfit


#: evaluations per free constant before the inventory-mode host fit is declared not converging
#: (lmfit's leastsq default is 2000; over poorly separated host constants, on noisy decodes, that
#: ran for six minutes before failing; the fit then falls back to the lumped form)
MAX_NFEV = 300


def _minimize(params, residual, name: str, n_points: int, notes: list[str] | None = None,
              max_nfev_per_constant: int | None = None):
    """lmfit least squares; constants that settle on their lower bound are held there and the
    fit is repeated (a bound-pinned constant has no standard error), each one noted."""
    lmfit = _lmfit()
    n_free = sum(1 for p in params.values() if p.vary)
    if n_points <= n_free:
        raise FitError(f"{name}: {n_points} points cannot determine {n_free} constants; measure more points")
    for _ in range(len(params) + 1):
        n_vary = sum(1 for p in params.values() if p.vary)
        cap = max_nfev_per_constant * (n_vary + 1) if max_nfev_per_constant else None
        res = lmfit.minimize(residual, params, method="leastsq", max_nfev=cap)
        if not res.success:  # leastsq's bound transform crawls near a bound: trust-region instead
            res = lmfit.minimize(residual, params, method="least_squares", max_nfev=cap)
        pinned = _at_bound(res.params)
        if not res.success and not pinned:
            raise FitError(f"{name}: fit did not converge ({res.message})")
        if not pinned:
            break
        for k in pinned:
            params[k].set(value=params[k].min, vary=False)
            if notes is not None:
                notes.append(f"{k}: at its physical bound {params[k].min:g}; held there")
    bad = [k for k, p in res.params.items() if p.vary and (p.stderr is None or not math.isfinite(p.stderr))]
    if bad:
        raise FitError(f"{name}: not identifiable from these measurements: {', '.join(bad)} "
                       "(no finite standard error; measure more shapes or batches)")
    res.pinned = [k for k, p in params.items() if not p.vary and p.min is not None
                  and p.value == p.min and not p.expr]
    return res


def _at_bound(params) -> list[str]:
    """Varying constants that settled on their lower bound without a standard error: they make
    the Jacobian singular (leastsq then reports no error bars, or stalls), so they are held."""
    return [k for k, p in params.items() if p.vary and p.min is not None and np.isfinite(p.min)
            and p.value <= p.min + 1e-6 and (p.stderr is None or not math.isfinite(p.stderr))]


def _stage(name, res, units, observed, predicted, notes) -> StageResult:
    params = {}
    for k, p in res.params.items():
        if not p.vary:
            continue
        sc = scale_of(k)
        val, se = float(p.value) * sc, float(p.stderr) * sc
        note = ""
        if val < 0:
            if val < -2 * se:
                raise FitError(f"{name}: {k} fitted to {val:.3g} ± {se:.3g}, significantly negative: "
                               "the model does not describe these measurements")
            note = f"fitted {val:.3g} ± {se:.3g}, consistent with 0: held at 0"
            notes.append(f"{k}: {note}")
            val = 0.0
        params[k] = FittedParam(val, se, units.get(k, ""), note)
    corr = {}
    for k, p in res.params.items():
        if p.vary and p.correl:
            corr[k] = {j: float(c) for j, c in p.correl.items()}
    ape = np.abs(predicted / observed - 1.0)
    return StageResult(name, params, len(observed), float(res.aic), float(res.bic),
                       float(res.redchi), float(ape.mean()), float(ape.max()), corr,
                       [float(x) for x in (predicted / observed - 1.0)])


# ---- stage 1: kernel paths ---------------------------------------------------------------------
def _bytes_per_weight(path: str, in_features: float) -> float:
    """Bytes per weight a measured kernel path streams (:func:`physical.linear_bytes_per_weight`)."""
    return physical.linear_bytes_per_weight(paths.split_side(path)[0], in_features)


def reference_path(lin) -> str:
    """The 16-bit batch-1 path with the smallest time per weight: it defines the bandwidth.

    Its ``t_weight`` is 0 by definition, every other path's is the extra per-weight time over
    it. (On GPUs that is fp16; on a CPU with AMX it can be bf16.)
    """
    cands = [p for p in (f"{f}_b1" for f in paths.SIXTEEN_BIT) if p in set(lin["split"])]
    if not cands:
        raise FitError("no 16-bit linear layer was measured at batch 1: bandwidth cannot be "
                       "separated from casting cost")
    def slope_s_per_weight(p):
        sub = lin[lin["split"] == p]
        w = (sub["in_features"] * sub["out_features"]).to_numpy(float)
        return np.polyfit(w, sub["t_call_s"].to_numpy(float), 1)[0] if len(np.unique(w)) > 1 else np.inf

    return min(cands, key=slope_s_per_weight)


def linear_rows(frame, notes: list[str]):
    """The linear microbenchmark rows stage 1 fits, each with its path split at batch 1
    (``split``): outlier-injected and, where rotating ones exist, cache-resident points out."""
    lin = _without_outliers(frame[frame["kind"] == "linear"], notes)
    if "rotation" in lin:
        rot = lin["rotation"].fillna(1).astype(float)
        if (rot > 1).any() and (rot <= 1).any():
            notes.append(f"{int((rot <= 1).sum())} cache-resident linear points (no rotating "
                         f"buffers) kept out of the fit: the rotating ones measure what a model sees")
            lin = lin[rot > 1]
        if (rot > 1).any():
            notes.append(f"linear probes rotate over {int(rot.min())}-{int(rot.max())} layers "
                         "(weights beyond the last-level cache)")
    if lin.empty:
        raise FitError("no linear microbenchmarks in the raw data: nothing to fit kernel paths from")
    return lin.assign(split=[paths.split_path(p, b)
                             for p, b in zip(lin["path"], lin["batch"], strict=True)])


def linear_points(lin) -> dict:
    """The linear rows as arrays: ``path`` (split), ``weights``, ``bytes_per_weight``, ``batch``,
    ``t_obs`` (s per call)."""
    path_of = lin["split"].to_numpy()
    return {"path": path_of, "weights": (lin["in_features"] * lin["out_features"]).to_numpy(float),
            "bytes_per_weight": np.array([_bytes_per_weight(p, i) for p, i in
                                          zip(path_of, lin["in_features"], strict=True)]),
            "batch": lin["batch"].to_numpy(float), "t_obs": lin["t_call_s"].to_numpy(float)}


def predict_linear_calls(pts: dict, v: dict) -> np.ndarray:
    """Time per call of every linear probe from the model itself (:func:`physical.linear_call_s`
    with each point's path coefficients), s; ``v`` in SI, the bandwidth as ``inv_bw_s_per_byte``."""
    coeff = {c: np.array([v[paths.param_name(p, c)] for p in pts["path"]])
             for c in paths.PATH_COEFFS}
    return physical.linear_call_s(pts["weights"], pts["bytes_per_weight"], pts["batch"],
                                  1.0 / (v["inv_bw_s_per_byte"] * 1e9), coeff["t_call"],
                                  coeff["t_weight"], coeff["t_tokweight"])


def _kernel_parameters(lin, ref: str):
    """Stage 1's lmfit Parameters (us, ps; bounded at 0), their units, and the coefficients
    fixed by definition (the reference's ``t_weight``, batch-1 paths' ``t_tokweight``)."""
    ps = _lmfit().Parameters()
    r1 = lin[lin["split"] == ref].sort_values("in_features").iloc[-1]
    bw0 = 2.0 * r1["in_features"] * r1["out_features"] / r1["t_call_s"]
    ps.add("inv_bw_s_per_byte", value=1.0 / bw0 / 1e-12, min=1e-6)
    units = {"inv_bw_s_per_byte": "s/byte"}
    fixed = {}
    for p in sorted(lin["split"].unique()):
        t_min = float(lin.loc[lin["split"] == p, "t_call_s"].min())
        ps.add(paths.param_name(p, "t_call"), value=t_min / 2 / 1e-6, min=0.0)
        ps.add(paths.param_name(p, "t_weight"), value=0.0 if p == ref else 1.0, min=0.0,
               vary=p != ref)
        ps.add(paths.param_name(p, "t_tokweight"), value=0.0 if p.endswith("_b1") else 1.0,
               min=0.0, vary=not p.endswith("_b1"))
        if p == ref:
            fixed[paths.param_name(p, "t_weight")] = "reference path: 0 by definition"
        if p.endswith("_b1"):
            fixed[paths.param_name(p, "t_tokweight")] = ("batch-1 path: per-token cost folded "
                                                         "into t_weight")
        units.update({paths.param_name(p, c): physical.PARAM_UNITS[c] for c in paths.PATH_COEFFS})
    return ps, units, fixed


def fit_kernel_paths(frame, notes: list[str]) -> StageResult:
    """Stage 1 on linear microbenchmark rows (path, in_features, out_features, batch, t_call_s).

    Every path is split at batch 1 (``_b1``: the GEMV kernels) and batch >= 2 (``_bn``).
    Batch-1 paths have no per-token term (it is folded into ``t_weight``); the reference
    (:func:`reference_path`) has none either, so its time is ``t_call + W 2 bytes / BW``: that
    defines BW. Each point is predicted by :func:`physical.linear_call_s`.
    """
    lin = linear_rows(frame, notes)
    ref = reference_path(lin)
    pts = linear_points(lin)
    t_obs = pts["t_obs"]
    ps, units, fixed = _kernel_parameters(lin, ref)
    res = _minimize(ps, lambda v: (predict_linear_calls(pts, si_values(v)) - t_obs) / t_obs,
                    "kernel-path fit", len(t_obs), notes)
    st = _stage("kernel_paths", res, units, t_obs, predict_linear_calls(pts, si_values(res.params)),
                notes)
    for k, why in fixed.items():
        st.params[k] = FittedParam(0.0, 0.0, units[k], why)
    for k in res.pinned:
        if k not in st.params:
            st.params[k] = FittedParam(float(res.params[k].value) * scale_of(k), 0.0, units[k],
                                       "held at its physical bound 0 by the fit")
    st.reference = ref
    return st


# ---- stage 2: per-step floor -------------------------------------------------------------------
def _without_outliers(rows, notes: list[str] | None = None):
    """Outlier-injected points exercise LLM.int8()'s fp16 path: reported, not fitted."""
    if "outlier_injection" in rows:
        oi = rows["outlier_injection"].fillna(False).astype(bool)
        if oi.any() and notes is not None:
            notes.append(f"{int(oi.sum())} outlier-injected {rows['kind'].iloc[0]} points kept out of the fit")
        rows = rows[~oi]
    return rows


def _attr(r, key, default):
    v = r.get(key)
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else v


def row_family(r) -> str:
    """The kernel-path family a recorded decode ran (a threshold of 0 is ``int8_t0``: a
    missing one, not a zero, means the default 6)."""
    return paths.path_family(str(r["precision"]),
                             bool(_attr(r, "bnb_4bit_use_double_quant", False)),
                             float(_attr(r, "llm_int8_threshold", 6.0)))


def _decode_rows(frame, notes: list[str] | None = None):
    dec = frame[frame["kind"] == "decode"] if "kind" in frame else frame.iloc[0:0]
    dec = _without_outliers(dec, notes)
    rows = []
    for _, r in dec.iterrows():
        arch = from_config(json.loads(r["config_json"]), name=str(r.get("model", "decode")))
        fam = row_family(r)
        rows.append((r, arch.counts(), fam))
    return rows


def compute_dtype_4bit(frame) -> str:
    """The compute dtype the 4-bit decodes used (bf16 on CPU, fp16 on CUDA by default)."""
    if "compute_dtype" in frame and "precision" in frame:
        d = frame[frame["precision"].isin(paths.FOUR_BIT_PRECISIONS) & frame["compute_dtype"].notna()]
        if len(d):
            return str(d["compute_dtype"].iloc[0])
    return paths.NATIVE


def _add_held(st: StageResult, res, units: dict, why_fixed: dict | None = None) -> None:
    """Add the constants a stage held (at their bound, or fixed) to its result, with why."""
    for k, p in res.params.items():
        if not p.vary and k not in st.params:
            why = (why_fixed or {}).get(k) or (
                "held at its physical bound 0 by the fit" if k in res.pinned
                else "fixed: not resolvable from these decodes, held at 0")
            st.params[k] = FittedParam(float(p.value) * scale_of(k), 0.0, units[k], why)


def _floor_points(frame, kernel: StageResult, bw_gbs: float, notes: list[str]) -> dict:
    """The decodes as arrays for the lumped floor fit (:func:`decode_points`), with ``base``
    (stage 1's constants), ``cd4`` and ``lin_s`` (the model's step time without the floor, s;
    it seeds the fit)."""
    pts = decode_points(frame, notes)
    base = {k: p.value for k, p in kernel.params.items()}
    base.update(mem_bw_gbs=bw_gbs, t_step_s=0.0, t_layer_s=0.0)
    pts.update(base=base, cd4=compute_dtype_4bit(frame))
    pts["lin_s"] = predict_steps(pts, base, {}, cd4=pts["cd4"])
    if len(np.unique(pts["layers"])) < 2:
        raise FitError("decodes were measured at one depth only: per-step and per-layer floors "
                       "cannot be separated (the calibration plan decodes several depths)")
    return pts


def _floor_parameters(pts: dict, notes: list[str]):
    """The lumped floor fit's lmfit Parameters (us, bounded at 0) and their units."""
    fams, batch, layers = pts["family"], pts["batch"], pts["layers"]
    ps = _lmfit().Parameters()
    resid0 = np.maximum(pts["t_obs"] - pts["lin_s"], 1e-6)
    ps.add("t_step_s", value=float(np.min(resid0)) / 2 / 1e-6, min=0.0)
    many_v = len(np.unique(pts["vocab"])) >= 2
    ps.add("t_vocab_s", value=1.0 if many_v else 0.0, min=0.0, vary=many_v)
    if not many_v:
        notes.append("t_vocab_s: decodes at one vocabulary size only; held at 0")
    units = {"t_step_s": "s", "t_vocab_s": "s/(sequence*token)"}
    for f in sorted(set(fams)):
        m = fams == f
        guess = float(np.median(resid0[m] / layers[m])) / 2 / 1e-6
        for side, sel in (("b1", batch <= 1), ("bn", batch > 1)):
            if np.any(m & sel):
                ps.add(f"t_layer_{f}_{side}_s", value=guess, min=0.0)
                units[f"t_layer_{f}_{side}_s"] = "s"
        many_b = len(np.unique(batch[m & (batch > 1)])) >= 2
        ps.add(f"t_layertok_{f}_s", value=1.0 if many_b else 0.0, min=0.0, vary=many_b)
        units[f"t_layertok_{f}_s"] = "s/sequence"
    return ps, units


def predict_floor(pts: dict, v: dict) -> np.ndarray:
    """Step times in the lumped form from the model itself (:func:`predict_steps`): stage 1's
    constants ``pts["base"]`` with the floor constants ``v`` (``t_step_s``, ``t_layer_*``,
    ``t_layertok_*``, ``t_vocab_s``), s."""
    return predict_steps(pts, pts["base"], v, cd4=pts["cd4"])


def fit_step_floor(frame, kernel: StageResult, bw_gbs: float, notes: list[str]) -> StageResult:
    """Stage 2 from short decodes: ``t_step_s`` and ``t_vocab_s`` (shared) and, per precision
    family, ``t_layer_<fam>_b1_s`` / ``t_layer_<fam>_bn_s`` (per layer per step, batch 1 and
    batch >= 2) and ``t_layertok_<fam>_s`` (per layer per sequence)."""
    pts = _floor_points(frame, kernel, bw_gbs, notes)
    t_obs = pts["t_obs"]
    ps, units = _floor_parameters(pts, notes)
    res = _minimize(ps, lambda v: (predict_floor(pts, si_values(v)) - t_obs) / t_obs,
                    "step-floor fit", len(t_obs), notes)
    st = _stage("step_floor", res, units, t_obs, predict_floor(pts, si_values(res.params)), notes)
    _add_held(st, res, units)
    for side in paths.SIDES:
        ref = f"t_layer_{paths.NATIVE}_{side}_s"
        if ref in st.params:
            p = st.params[ref]
            st.params["t_layer_s"] = FittedParam(p.value, p.stderr, "s", f"tied: generic floor = {ref}")
            break
    return st


# ---- stage 2 (inventory mode): host constants priced per traced operation --------------------
HOST_UNITS = {"h_op_s": "s/op", "h_step_s": "s", "t_layertok_s": "s/(layer*sequence)",
              "t_vocab_s": "s/(sequence*token)"}


def decode_points(frame, notes: list[str] | None = None) -> dict:
    """The decode rows as arrays: ``counts``, ``family``, ``batch``, ``context``, ``t_obs`` (s),
    ``layers``, ``vocab``."""
    rows = _decode_rows(frame, notes)
    if not rows:
        raise FitError("no decode runs in the raw data: the host constants cannot be fitted")
    out = {"counts": [c for _, c, _ in rows], "family": np.array([f for _, _, f in rows]),
           "batch": np.array([float(r["batch"]) for r, _, _ in rows]),
           "context": np.array([float(r["prompt_len"]) + float(r["new_tokens"]) / 2.0
                                for r, _, _ in rows]),
           "t_obs": np.array([float(r["t_step_s"]) for r, _, _ in rows]),
           "layers": np.array([float(c.n_layers) for _, c, _ in rows]),
           "vocab": np.array([float(c.vocab_size) for _, c, _ in rows])}
    return out


def host_call_names(pts, sixteen: bool = False) -> list[str]:
    """``h_call_<path>_s`` for every quantized path side the decodes ran, and with ``sixteen``
    the 16-bit ones too (otherwise 0 by definition: their linears are nothing but traced aten
    ops and, on a CPU, the measured ``t_call``)."""
    names = []
    for f, b in zip(pts["family"], pts["batch"], strict=True):
        n = f"h_call_{f}_{paths.side(b)}_s"
        if (sixteen or f not in paths.SIXTEEN_BIT) and n not in names:
            names.append(n)
    return sorted(names)


def predict_steps(pts, base: dict, v: dict, cd4=None, overlap: bool = False) -> np.ndarray:
    """Step time of every decode point from the model itself (:func:`physical.step_time_s`)."""
    params = {**base, **v}
    return np.array([float(physical.step_time_s(c, f, b, x, params, paths.NATIVE, cd4, overlap))
                     for c, f, b, x in zip(pts["counts"], pts["family"], pts["batch"],
                                           pts["context"], strict=True)])


def _check_host_points(pts) -> None:
    """FitError unless the decodes can separate the host constants (two depths, 16-bit runs)."""
    if len(np.unique(pts["layers"])) < 2:
        raise FitError("decodes were measured at one depth only: per-step and per-layer host "
                       "costs cannot be separated (the calibration plan decodes several depths)")
    if not any(f in paths.SIXTEEN_BIT for f in pts["family"]):
        raise FitError("no 16-bit decodes: the host time per traced operation cannot be told "
                       "from the quantized paths' per-call cost")


def _host_parameters(pts, notes: list[str], name: str, fit_layertok: bool, fit_vocab: bool,
                     h_op_prior: tuple[float, str] | None, sixteen_calls: bool):
    """The host fit's lmfit Parameters (us, bounded at 0) and their units."""
    ps = _lmfit().Parameters()
    if h_op_prior is not None:
        ps.add("h_op_s", value=h_op_prior[0] / scale_of("h_op_s"), min=0.0, vary=False)
        notes.append(f"{name}: h_op_s = {h_op_prior[0]:.4g} s held from {h_op_prior[1]}")
    else:
        ps.add("h_op_s", value=5.0, min=0.0)  # us
    ps.add("h_step_s", value=100.0, min=0.0)
    ps.add("t_vocab_s", value=1.0 if fit_vocab else 0.0, min=0.0, vary=fit_vocab)
    ps.add("t_layertok_s", value=1.0 if fit_layertok else 0.0, min=0.0, vary=fit_layertok)
    if not fit_vocab:
        notes.append(f"{name}: t_vocab_s: decodes at one vocabulary size only; held at 0")
    if not fit_layertok:
        notes.append(f"{name}: t_layertok_s: fewer than two batches above 1; held at 0")
    units = dict(HOST_UNITS)
    for n in host_call_names(pts, sixteen=sixteen_calls or h_op_prior is not None):
        ps.add(n, value=10.0, min=0.0)
        units[n] = "s/call"
    return ps, units


def fit_host_constants(pts, base: dict, notes: list[str], *, name: str = "host_inventory",
                       cd4=None, fit_layertok: bool | None = None, fit_vocab: bool | None = None,
                       overlap: bool = False, h_op_prior: tuple[float, str] | None = None,
                       sixteen_calls: bool = False) -> StageResult:
    """Fit ``h_op_s``, ``h_step_s``, ``h_call_<path>_s`` (quantized paths), and where the decodes
    resolve them ``t_layertok_s`` and ``t_vocab_s``, to measured decode step times through the
    model's own timelines (``base``: every other constant, incl. :data:`physical.DISPATCH_FLAG`
    when ``t_call`` came from a microbenchmark on the same thread).

    Identification: depths separate per-layer from per-step cost; ``h_op_s`` is pinned by the
    16-bit paths (their host time per layer is nothing but traced ops), ``h_call`` per quantized
    path is what its layers cost beyond that. ``h_op_prior`` (value, basis) fixes ``h_op_s``
    (from a host calibration on this machine, ``qtsim calibrate --host``); with it, or with
    ``sixteen_calls`` (decodes of two or more model classes, whose op counts per layer differ),
    the 16-bit paths get their own ``h_call`` too: the in-model per-call cost beyond the
    microbenchmark's ``t_call``.
    """
    _check_host_points(pts)
    t_obs = pts["t_obs"]
    if fit_vocab is None:
        fit_vocab = len(np.unique(pts["vocab"])) >= 2
    if fit_layertok is None:
        fit_layertok = len(np.unique(pts["batch"][pts["batch"] > 1])) >= 2
    ps, units = _host_parameters(pts, notes, name, fit_layertok, fit_vocab, h_op_prior,
                                 sixteen_calls)

    def model(v):
        return predict_steps(pts, base, v, cd4, overlap)

    res = _minimize(ps, lambda v: (model(si_values(v)) - t_obs) / t_obs, f"{name} fit",
                    len(t_obs), notes, max_nfev_per_constant=MAX_NFEV)
    st = _stage(name, res, units, t_obs, model(si_values(res.params)), notes)
    prior = {"h_op_s": f"fixed: from {h_op_prior[1]}"} if h_op_prior is not None else None
    _add_held(st, res, units, prior)
    return st


def fit_step_inventory(frame, kernel: StageResult, bw_gbs: float, notes: list[str],
                       overlap: bool = False,
                       h_op_prior: tuple[float, str] | None = None) -> StageResult:
    """Stage 2 in inventory mode: the host constants from the decodes, with ``t_call`` from
    stage 1 holding the linear's own dispatch (:data:`physical.DISPATCH_FLAG`)."""
    base = {k: p.value for k, p in kernel.params.items()}
    base.update(mem_bw_gbs=bw_gbs, h_launch_s=0.0)
    base[physical.DISPATCH_FLAG] = 1.0
    pts = decode_points(frame, notes)
    notes.append("host constants in inventory mode: h_op_s prices each block's traced non-linear "
                 "aten ops (t_call from the linear microbenchmarks already holds the linear's own "
                 "dispatch: [hardware] t_call_includes_dispatch); h_launch_s = 0 (no CUDA launches "
                 "on a CPU)")
    classes = {int(c.model_class) for c in pts["counts"]}
    kw = dict(name="host_inventory", cd4=compute_dtype_4bit(frame), overlap=overlap,
              h_op_prior=h_op_prior)
    try:
        st = fit_host_constants(pts, base, notes, sixteen_calls=len(classes) >= 2, **kw)
    except FitError as exc:
        if len(classes) < 2 or h_op_prior is not None:
            raise
        # noisy decodes may not separate h_op_s from the 16-bit paths' per-call cost: hold
        # those at 0 (their linears are then nothing but traced ops and the measured t_call)
        notes.append(f"host fit with the 16-bit paths' per-call cost did not converge ({exc}); "
                     "refitted with it held at 0")
        st = fit_host_constants(pts, base, notes, sixteen_calls=False, **kw)
    st.params["h_launch_s"] = FittedParam(0.0, 0.0, "s/kernel",
                                          "fixed: a CPU launches no CUDA kernels")
    return st


def fit_prefill(frame, values: dict, notes: list[str], overlap: bool = False) -> StageResult:
    """Stage 2b: ``prefill_tok_scale_<family>`` (per kernel family: the prefill's per-token device
    time relative to a decode step's at the same rows) and ``h_prefill_s`` (generate's one-off
    host work) from the decodes' first-token times (``t_prefill_s``), through
    :func:`physical.prefill_timelines` itself."""
    rows = _decode_rows(frame, notes)
    if "t_prefill_s" not in frame or not rows:
        notes.append("prefill: no first-token times recorded; prefill_tok_scale held at 1")
        return StageResult("prefill", {"prefill_tok_scale": FittedParam(1.0, 0.0, "1", "fixed")},
                           0, math.nan, math.nan, math.nan, math.nan, math.nan)
    cd4 = compute_dtype_4bit(frame)
    obs = np.array([float(r["t_prefill_s"]) for r, _, _ in rows])

    def model(v):
        params = {**values, **v}
        return np.array([float(physical.prefill_timelines(
            c, f, float(r["batch"]), float(r["prompt_len"]), params, paths.NATIVE, cd4,
            overlap)["step_s"]) for r, c, f in rows])

    lmfit = _lmfit()
    ps = lmfit.Parameters()
    units = {"h_prefill_s": "s"}
    for fam in sorted({f for _, _, f in rows}):
        ps.add(f"prefill_tok_scale_{fam}", value=1.0, min=0.05, max=5.0)
        units[f"prefill_tok_scale_{fam}"] = "1"
    ps.add("h_prefill_s", value=100.0, min=0.0)
    res = _minimize(ps, lambda v: (model(si_values(v)) - obs) / obs, "prefill fit", len(obs),
                    notes)
    return _stage("prefill", res, units, obs, model(si_values(res.params)), notes)


# ---- stage 3: energy ---------------------------------------------------------------------------
ENERGY_PARAMS = ("p_awake_w", "e_byte_j", "e_flop_j")
ENERGY_UNITS = {"p_awake_w": "W", "e_byte_j": "J/byte", "e_flop_j": "J/FLOP"}


def real_meter(frame) -> str | None:
    for m in REAL_METERS:
        if f"e_call_j_{m}" in frame or f"e_step_j_{m}" in frame:
            return m
    return None


def _hli_energy(tdp_w: float, hli_assumption: str, notes: list[str]):
    notes.append(f"energy: no real meter on this device; power model = HLI ({hli_assumption})")
    params = {
        "p_awake_w": FittedParam(tdp_w, 0.0, "W", f"assumed: HLI, {hli_assumption}"),
        "e_byte_j": FittedParam(0.0, 0.0, "J/byte", "assumed: HLI has no per-byte term"),
        "e_flop_j": FittedParam(0.0, 0.0, "J/FLOP", "assumed: HLI has no per-FLOP term"),
    }
    return StageResult("energy", params, 0, math.nan, math.nan, math.nan, math.nan, math.nan), "hli"


def _linear_energy_points(frame, meter: str | None) -> dict:
    """The linear probes a real ``meter`` metered: time, weights, bytes/weight, batch, energy."""
    col = f"e_call_j_{meter}"
    if meter is None or col not in frame:
        return {"t": np.array([]), "e_obs": np.array([])}
    lin = frame[(frame["kind"] == "linear") & frame[col].notna()]
    return {"t": lin["t_call_s"].to_numpy(float),
            "w": (lin["in_features"] * lin["out_features"]).to_numpy(float),
            "bpw": np.array([_bytes_per_weight(p, i) for p, i in
                             zip(lin["path"], lin["in_features"], strict=True)]),
            "batch": lin["batch"].to_numpy(float), "e_obs": lin[col].to_numpy(float)}


def _predict_linear_energy(pts: dict, v: dict) -> np.ndarray:
    """The model's own energy of every metered linear call (:func:`physical.linear_call_energy_j`)."""
    return physical.linear_call_energy_j(pts["t"], pts["w"], pts["bpw"], pts["batch"], v)


def _energy_check(pts: dict, measured: dict, notes: list[str]) -> StageResult:
    """All three constants measured in power-state windows: nothing is fitted; the metered
    linear probes, predicted from them, score them (out of sample)."""
    params = {k: measured[k] for k in ENERGY_PARAMS}
    if not len(pts["e_obs"]):
        return StageResult("energy", params, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
    e_obs = pts["e_obs"]
    pred = _predict_linear_energy(pts, {k: p.value for k, p in params.items()})
    ape = np.abs(pred / e_obs - 1.0)
    notes.append(f"energy: p_awake_w, e_byte_j, e_flop_j measured in power-state windows; the "
                 f"{len(e_obs)} metered linear probes, predicted from them, are off by "
                 f"{100 * ape.mean():.1f}% (MAPE; a check, nothing fitted to them)")
    return StageResult("energy_check", params, len(e_obs), math.nan, math.nan, math.nan,
                       float(ape.mean()), float(ape.max()),
                       residuals=[float(x) for x in pred / e_obs - 1.0])


def _energy_fit(pts: dict, measured: dict, notes: list[str]) -> StageResult:
    """The constants the windows did not determine, fitted to the metered linear probes with
    the measured ones held."""
    e_obs = pts["e_obs"]
    ps = _lmfit().Parameters()
    start = {"p_awake_w": float(np.median(e_obs / pts["t"])), "e_byte_j": 10.0, "e_flop_j": 0.1}
    for k in ENERGY_PARAMS:  # pJ/byte, pJ/FLOP while fitted
        held = measured.get(k)
        ps.add(k, value=(held.value / scale_of(k)) if held else start[k], min=0,
               vary=held is None)
    if measured:
        notes.append(f"energy: {', '.join(measured)} held from the power-state windows; the rest "
                     "fitted to the metered linear probes")
    res = _minimize(ps, lambda v: (_predict_linear_energy(pts, si_values(v)) - e_obs) / e_obs,
                    "energy fit", len(e_obs), notes)
    st = _stage("energy", res, ENERGY_UNITS, e_obs,
                _predict_linear_energy(pts, si_values(res.params)), notes)
    st.params.update(measured)
    return st


def fit_energy(frame, values: dict, tdp_w: float, hli_assumption: str, notes: list[str]):
    """Stage 3: the power model. Constants measured in power-state windows
    (:mod:`qtsim.calibration.fit.power_fit`: ``p_idle_w``, ``p_awake_w``, ``e_byte_j``,
    ``e_flop_j``, ``p_cap_w``) are taken as measured; whatever they leave open of ``p_awake_w``,
    ``e_byte_j``, ``e_flop_j`` is fitted to the linear probes' metered energy. With no real
    meter at all (the HLI estimate only) the power model is that labelled assumption. Returns
    the stage and the energy method (the real meter behind the constants, or ``hli``)."""
    measured = {k: FittedParam(c.value, c.stderr, c.unit, c.basis, "calibrated")
                for k, c in power_constants(frame, notes).items()}
    core = {k: p for k, p in measured.items() if k in ENERGY_PARAMS}
    probe_meter = real_meter(frame)
    pts = _linear_energy_points(frame, probe_meter)
    if len(core) == len(ENERGY_PARAMS):
        st, method = _energy_check(pts, core, notes), state_powers(frame, [])["awake"].meter
    elif len(pts["e_obs"]):
        st, method = _energy_fit(pts, core, notes), probe_meter
    else:
        st, method = _hli_energy(tdp_w, hli_assumption, notes)
        if core:
            notes.append(f"energy: {', '.join(core)} measured in power-state windows, the rest "
                         "is the HLI assumption (no metered linear probes to fit it to)")
    st.params.update(measured)
    return st, method


# ---- all stages --------------------------------------------------------------------------------
STEP_MODES = ("inventory", "lumped")


def fit_frame(frame, tdp_w: float, hli_assumption: str = "", mode: str = "inventory",
              h_op_prior: tuple[float, str] | None = None) -> FitResult:
    """Run the three stages on a raw summary frame (``RawStore.summary_frame()``).

    ``mode``: stage 2 in ``inventory`` mode (host constants per traced operation,
    :func:`fit_step_inventory`; the default) or the older ``lumped`` per-family floors
    (:func:`fit_step_floor`, kept for comparison)."""
    if mode not in STEP_MODES:
        raise FitError(f"unknown stage-2 mode {mode!r} (one of {', '.join(STEP_MODES)})")
    if frame is None or len(frame) == 0:
        raise FitError("the raw data has no usable points")
    notes = [f"dropped: {d}" for d in frame.attrs.get("dropped", [])]
    notes += [f"skipped: {s}" for s in frame.attrs.get("skipped", [])]
    kernel = fit_kernel_paths(frame, notes)
    notes.append(f"bandwidth reference: {kernel.reference} (the fastest 16-bit batch-1 path)")
    inv = kernel.params.pop("inv_bw_s_per_byte")
    bw_gbs = 1.0 / inv.value / 1e9
    kernel.params["mem_bw_gbs"] = FittedParam(bw_gbs, bw_gbs * inv.stderr / inv.value, "GB/s",
                                              "effective bandwidth seen by the reference linear path")
    if mode == "inventory":
        try:
            floor = fit_step_inventory(frame, kernel, bw_gbs, notes, h_op_prior=h_op_prior)
        except FitError as exc:  # keep the calibration: the lumped form needs less of the data
            notes.append(f"inventory-mode host fit failed ({exc}); stage 2 falls back to the "
                         "lumped per-family floors (`qtsim fit --lumped`)")
            mode = "lumped"
    if mode == "lumped":
        floor = fit_step_floor(frame, kernel, bw_gbs, notes)
    values = {k: p.value for k, p in {**kernel.params, **floor.params}.items()}
    if mode == "inventory":
        values[physical.DISPATCH_FLAG] = 1.0
    prefill = fit_prefill(frame, values, notes)
    energy, method = fit_energy(frame, values, tdp_w, hli_assumption, notes)
    return FitResult([kernel, floor, prefill, energy], method, notes, mode)


def profile_from_fit(fit: FitResult, frame, hardware: dict, raw_path: str, device: str,
                     driver: str = "", versions: dict | None = None) -> HardwareProfile:
    """A calibrated profile: fitted constants (stderr) plus derived paper constants."""
    physical_params = {}
    today = date.today().isoformat()
    for k, p in fit.params().items():
        if p.source:
            src = p.source
        elif p.note.startswith("assumed"):
            src = "assumed"
        elif p.note and not p.note.startswith("fitted"):
            src = "fixed"  # held by definition or tied to another constant
        else:
            src = "calibrated"
        basis = f"fitted {today} on {device} from {raw_path}" + (f"; {p.note}" if p.note else "")
        physical_params[k] = Param(float(f"{p.value:.6g}"), float(f"{p.stderr:.4g}"), p.unit, src, basis)
    order = [k for s in fit.stages for k in s.params if k in s.correlation]
    corr = np.eye(len(order))
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            for s in fit.stages:
                if a in s.correlation and b in s.correlation[a]:
                    corr[i, j] = s.correlation[a][b]
    fit_doc = {"energy_method": fit.energy_method, "notes": fit.notes, "param_order": order,
               "correlation": [[float(f"{x:.4f}") for x in row] for row in corr]}
    for s in fit.stages:
        if s.n_points:
            fit_doc[s.name] = {k: (float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else str(v))
                               for k, v in s.summary().items()}
    prov = {"source": "calibrated", "date": today, "device": device, "driver": driver or "",
            "qtsim_version": __version__, "n_measurements": int(len(frame)),
            "raw_data": raw_path, "raw_sha256": file_sha256(raw_path),
            "versions": {k: str(v) for k, v in (versions or {}).items() if v}}
    return HardwareProfile(hardware, prov, physical_params, {}, fit_doc)
