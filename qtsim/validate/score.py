"""Scoring held-out runs: measured J/query, prediction errors, COR and trap verdicts.

Pure functions over pandas frames of recorded validation decodes (no torch).
"""

from __future__ import annotations

import math

import numpy as np

from qtsim.errors import QtsimError

#: a measured quantized/native J-per-query ratio this close to 1 is a near tie: its verdict can
#: flip with run-to-run noise, so reports count decisive comparisons separately
CLOSE_CALL = 0.05
QUANTITIES = {  # measured column, predicted column, unit
    "step_s": ("t_step_s", "pred_step_s", "s"),
    "latency_s": ("t_generate_s", "pred_latency_s", "s"),
    "j_per_query": ("j_per_query", "pred_j_per_query", "J"),
    # the memory the model holds while it decodes, against predicted weights + KV cache +
    # workspace (runtime overhead excluded): what a peak-memory prediction means. A process's
    # peak RSS (interpreter, and the 16-bit weights loaded before quantisation) is not scored
    "steady_memory_bytes": ("steady_memory_bytes", "pred_steady_bytes", "bytes"),
}
#: said where points record no steady-state memory (older raw files)
MEMORY_NOT_VALIDATED = (
    "peak memory not validated: these points record only the process's peak RSS, which holds "
    "the interpreter and the 16-bit weights loaded before quantisation, while the prediction "
    "means the model's steady-state memory (re-measure with this qtsim: steady_memory_bytes)")


def measured_frame(frame, meter: str | None = None):
    """Validation decode rows with measured J/query (window energy / iterations / batch)."""
    import pandas as pd

    if frame is None or len(frame) == 0 or "kind" not in frame:
        return pd.DataFrame()
    df = frame[(frame["kind"] == "decode") & (frame.get("purpose", "validation") == "validation")].copy()
    if df.empty:
        return df
    meters = [c[len("e_median_j_"):] for c in df.columns if c.startswith("e_median_j_")]
    meter = meter or next((m for m in ("nvml_counter", "rapl", "nvml_poll", "hli") if m in meters), None)
    if meter is None:
        raise QtsimError("validation data has no energy readings")
    iters = df.get("iters_per_rep", 1)
    iters = iters.fillna(1) if hasattr(iters, "fillna") else 1
    df["j_per_query"] = df[f"e_median_j_{meter}"] / iters / df["batch"]
    df["energy_meter"] = meter
    return df


def error_table(df, by: str | None = "precision"):
    """MAPE, bias, Pearson r, p90 and max absolute % error per quantity (and per ``by``)."""
    import pandas as pd

    rows = []
    groups = [("all", df)] + (list(df.groupby(by)) if by and by in df else [])
    for gname, g in groups:
        for q, (mcol, pcol, unit) in QUANTITIES.items():
            if mcol not in g or pcol not in g:
                continue
            ok = g[[mcol, pcol]].dropna()
            ok = ok[(ok[mcol] > 0)]
            if ok.empty:
                continue
            err = ok[pcol] / ok[mcol] - 1.0
            r = float(np.corrcoef(ok[mcol], ok[pcol])[0, 1]) if len(ok) > 2 else math.nan
            rows.append({"group": gname, "quantity": q, "unit": unit, "n": len(ok),
                         "mape_pct": 100 * float(err.abs().mean()), "bias_pct": 100 * float(err.mean()),
                         "pearson_r": r, "p90_ape_pct": 100 * float(err.abs().quantile(0.9)),
                         "max_ape_pct": 100 * float(err.abs().max())})
    return pd.DataFrame(rows)


def cor_and_verdicts(df, native: str = "fp16"):
    """Measured vs predicted COR (eq. 8) and trap verdicts (J/query: quantized > native)."""
    import pandas as pd

    rows = []
    keys = ["model", "batch", "new_tokens", "prompt_len"]
    for key, g in df.groupby(keys):
        nat = g[g["precision"] == native]
        if nat.empty:
            continue
        n = nat.iloc[0]
        for _, q in g[g["precision"] != native].iterrows():
            rows.append({
                **dict(zip(keys, key, strict=True)), "precision": q["precision"],
                "cor_measured": q["t_step_s"] / n["t_step_s"] - 1.0,
                "cor_predicted": q["pred_step_s"] / n["pred_step_s"] - 1.0,
                "trapped_measured": bool(q["j_per_query"] > n["j_per_query"]),
                "trapped_predicted": bool(q["pred_j_per_query"] > n["pred_j_per_query"]),
                "trapped_paper_model": bool(q["pred_j_per_query_paper"] > n["pred_j_per_query_paper"]),
                "energy_ratio_measured": q["j_per_query"] / n["j_per_query"],
                "energy_ratio_predicted": q["pred_j_per_query"] / n["pred_j_per_query"],
            })
    out = pd.DataFrame(rows)
    if not out.empty:
        out["verdict_agrees"] = out["trapped_measured"] == out["trapped_predicted"]
        out["paper_verdict_agrees"] = out["trapped_measured"] == out["trapped_paper_model"]
        out["close_call"] = (out["energy_ratio_measured"] - 1.0).abs() < CLOSE_CALL
    return out


