"""Fit the device, host and power constants jointly to public GPU measurements, and score them.

The rows (:mod:`qtsim.calibration.fit.public_rows`): the bitsandbytes maintainers' decode latencies
(H100 SXM server, RTX 4090 desktop) and NVML-metered HF ``generate`` runs (RTX 4090, RTX 4090D,
A100, T4: throughput, average board power, J/token). Every prediction is the model's own
:func:`qtsim.model.physical.query` (timelines, power states, power capping), so a change to the
model changes this fit. What is fitted:

- **device** (shared by every GPU, scaled by each one's datasheet): ``eta_bw`` (effective /
  datasheet bandwidth), ``t_kernel_s`` (device time per kernel), and per kernel path the device
  work per weight beyond streaming it, in bytes at the effective bandwidth, each bounded below by
  the bytes the path must move: ``x_nf4_b1`` (bitsandbytes' batch-1 4-bit GEMV, >= 0 with a
  non-zero inefficiency prior), ``x_deq`` (dequantise-then-GEMM: a 16-bit copy written and read
  back, >= 4 bytes per weight), ``x_int8``;
- **host** (the population centre of HF-eager hosts): ``h_op_s`` per traced aten operation,
  ``h_step_s`` per step, ``h_call_<path>_s`` per bitsandbytes linear call beyond its traced ops;
  each campaign's host runs ``exp(u_c)`` times slower (one shared factor for all its work, a
  random effect with spread ``host_sd_log`` estimated from the campaigns);
- **power** (a form per GPU class from datasheet facts, :mod:`qtsim.model.power`): awake power
  ``awake_base_w + awake_per_tdp x TDP`` (x ``awake_desktop`` on GeForce boards), energy per
  byte the share ``byte_share`` of the TDP that streaming at the datasheet bandwidth dissipates,
  per FLOP a share of the TDP headroom (``flop_share``, a prior: batch-1 rows cannot see it); each campaign's meter reads
  ``exp(v_c)`` times the model (random effect, spread ``meter_sd_log``).

Weak priors (stated in :data:`PARAMS`) keep a constant that a fold's rows cannot see at its
physical value. :func:`leave_one_gpu_out` and :func:`leave_one_group_out` fit on the other
rows and score the held-out ones; nothing held out is looked at while fitting.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd

from qtsim.calibration.fit import public_rows
from qtsim.errors import FitError
from qtsim.model import physical, power, stack
from qtsim.model.architecture import load_architecture
from qtsim.model.paths import family_settings
from qtsim.model.workload import BnbSettings, Workload

QUANT_PATHS = ("nf4_b1", "nf4_bn", "nf4dq_b1", "nf4dq_bn", "int8", "int8_t0")
#: CUDA launch cost on the host per kernel (cudaLaunchKernel through torch; a stated prior: it
#: is nearly collinear with h_op_s in HF eager, where almost every operation launches a kernel)
H_LAUNCH_S = 2.5e-6
#: the fitted stacks (bitsandbytes 0.43-0.45) have no fused 4-bit GEMM: batch >= 2 dequantises
FUSED_4BIT_MAX_BATCH = stack.fused4bit_max_batch("0.45")
DEQ_MIN_BYTES = physical.DEQ_BYTES_PER_WEIGHT


@dataclass(frozen=True)
class Spec:
    """A fitted constant: initial value, bounds, scale to SI, and an optional normal prior
    (mean, sd in SI) with the reason for it."""

    name: str
    init: float
    lo: float
    hi: float
    scale: float = 1.0
    prior: tuple | None = None
    basis: str = ""


PARAMS = (
    Spec("eta_bw", 0.8, 0.3, 1.0, prior=(0.8, 0.1),
         basis="NVIDIA aiconfigurator's mem_bw_empirical_scaling_factor 0.8"),
    Spec("t_kernel_s", 3.0, 0.5, 30.0, 1e-6),
    Spec("x_nf4_b1", 0.15, 0.0, 4.0, prior=(0.16, 0.1),
         basis="Marlin README: bitsandbytes NF4 reaches 3.0x of the ideal 3.87x at batch 1, i.e. "
               "(3.87/3.0 - 1) x 0.56 bytes per weight of extra device work"),
    Spec("x_deq", 5.0, DEQ_MIN_BYTES, 40.0),
    Spec("x_int8", 0.5, 0.0, 20.0),
    Spec("h_op_s", 8.0, 0.5, 60.0, 1e-6),
    Spec("h_step_s", 500.0, 0.0, 5e3, 1e-6),
    *(Spec(f"h_call_{p}_s", 30.0, 0.0, 1000.0, 1e-6) for p in QUANT_PATHS),
    Spec("int8_legacy", 1.5, 1.0, 6.0, prior=(1.5, 1.0),
         basis="bitsandbytes < 0.45 LLM.int8() converted layouts on every call (0.45.0 rewrote it)"),
    Spec("awake_base_w", 15.0, 0.0, 200.0, prior=(15.0, 15.0),
         basis="T4 idles near 10 W and sits near 30 W at P0 clocks"),
    Spec("awake_per_tdp", 0.2, 0.0, 1.0, prior=(0.2, 0.1),
         basis="Splitwise-sim H100: 75 W idle of 700 W; awake above idle with clocks up"),
    Spec("awake_desktop", 0.7, 0.2, 1.5, prior=(0.7, 0.3),
         basis="GeForce drivers drop clocks between kernels more eagerly than datacentre boards"),
    Spec("byte_share", 0.7, 0.1, 2.0, prior=(0.7, 0.3),
         basis="ML.ENERGY H100 (vLLM, Llama-3.1-8B BF16, batch 8): 486 W at about 2.1 TB/s, "
               "i.e. about 0.7 x TDP of dynamic power at the datasheet bandwidth"),
)
#: the per-FLOP share is not seen by batch-1 rows: a stated prior, held
FLOP_SHARE = (0.6, 0.3)
#: weight of one prior sigma against one residual (a relative error of about 1)
PRIOR_WEIGHT = 0.3
#: starting spreads of the campaign random effects (log scale), re-estimated by :func:`fit`
HOST_SD0, METER_SD0 = 0.5, 0.15


def gpu_specs() -> dict[str, dict]:
    text = (resources.files("qtsim.data.reference") / "gpu_specs.csv").read_text()
    return {r["gpu"]: r for r in csv.DictReader(text.splitlines())}


def device_params(spec: dict, v: dict) -> dict:
    """Device constants of a GPU (or arrays of GPUs) from its datasheet facts (``mem_bw_gbs``,
    ``fp16_dense_tflops``, ``int8_dense_tops``) and the shared fitted factors.

    Matmuls at half the datasheet dense throughput (16-bit, or int8 for LLM.int8()); each
    path's device work per weight beyond streaming it, ``x_<path>`` bytes at the effective
    bandwidth; per-call device costs are the path's kernels x ``t_kernel_s``.
    """
    bw = v["eta_bw"] * np.asarray(spec["mem_bw_gbs"], float)
    t16 = 2.0 / (0.5 * np.asarray(spec["fp16_dense_tflops"], float) * 1e12)
    t8 = 2.0 / (0.5 * np.asarray(spec["int8_dense_tops"], float) * 1e12)
    per_byte = 1.0 / (bw * 1e9)
    p = {"mem_bw_gbs": bw, "t_kernel_s": v["t_kernel_s"]}
    for path, tok, x in (("fp16", t16, 0.0), ("bf16", t16, 0.0), ("int8", t8, v["x_int8"]),
                         ("int8_t0", t8, v["x_int8"]), ("nf4_b1", t16, v["x_nf4_b1"]),
                         ("nf4_bn", t16, v["x_deq"])):
        p.update({f"t_call_{path}_s": 0.0, f"t_weight_{path}_s": x * per_byte,
                  f"t_tokweight_{path}_s": tok})
    return p


def power_params(facts: dict, v: dict) -> dict:
    """Power states of a GPU (or arrays of GPUs) from its datasheet facts (``spec`` with
    ``tdp_w``, ``mem_bw_gbs``, ``fp16_dense_tflops``; ``segment``) and the fitted class
    coefficients (:mod:`qtsim.model.power`)."""
    spec = facts["spec"]
    tdp = np.asarray(spec["tdp_w"], float)
    awake = power.awake_power_w(tdp, facts["segment"], v["awake_base_w"], v["awake_per_tdp"],
                                v["awake_desktop"])
    return {"p_awake_w": awake, "p_cap_w": tdp,
            "e_byte_j": power.byte_energy_j(tdp, spec["mem_bw_gbs"], v["byte_share"]),
            "e_flop_j": power.flop_energy_j(tdp, awake, spec["fp16_dense_tflops"],
                                            v.get("flop_share", FLOP_SHARE[0]))}


def host_params(v: dict, slowdown=1.0, legacy_int8=False) -> dict:
    """Host constants of the population-centre host, or of one ``slowdown`` times slower;
    ``legacy_int8``: a bitsandbytes < 0.45 stack, whose LLM.int8() calls cost ``int8_legacy``
    times more host time (all may be arrays over rows)."""
    out = {"h_op_s": v["h_op_s"] * slowdown, "h_launch_s": H_LAUNCH_S * slowdown,
           "h_step_s": v["h_step_s"] * slowdown, "h_fused4bit_max_batch": FUSED_4BIT_MAX_BATCH}
    legacy = np.where(legacy_int8, v.get("int8_legacy", 1.0), 1.0)
    out.update({f"h_call_{p}_s": v[f"h_call_{p}_s"] * slowdown
                * (legacy if p.startswith("int8") else 1.0) for p in QUANT_PATHS})
    return out


_COUNTS = {}


def _counts(model: str):
    if model not in _COUNTS:
        _COUNTS[model] = load_architecture(model).counts()
    return _COUNTS[model]


PRED_COLUMNS = ("step_s", "tok_s", "power_w", "j_per_tok", "busy_frac", "busy_w", "awake_w",
                "cap_stretch")


class Prepared:
    """Rows made ready for repeated prediction: grouped by kernel family and token counts, with
    every row's datasheet facts, model counts and campaign as arrays, so that :meth:`predict`
    is one :func:`qtsim.model.physical.query` per group (the fit calls it thousands of times)."""

    def __init__(self, rows: pd.DataFrame):
        specs = gpu_specs()
        self.index = rows.index
        self.groups = []
        for (fam, k, prompt), g in rows.groupby(["family", "new_tokens", "prompt_tokens"]):
            counts = [_counts(m) for m in g["model"]]
            cs = type(counts[0])(**{f: np.array([getattr(c, f) for c in counts], float)
                                    for f in counts[0].__dataclass_fields__})
            sp = [specs[x] for x in g["gpu"]]
            precision, dq, thr = family_settings(fam)
            self.groups.append({
                "pos": self.index.get_indexer(g.index), "family": fam, "k": float(k),
                "counts": cs, "campaign": g["campaign"].to_numpy(),
                "spec": {c: np.array([float(x[c]) for x in sp]) for c in
                         ("mem_bw_gbs", "fp16_dense_tflops", "int8_dense_tops", "tdp_w")},
                "segment": np.array([x.get("segment", "datacenter") for x in sp]),
                "memory_type": np.array([x.get("memory_type", "hbm") for x in sp]),
                "legacy": g["bnb"].map(public_rows.legacy_int8).to_numpy(bool),
                "decode": (g["window"] == "decode").to_numpy(),
                "batch": g["batch"].to_numpy(float),
                "workload": Workload(precision, batch=g["batch"].to_numpy(float),
                                     new_tokens=int(k), prompt_tokens=int(prompt),
                                     bnb=BnbSettings(double_quant=dq, int8_threshold=thr))})

    def predict(self, v: dict, effects: dict | None = None) -> pd.DataFrame:
        effects = effects or {}
        out = np.full((len(self.index), len(PRED_COLUMNS)), np.nan)
        for g in self.groups:
            eff = np.array([effects.get(c, (0.0, 0.0)) for c in g["campaign"]], float)
            params = {**device_params(g["spec"], v), **power_params(g, v),
                      **host_params(v, np.exp(eff[:, 0]), g["legacy"])}
            q = physical.query(g["counts"], g["workload"], params, g["spec"]["tdp_w"],
                               native="fp16", compute_dtype_4bit="fp16", overlap=True)
            b, k, dec, meter = g["batch"], g["k"], g["decode"], np.exp(eff[:, 1])
            cols = (q["step_s"], np.where(dec, b / q["step_s"], q["tok_per_s"]),
                    meter * np.where(dec, q["step_j"] / q["step_s"], q["avg_power_w"]),
                    meter * np.where(dec, q["step_j"] / b, q["j_per_query"] / k),
                    q["busy_frac"], q["busy_w"], q["awake_w"], q["cap_stretch"])
            out[g["pos"]] = np.stack([np.broadcast_to(c, b.shape) for c in cols], axis=1)
        return pd.DataFrame(out, index=self.index, columns=PRED_COLUMNS)


def predict(rows: pd.DataFrame, v: dict, effects: dict | None = None) -> pd.DataFrame:
    """Per-row predictions under constants ``v`` (SI): ``step_s`` (decode step), ``tok_s``,
    ``power_w`` and ``j_per_tok`` over the row's window (``decode``: the decode phase;
    ``generate``: prefill and every new token), plus the power-state mix of the decode step.

    ``effects`` maps a campaign to its (host log slow-down u, meter log factor v); campaigns
    not in it (held out, or new) get 0: the population-centre host and an unbiased meter.
    """
    return Prepared(rows).predict(v, effects)


#: (observed column, predicted column): what each row is scored on. J/token only where the
#: row lacks power or throughput (else it is their ratio and would count twice)
OBSERVABLES = (("obs_step_s", "step_s"), ("obs_tok_s", "tok_s"), ("obs_power_w", "power_w"),
               ("obs_j_per_tok", "j_per_tok"))


def observations(rows: pd.DataFrame) -> list[tuple[np.ndarray, str, np.ndarray]]:
    """(row mask, predicted column, observed values) of every observation the fit uses."""
    out = []
    has_both = (rows["obs_power_w"].notna() & rows["obs_tok_s"].notna()).to_numpy()
    for obs, pred in OBSERVABLES:
        m = rows[obs].notna().to_numpy().copy()
        if obs == "obs_step_s":  # the metered rows' step is their throughput's inverse
            m &= (rows["table"] == "latency").to_numpy()
        if obs == "obs_j_per_tok":
            m &= ~has_both
        out.append((m, pred, rows[obs].to_numpy(float)))
    return out


@dataclass
class PublicFit:
    """The joint fit: constants (SI) with stderr, campaign effects, spreads, statistics."""

    values: dict
    stderr: dict
    effects: dict  # campaign -> (u: host log slow-down, v: meter log factor)
    host_sd_log: float
    meter_sd_log: float
    aic: float
    bic: float
    covar: np.ndarray | None
    var_names: list
    rows: pd.DataFrame
    pred: pd.DataFrame = field(repr=False, default=None)
    n_obs: int = 0


def _free(rows: pd.DataFrame) -> list[Spec]:
    """The constants the rows can see: host per-call constants of paths no row runs are held."""
    fams = set(rows["family"])
    used = {f"h_call_{p}_s" for p in QUANT_PATHS if p.split("_b")[0].split("_bn")[0] in fams
            or p.rsplit("_", 1)[0] in fams or (p.startswith("nf4") and "fp4" in fams)}
    if not (rows["bnb"].map(public_rows.legacy_int8) & rows["family"].str.startswith("int8")).any():
        used.discard("int8_legacy")
    else:
        used.add("int8_legacy")
    return [s for s in PARAMS if not s.name.startswith(("h_call_", "int8_legacy"))
            or s.name in used]


def fit(rows: pd.DataFrame, host_sd_log: float = HOST_SD0, meter_sd_log: float = METER_SD0,
        rounds: int = 3) -> PublicFit:
    """Least squares in log(predicted / observed) over every observation (lmfit), with the
    priors of :data:`PARAMS` and the campaign random effects as penalties.

    The spreads of the campaign effects are re-estimated from the fitted effects ``rounds``
    times (method of moments, floored at 0.05), so the fit finds how much hosts and meters
    differ between campaigns rather than being told.
    """
    import lmfit

    rows = rows[rows["use"]].copy()
    obs = observations(rows)
    n_obs = int(sum(m.sum() for m, _, _ in obs))
    campaigns = sorted(rows["campaign"].unique())
    free = _free(rows)
    if n_obs <= len(free):
        raise FitError(f"{n_obs} public observations cannot determine {len(free)} constants")
    held = {s.name: s.init * s.scale for s in PARAMS if s not in free}
    ps = lmfit.Parameters()
    for s in free:
        ps.add(s.name, value=s.init, min=s.lo, max=s.hi)
    for i in range(len(campaigns)):
        ps.add(f"u{i}", value=0.0, min=-3.0, max=3.0)
        ps.add(f"v{i}", value=0.0, min=-1.0, max=1.0)
    def unpack(p):
        v = dict(held)
        v.update({s.name: p[s.name].value * s.scale for s in free})
        eff = {c: (p[f"u{i}"].value, p[f"v{i}"].value) for i, c in enumerate(campaigns)}
        return v, eff

    sds = [host_sd_log, meter_sd_log]

    prep = Prepared(rows)

    def residual(p):
        v, eff = unpack(p)
        pred = prep.predict(v, eff)
        res = [np.log(pred[col].to_numpy(float)[m] / o[m]) for m, col, o in obs]
        pri = [(v[s.name] - s.prior[0]) / s.prior[1] * PRIOR_WEIGHT for s in free if s.prior]
        re = [e[0] / sds[0] for e in eff.values()] + [e[1] / sds[1] for e in eff.values()]
        return np.concatenate(res + [np.array(pri), PRIOR_WEIGHT * np.array(re)])

    res = None
    for _ in range(rounds):
        res = lmfit.minimize(residual, ps, method="least_squares")
        if not res.success:
            raise FitError(f"public-rows fit did not converge ({res.message})")
        ps = res.params
        _, eff = unpack(ps)
        u = np.array([e[0] for e in eff.values()])
        m = np.array([e[1] for e in eff.values()])
        sds = [max(float(np.sqrt(np.mean(u ** 2))), 0.05), max(float(np.sqrt(np.mean(m ** 2))), 0.05)]
    v, eff = unpack(res.params)
    se = {s.name: (res.params[s.name].stderr or 0.0) * s.scale for s in free}
    se.update({k: 0.0 for k in held})
    return PublicFit(v, se, eff, sds[0], sds[1], float(res.aic), float(res.bic), res.covar,
                     list(res.var_names), rows, prep.predict(v, eff), n_obs)


# ---- scoring --------------------------------------------------------------------------------
def _ape(pred, obs):
    return np.abs(np.asarray(pred, float) / np.asarray(obs, float) - 1.0)


def energy_ratios(rows: pd.DataFrame, j_per_tok: np.ndarray) -> list[dict]:
    """Quantized / FP16 J/token per (campaign, GPU, model, batch, pairing), measured and
    predicted. A row paired with a named run (``paired with NF4 run``) serves that precision."""
    rows = rows.assign(pred_j=j_per_tok)
    out = []
    for key, g in rows.groupby(["campaign", "gpu", "model", "batch"]):
        ref = g[g["family"].isin(("fp16", "bf16"))]
        for r in g[~g["family"].isin(("fp16", "bf16"))].itertuples():
            cand = ref
            if len(ref) > 1:
                tag = {"int8": "INT8", "int8_t0": "INT8", "nf4": "NF4", "nf4dq": "NF4"}.get(r.family, "")
                named = ref[ref["pair"].str.contains(tag, na=False)] if tag else ref.iloc[:0]
                cand = named if len(named) else ref.iloc[:1]
            if not len(cand) or not np.isfinite(r.obs_j_per_tok):
                continue
            f = cand.iloc[0]
            if not np.isfinite(f["obs_j_per_tok"]):
                continue
            out.append({"campaign": key[0], "gpu": key[1], "model": key[2], "batch": key[3],
                        "family": r.family, "measured": r.obs_j_per_tok / f["obs_j_per_tok"],
                        "predicted": r.pred_j / f["pred_j"],
                        "rows": (rows.index.get_loc(r.Index), rows.index.get_loc(f.name))})
    return out


#: a quantized/FP16 J ratio further than this from 1 is a decisive energy verdict
DECISIVE = 0.05


def energy_scores(rows: pd.DataFrame, pred: pd.DataFrame, lo=None, hi=None) -> dict:
    """J/token, power and tok/s MAPE, energy-ratio MAPE, decisive verdicts, 68% coverage."""
    j = rows["obs_j_per_tok"].notna().to_numpy()
    p = rows["obs_power_w"].notna().to_numpy()
    t = rows["obs_tok_s"].notna().to_numpy()
    ratios = energy_ratios(rows, pred["j_per_tok"].to_numpy(float))
    dec = [r for r in ratios if abs(r["measured"] - 1.0) > DECISIVE]
    out = {"n_rows": int(len(rows)), "n_j": int(j.sum()),
           "j_mape": float(np.mean(_ape(pred["j_per_tok"][j], rows["obs_j_per_tok"][j]))) if j.any() else np.nan,
           "j_bias": float(np.median(pred["j_per_tok"][j] / rows["obs_j_per_tok"][j] - 1)) if j.any() else np.nan,
           "n_power": int(p.sum()),
           "power_mape": float(np.mean(_ape(pred["power_w"][p], rows["obs_power_w"][p]))) if p.any() else np.nan,
           "n_tok": int(t.sum()),
           "tok_mape": float(np.mean(_ape(pred["tok_s"][t], rows["obs_tok_s"][t]))) if t.any() else np.nan,
           "n_ratio": len(ratios),
           "ratio_mape": float(np.mean([_ape(r["predicted"], r["measured"]) for r in ratios])) if ratios else np.nan,
           "verdicts": len(dec),
           "verdicts_right": sum((r["predicted"] > 1) == (r["measured"] > 1) for r in dec),
           "wrong": [r for r in dec if (r["predicted"] > 1) != (r["measured"] > 1)]}
    if lo is not None:
        o = rows["obs_j_per_tok"].to_numpy(float)
        inside = (o >= lo) & (o <= hi)
        out["coverage68"] = float(np.mean(inside[j])) if j.any() else np.nan
    return out


def band_draws(f: PublicFit, rows: pd.DataFrame, model_sd: float, n: int = 100,
               seed: int = 0, host_only: bool = False) -> np.ndarray:
    """Draws of log J/token for held-out ``rows`` (campaigns unknown to ``f``), shape (n, rows),
    formed as the product's bands are: the fit's parameter covariance, one host slow-down and
    one meter factor per draw from the campaigns' spreads (shared by every row: one machine),
    and the model's own log error ``model_sd``. ``host_only``: the host factor alone (what
    part of the spread the host explains)."""
    rng = np.random.default_rng(seed)
    names = [s.name for s in PARAMS if s.name in f.var_names]
    idx = [f.var_names.index(k) for k in names]
    cov = f.covar[np.ix_(idx, idx)] if f.covar is not None else np.zeros((len(idx), len(idx)))
    scale = np.array([next(s.scale for s in PARAMS if s.name == k) for k in names])
    mean = np.array([f.values[k] / sc for k, sc in zip(names, scale, strict=True)])
    lim = {s.name: (s.lo, s.hi) for s in PARAMS}
    prep = Prepared(rows)
    out = np.empty((n, len(rows)))
    for i in range(n):
        v = dict(f.values)
        if not host_only and len(idx):
            x = rng.multivariate_normal(mean, cov)
            for k, xi, sc in zip(names, x, scale, strict=True):
                v[k] = float(np.clip(xi, *lim[k])) * sc
        u = rng.normal(0.0, f.host_sd_log)
        m = 0.0 if host_only else rng.normal(0.0, f.meter_sd_log)
        eff = {c: (u, m) for c in rows["campaign"].unique()}
        e = 0.0 if host_only else rng.normal(0.0, model_sd, len(rows))
        out[i] = np.log(prep.predict(v, eff)["j_per_tok"].to_numpy(float)) + e
    return out


#: floor of the model's own log error (a fold can explain all its spread by the host)
MODEL_SD_FLOOR = 0.03


def leave_one_gpu_out(rows: pd.DataFrame | None = None, n_draws: int = 100,
                      groups: dict | None = None) -> list[dict]:
    """For each metered GPU: fit every other row (both tables), predict this GPU's metered rows
    with the population-centre host and meter, and score them. ``groups`` may join GPUs into
    one fold (``{"rtx-4090 + 4090d": ("rtx-4090", "rtx-4090d")}``).

    Bands are formed as the product forms them (:func:`band_draws`): parameter covariance, one
    host and one meter factor, and the model's own error. That error is what the host does not
    explain of the *other* folds' residuals (nested: no fold's coverage sees its own errors):
    sd^2 = mean(r^2 - s_host^2), r the log residual of J/token, s_host the spread the host
    factor alone gives that row.
    """
    rows = public_rows.read() if rows is None else rows
    used = rows[rows["use"]]
    metered = sorted(used.loc[used["table"] == "energy", "gpu"].unique())
    folds = groups or {g: (g,) for g in metered}
    jobs = [(used[~used["gpu"].isin(gpus)],
             used[used["gpu"].isin(gpus) & (used["table"] == "energy")], n_draws)
            for gpus in folds.values()]
    fits = dict(zip(folds, each_fold(_energy_fold, jobs), strict=True))
    out = []
    for name, (f, test, pred, r, s_host, host) in fits.items():
        excess = np.concatenate([(x[3] ** 2 - x[4] ** 2)[np.isfinite(x[3])]
                                 for k, x in fits.items() if k != name])
        model_sd = float(np.sqrt(max(np.mean(excess), MODEL_SD_FLOOR ** 2))) if len(excess) else 0.0
        lo, hi = np.exp(np.percentile(band_draws(f, test, model_sd, n_draws), [16, 84], axis=0))
        s = energy_scores(test, pred, lo, hi)
        out.append({"fold": name, "gpus": folds[name], "fit": f, "rows": test, "pred": pred,
                    "log_resid": r, "s_host": s_host, "host_draws": host,
                    "model_sd_log": model_sd, **s})
    return out


def latency_groups(rows: pd.DataFrame) -> list[tuple[str, str]]:
    lat = rows[rows["table"] == "latency"]
    return sorted({(g, m) for g, m in zip(lat["gpu"], lat["model"], strict=True)})


def leave_one_group_out(rows: pd.DataFrame | None = None) -> list[dict]:
    """For each (GPU, model) group of the maintainers' latency table: fit every other row (the
    metered rows included), predict the group and score step time (MAPE) and decisive time
    verdicts (quantized vs 16-bit more than 5% apart). The group's machine keeps the host speed
    its other groups showed (the H100 server runs both models); a machine seen in no other
    row (the RTX 4090 desktop) gets the population-centre host, whose spread the bands carry."""
    rows = public_rows.read() if rows is None else rows
    used = rows[rows["use"]]
    groups = latency_groups(used)
    held = [(used["table"] == "latency") & (used["gpu"] == gpu) & (used["model"] == model)
            for gpu, model in groups]
    done = each_fold(_latency_fold, [(used[~h], used[h]) for h in held])
    return [{"fold": f"{gpu} / {model}", **r} for (gpu, model), r in zip(groups, done, strict=True)]


def _energy_fold(train: pd.DataFrame, test: pd.DataFrame, n_draws: int) -> tuple:
    """One metered GPU's fold: the fit without it, its prediction, log residuals of J/token and
    the spread the host factor alone gives each row."""
    f = fit(train)
    pred = predict(test, f.values)
    r = np.log(pred["j_per_tok"].to_numpy(float) / test["obs_j_per_tok"].to_numpy(float))
    host = band_draws(f, test, 0.0, max(n_draws // 3, 20), host_only=True)
    return f, test, pred, r, np.std(host, axis=0), host


def _latency_fold(train: pd.DataFrame, test: pd.DataFrame) -> dict:
    """One (GPU, model) latency group's fold: fit without it, predict it, score it."""
    f = fit(train)
    pred = predict(test, f.values, f.effects)  # a campaign seen in other groups: its host
    ape = _ape(pred["step_s"], test["obs_step_s"])
    right, n = time_verdicts(test, pred["step_s"].to_numpy(float))
    return {"rows": test, "pred": pred, "fit": f,
            "host_known": bool(test["campaign"].iloc[0] in f.effects),
            "log_resid": np.log(pred["step_s"].to_numpy(float) / test["obs_step_s"].to_numpy(float)),
            "mape": float(np.mean(ape)), "max_ape": float(np.max(ape)),
            "verdicts_right": right, "verdicts": n}


