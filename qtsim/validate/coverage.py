"""Band coverage: do the simulator's 68% and 95% bands hold the held-out measurements?

The model's own error is estimated as split-conformal half-widths of |log(measured /
predicted)| (:func:`conformal_halfwidth`), scored leaving each architecture out
(:func:`coverage_table`), and recorded in a profile's ``[fit.model_error]``
(:func:`model_error_record`, with the cross-precision correlation :func:`cross_precision_rho`).
"""

from __future__ import annotations

import json
import math

import numpy as np

from qtsim.model.architecture import from_config
from qtsim.profiles.profile import HardwareProfile, model_error_deviates
from qtsim.simulate.simulator import Simulator
from qtsim.validate.predict import row_point

#: quantities whose bands are scored: measured column, key in the simulator's output
BAND_QUANTITIES = {"latency_s": "t_generate_s", "j_per_query": "j_per_query", "step_s": "t_step_s"}
COVERAGE_LEVELS = (68, 95)


def point_draws(profile: HardwareProfile, df, n_draws: int = 400, seed: int = 0) -> dict:
    """Per validation point, the profile's central prediction and its parameter-only draws.

    Recomputed from the profile and the model now (not the predictions stored at measurement
    time), so coverage scores the bands this version of qtsim would print. Returns
    ``{quantity: (central (P,), log-draws (n, P))}`` over the rows of ``df`` (which needs the
    recorded ``config_json`` and the recorded workload columns).
    """
    sim = Simulator(profile, n_draws=n_draws, seed=seed, model_error=False)
    cen = {q: [] for q in BAND_QUANTITIES}
    drw = {q: [] for q in BAND_QUANTITIES}
    for _, row in df.iterrows():
        c = from_config(json.loads(row["config_json"]), name=str(row["model"])).counts()
        w = row_point(row).workload
        q, qd = sim.evaluate(c, w), sim.evaluate(c, w, draws=True)
        for k in BAND_QUANTITIES:
            cen[k].append(float(q[k]))
            drw[k].append(np.log(np.asarray(qd[k], float).ravel()))
    return {k: (np.array(cen[k]), np.stack(drw[k], axis=1)) for k in BAND_QUANTITIES}


def conformal_halfwidth(abs_log_residuals, level: float) -> float:
    """Split-conformal half-width: the ceil((n + 1) level)-th smallest |log residual|.

    With exchangeable points, a band of this half-width around a new prediction covers its
    measurement with probability at least ``level`` (capped at the largest residual when n is
    too small for that guarantee).
    """
    r = np.sort(np.asarray(abs_log_residuals, float))
    if r.size == 0:
        return math.nan
    k = min(math.ceil((r.size + 1) * level / 100.0), r.size)
    return float(r[k - 1])


def inside_band(measured, log_draws, q68: float, q95: float, level: float,
                z: np.ndarray) -> np.ndarray:
    """Whether each measurement lies in the central ``level``% band of the draws.

    ``log_draws`` (n, P) are parameter-only log predictions; the band adds the model error
    with half-widths ``q68``/``q95`` (:func:`qtsim.profiles.hardware.model_error_deviates`) at the
    standard normals ``z`` (n, 1), as :class:`Simulator` does.
    """
    d = log_draws + model_error_deviates(z, q68, q95)
    lo, hi = np.percentile(d, [50 - level / 2, 50 + level / 2], axis=0)
    m = np.log(np.asarray(measured, float))
    return (m >= lo) & (m <= hi)


def coverage_table(profile: HardwareProfile, df, n_draws: int = 400, seed: int = 0,
                   group: str = "model"):
    """Share of held-out measurements inside the 68% and 95% bands, per quantity and scheme.

    The model error is the split-conformal half-width (:func:`conformal_halfwidth`) of
    |log(measured / predicted)| at 68% and 95%. Schemes: ``parameters only`` (the profile's
    constants' uncertainty, no model error: the bands before issue 10); ``profile`` (the
    model error the profile records, or its stated prior: circular if that record was made
    from these same points); ``in-sample`` (half-widths from all points, scored on the same
    points: circular, for reference); ``leave-one-<group>-out`` (half-widths from the other
    groups' points, scored on the held-out group's: the honest figure, since a user brings an
    architecture the record never saw; absent when every point is of one group, where it would
    be the in-sample figure again). Returns the table and the record estimated from all
    points (what ``[fit.model_error]`` stores).
    """
    import pandas as pd

    pdraws = point_draws(profile, df, n_draws, seed)
    z = np.random.default_rng([seed, 0xC0FE]).standard_normal((n_draws, 1))
    groups = df[group].astype(str).to_numpy() if group in df else np.zeros(len(df), str)
    rec = profile.model_error()
    rows, est = [], {}
    for q, mcol in BAND_QUANTITIES.items():
        if mcol not in df:
            continue
        meas = df[mcol].to_numpy(float)
        cen, ld = pdraws[q]
        ok = np.isfinite(meas) & (meas > 0) & np.isfinite(cen)
        meas, cen, ld, g = meas[ok], cen[ok], ld[:, ok], groups[ok]
        if meas.size == 0:
            continue
        r = np.log(meas / cen)
        est[q] = _residual_record(r)
        schemes = _halfwidth_schemes(np.abs(r), g, (rec["q68"].get(q, 0.0), rec["q95"].get(q, 0.0)),
                                     group)
        rows += [_coverage_row(q, name, h, meas, ld, z) for name, h in schemes.items()]
    return pd.DataFrame(rows), est