def verdict_summary(verdicts) -> str:
    """'a/b (paper eq. 19: c/b); decisive comparisons: d/e; n close calls' for reports."""
    n = len(verdicts)
    dec = verdicts[~verdicts["close_call"]]
    text = (f"{int(verdicts['verdict_agrees'].sum())}/{n} (paper eq. 19: "
            f"{int(verdicts['paper_verdict_agrees'].sum())}/{n}); decisive comparisons "
            f"(measured J/query ratio more than {100 * CLOSE_CALL:.0f}% from parity): "
            f"{int(dec['verdict_agrees'].sum())}/{len(dec)}")
    close = n - len(dec)
    return text + (f"; {close} close call{'s' if close != 1 else ''} within ±{100 * CLOSE_CALL:.0f}%"
                   if close else "")


#: before/after drift factors further apart than this: the machine moved during the run, so one
#: correction fits it badly (said in the report)
DRIFT_UNSTEADY = 0.10
#: measured columns that scale with the machine's speed (times; energy only under HLI, which is
#: TDP x time)
DRIFT_TIME_COLUMNS = ("t_generate_s", "t_step_s", "t_prefill_s")


def drift_since_calibration(decodes) -> dict:
    """How much slower (> 1) or faster the machine ran the calibration's reference points
    during validation than during calibration: the median over the re-measured points
    (``purpose = "drift"``, :func:`qtsim.validate.holdout.drift_probes`) of measured /
    calibration time, with the factors before and after the held-out runs. ``factor`` is None
    where no reference point was re-measured."""
    none = {"factor": None, "text": "not measured (the calibration's raw data was not at hand, "
                                    "or these points predate drift probes): not corrected"}
    if decodes is None or not len(decodes) or "ref_t_generate_s" not in decodes:
        return none
    d = decodes[(decodes.get("purpose") == "drift") & decodes["ref_t_generate_s"].notna()]
    if d.empty:
        return none
    ratio = (d["t_generate_s"] / d["ref_t_generate_s"]).to_numpy(float)
    when = d["drift_when"].astype(str).to_numpy() if "drift_when" in d else np.full(len(d), "")
    by = {w: float(np.median(ratio[when == w])) for w in ("before", "after") if (when == w).any()}
    factor = float(np.median(ratio))
    unsteady = (len(by) == 2 and abs(by["after"] / by["before"] - 1.0) > DRIFT_UNSTEADY)
    parts = ", ".join(f"{w} {v:.3f}x" for w, v in by.items())
    text = (f"the calibration's reference points ran {factor:.3f}x their calibration times "
            f"({parts}; {len(d)} points): measured times divided by it (and HLI energy, which "
            "is TDP x time), i.e. scored at the machine's speed when it was calibrated"
            + ("; the machine moved during the run itself, so the correction is uncertain by "
               f"{100 * abs(by['after'] / by['before'] - 1):.0f}%" if unsteady else ""))
    return {"factor": factor, "before": by.get("before"), "after": by.get("after"),
            "n": int(len(d)), "unsteady": bool(unsteady), "text": text}


def correct_for_drift(df, drift: dict):
    """``df`` with its measured times (and HLI energies) divided by the drift factor of
    :func:`drift_since_calibration` (the uncorrected values kept as ``*_uncorrected``), and
    ``drift``; unchanged where no drift was measured."""
    f = drift.get("factor")
    if not f or df.empty:
        return df, drift
    out = df.copy()
    cols = [c for c in DRIFT_TIME_COLUMNS if c in out]
    if "energy_meter" in out and (out["energy_meter"] == "hli").all():
        cols.append("j_per_query")
    for c in cols:
        out[f"{c}_uncorrected"] = out[c]
        out[c] = out[c] / f
    return out, drift