def each_fold(fn, jobs: list[tuple], workers: int | None = None) -> list:
    """``fn(*job)`` for every held-out fold, the folds side by side on the machine's cores.

    The folds are independent fits, so one process each (``spawn``: a fresh interpreter, safe
    beside a parent that loaded torch) gives the same floats as one after another, in the same
    order; ``workers`` defaults to the number of CPUs this process may use (one: in line)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = min(len(jobs), workers or cpus or 1)
    if workers <= 1:
        return [fn(*job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*jobs, strict=True)))


def time_verdicts(rows: pd.DataFrame, step: np.ndarray, margin: float = DECISIVE):
    """(right, decisive) time verdicts: quantized rows whose measured step differs from the same
    GPU/model/batch 16-bit row by more than ``margin``, predicted on the same side."""
    rows = rows.assign(pred_s=step)
    right = n = 0
    for _, g in rows.groupby(["campaign", "gpu", "model", "batch"]):
        ref = g[g["family"].isin(("fp16", "bf16"))]
        if not len(ref):
            continue
        r0 = ref.iloc[0]
        for r in g[~g["family"].isin(("fp16", "bf16"))].itertuples():
            m = r.obs_step_s / r0["obs_step_s"]
            if abs(m - 1.0) > margin:
                n += 1
                right += (r.pred_s / r0["pred_s"] > 1.0) == (m > 1.0)
    return right, n