def _residual_record(r) -> dict:
    """The model error estimated from all log residuals ``r`` (one ``[fit.model_error]`` row)."""
    a = np.abs(r)
    return {"q68": round(conformal_halfwidth(a, 68), 5), "q95": round(conformal_halfwidth(a, 95), 5),
            "n": int(r.size), "rms_log_residual": round(float(np.sqrt(np.mean(r ** 2))), 5),
            "bias_log": round(float(np.mean(r)), 5)}


def _halfwidth_schemes(a, groups, recorded, group: str) -> dict:
    """Per scheme of :func:`coverage_table`, the (68%, 95%) half-widths at each point, (P, 2)."""
    n = a.size
    h_all = (conformal_halfwidth(a, 68), conformal_halfwidth(a, 95))
    out = {"parameters only": np.zeros((n, 2)), "profile": np.tile(recorded, (n, 1)),
           "in-sample": np.tile(h_all, (n, 1))}
    if np.unique(groups).size < 2:  # leaving the only group out leaves nothing to estimate from
        return out
    loo = np.empty((n, 2))
    for gv in np.unique(groups):
        held = groups == gv
        loo[held] = (conformal_halfwidth(a[~held], 68), conformal_halfwidth(a[~held], 95))
    out[f"leave-one-{group}-out"] = loo
    return out


def _coverage_row(quantity: str, scheme: str, h, meas, log_draws, z) -> dict:
    """One row of :func:`coverage_table`: mean half-widths and the share inside each band."""
    row = {"quantity": quantity, "scheme": scheme, "n": int(meas.size),
           "halfwidth_68_pct": 100 * float(np.mean(h[:, 0])),
           "halfwidth_95_pct": 100 * float(np.mean(h[:, 1]))}
    for lvl in COVERAGE_LEVELS:
        hit = [inside_band(meas[i:i + 1], log_draws[:, i:i + 1], h[i, 0], h[i, 1], lvl, z)[0]
               for i in range(meas.size)]
        row[f"coverage_{lvl}_pct"] = 100 * float(np.mean(hit))
    return row


def model_error_record(est: dict, source_file: str, date: str, rho: float | None = None) -> dict:
    """The ``[fit.model_error]`` table a profile records after a held-out check."""
    rec = {"basis": "split-conformal 68% and 95% half-widths of |log(measured / predicted)| "
                    "over held-out validation decodes (qtsim.validate.coverage.coverage_table)",
           "source_file": source_file, "date": date,
           "note": ("estimated from every held-out point: scoring these half-widths on the same "
                    "points is circular; the leave-one-model-out coverage in the validation report "
                    "is the honest check")}
    if rho is not None:
        rec["rho"] = round(float(rho), 3)
    rec.update(est)
    return rec


def cross_precision_rho(df, native: str = "fp16") -> float | None:
    """Correlation of the log residuals of quantized and native runs at the same point.

    Estimated as 1 - var(log ratio residual) / (2 var(log residual)), clipped to [0, 1]: the
    share of the model error that cancels in a quantized/native ratio. None without pairs.
    """
    if df.empty or "pred_j_per_query" not in df:
        return None
    r = np.log(df["j_per_query"] / df["pred_j_per_query"])
    keys = ["model", "batch", "new_tokens", "prompt_len"]
    d = df.assign(r=r)
    diffs = []
    for _, g in d.groupby(keys):
        nat = g[g["precision"] == native]
        if nat.empty:
            continue
        diffs += list(g[g["precision"] != native]["r"] - float(nat["r"].iloc[0]))
    if len(diffs) < 2:
        return None
    v = float(np.mean(np.square(r)))
    return float(np.clip(1.0 - np.mean(np.square(diffs)) / (2 * v), 0.0, 1.0)) if v > 0 else None
