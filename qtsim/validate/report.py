"""The validation report: paper model vs physical model, plots and Markdown.

Pure functions over the scored frames (:mod:`qtsim.validate.score`,
:mod:`qtsim.validate.coverage`); :func:`plot_validation` draws with matplotlib's Agg backend.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qtsim.model.stack import describe
from qtsim.report.budget import energy_scope
from qtsim.validate.score import MEMORY_NOT_VALIDATED, QUANTITIES, verdict_summary

#: quantities the summary prints, in order
SUMMARY_QUANTITIES = ("step_s", "latency_s", "j_per_query", "steady_memory_bytes")


@dataclass
class ValidationReport:
    """A scored validation run: the points (``df``), their error table, COR and verdicts, the
    paper model's comparison, band coverage, the model-error estimate (what
    ``[fit.model_error]`` stores) and the report's header facts (``meta``)."""

    df: object
    errors: object
    verdicts: object
    comparison: dict
    coverage: object
    estimate: dict
    meta: dict
    drift: dict | None = None  # qtsim.validate.score.drift_since_calibration


def report_meta(profile, raw, df) -> dict:
    """The report's header: profile, raw data, points, energy meter and what it covers,
    outliers, hold-out."""
    meter = df["energy_meter"].iloc[0]
    return {"profile": f"{profile.name} ({profile.source}, {profile.provenance.get('date', '')}, "
                       f"{profile.path})",
            "raw data": str(raw), "points": len(df),
            "energy meter": meter,
            "energy": energy_scope(profile.hardware.get("device_type"), meter),
            "outlier injection": ("outlier_injection" in df
                                  and bool(df["outlier_injection"].fillna(False).astype(bool).any())),
            "held out": (", ".join(sorted(df["holdout"].astype(str).unique()))
                         if "holdout" in df else "held-out"),
            "bitsandbytes": _stack_line(profile, df)}


def _stack_line(profile, df) -> str:
    """The bitsandbytes release the runs used and the one the predictions assumed."""
    ran = (", ".join(sorted(df["bitsandbytes"].dropna().astype(str).unique()))
           if "bitsandbytes" in df else "") or "not recorded"
    return f"measured with {ran}; predicted for {describe(profile.for_serving().bnb)}"


def write_report(rep: ValidationReport, out: Path) -> Path:
    """Write ``out``/report.md, the plots and the CSV tables; returns the Markdown's path."""
    out.mkdir(parents=True, exist_ok=True)
    plot_validation(rep.df, out)
    path = out / "report.md"
    path.write_text(report_markdown(rep.df, rep.errors, rep.verdicts, rep.comparison, rep.meta,
                                    rep.coverage))
    rep.coverage.to_csv(out / "coverage.csv", index=False)
    rep.df.to_csv(out / "points.csv", index=False)
    rep.errors.to_csv(out / "errors.csv", index=False)
    if rep.drift is not None:
        (out / "drift.json").write_text(json.dumps(rep.drift, indent=2))
    if not rep.verdicts.empty:
        rep.verdicts.to_csv(out / "verdicts.csv", index=False)
    return path


def summary_lines(rep: ValidationReport, profile_name: str) -> list[str]:
    """The terminal summary: errors over all points, verdicts, paper model, band coverage."""
    lines = [f"validation of {profile_name}: {len(rep.df)} held-out points "
             f"(energy: {rep.meta['energy']}; meter {rep.meta['energy meter']}; "
             f"bitsandbytes {rep.meta['bitsandbytes']})"]
    allrow = rep.errors[rep.errors["group"] == "all"].set_index("quantity")
    if rep.drift is not None:
        lines.append(f"  drift since calibration: {rep.drift['text']}")
        if rep.drift.get("factor") and "t_generate_s_uncorrected" in rep.df:
            d = rep.df
            raw = 100 * float((d["pred_latency_s"] / d["t_generate_s_uncorrected"] - 1).abs().mean())
            lines.append(f"  latency MAPE without the drift correction: {raw:.2f}%")
    for q in SUMMARY_QUANTITIES:
        if q in allrow.index:
            r = allrow.loc[q]
            lines.append(f"  {q:18s} MAPE {r['mape_pct']:6.2f}%  bias {r['bias_pct']:+6.2f}%  "
                         f"p90 {r['p90_ape_pct']:6.2f}%  max {r['max_ape_pct']:6.2f}%  "
                         f"r {r['pearson_r']:.3f}")
    if "steady_memory_bytes" not in allrow.index:
        lines.append(f"  {MEMORY_NOT_VALIDATED}")
    elif "steady_memory_kind" in rep.df:
        kind = rep.df["steady_memory_kind"].dropna()
        lines.append(f"  memory measured: {kind.iloc[0] if len(kind) else ''}")
    if not rep.verdicts.empty:
        lines.append(f"  trap verdicts agree: {verdict_summary(rep.verdicts)}")
    if rep.comparison:
        lines.append(f"  J/query MAPE: physical {rep.comparison['physical_j_mape_pct']:.1f}%, "
                     f"paper eq. 19 {rep.comparison['paper_j_mape_pct']:.1f}%")
    cov = rep.coverage
    loo = cov[cov["scheme"].str.startswith("leave-one")] if len(cov) else cov
    if len(cov) and loo.empty:
        models = sorted(rep.df["model"].astype(str).unique()) if "model" in rep.df else []
        lines.append(f"  band coverage: no leave-one-model-out figure: every point is of one model "
                     f"({', '.join(models)}), and leaving it out leaves nothing to estimate the "
                     "model error from; the in-sample coverage in the report is circular (validate "
                     "two or more models for an honest figure)")
    for _, r in loo.iterrows():
        lines.append(f"  {r['quantity']:18s} band coverage ({r['scheme']}): 68% band "
                     f"{r['coverage_68_pct']:5.1f}%, 95% band {r['coverage_95_pct']:5.1f}%  "
                     f"(n {r['n']}; parameters only: {_param_only(cov, r['quantity'])})")
    return lines


def _param_only(coverage, quantity) -> str:
    p = coverage[(coverage["scheme"] == "parameters only") & (coverage["quantity"] == quantity)]
    return ("n/a" if p.empty
            else f"{p['coverage_68_pct'].iloc[0]:.1f}% / {p['coverage_95_pct'].iloc[0]:.1f}%")


def paper_vs_physical(df):
    """J/query MAPE of the paper model (eq. 19, constants from the profile) vs the physical one."""
    if df.empty:
        return {}
    m = df["j_per_query"]
    phys = (df["pred_j_per_query"] / m - 1).abs().mean() * 100
    pap = (df["pred_j_per_query_paper"] / m - 1).abs().mean() * 100
    return {"physical_j_mape_pct": float(phys), "paper_j_mape_pct": float(pap), "n": int(len(df))}


def plot_validation(df, outdir: Path):
    """Parity plot and error-vs-batch plot (PNG); returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (q, label) in zip(axes, [("step_s", "decode step time (s)"), ("j_per_query", "energy per query (J)")], strict=True):
        mcol, pcol, _ = QUANTITIES[q]
        for prec, g in df.groupby("precision"):
            ax.scatter(g[mcol], g[pcol], label=prec, s=28, alpha=0.85)
        lo = float(np.nanmin(df[[mcol, pcol]].to_numpy())) * 0.8
        hi = float(np.nanmax(df[[mcol, pcol]].to_numpy())) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="perfect")
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="±10%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"measured {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.legend(fontsize=8)
    fig.suptitle("Held-out validation: predicted vs measured")
    fig.tight_layout()
    p = outdir / "parity.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(7, 4.4))
    precs = sorted(df["precision"].unique())
    for i, (prec, g) in enumerate(df.groupby("precision")):
        err = 100 * (g["pred_step_s"] / g["t_step_s"] - 1)
        # precisions side by side around their batch (x 1.04 apart) so equal batches do not stack
        nudge = 1.04 ** (i - (len(precs) - 1) / 2)
        ax.scatter(g["batch"] * nudge, err, label=prec, s=28)
    ax.axhline(0, color="k", lw=1)
    ax.axhspan(-10, 10, color="grey", alpha=0.15, label="±10%")
    ax.set_xscale("log", base=2)
    batches = sorted(df["batch"].unique())
    ax.set_xticks(batches, [f"{b:g}" for b in batches])
    ax.minorticks_off()
    ax.set_xlim(min(batches) / 1.3, max(batches) * 1.3)
    ax.set_xlabel("batch size B (sequences; precisions drawn side by side)")
    ax.set_ylabel("step-time prediction error (%)")
    ax.set_title("Prediction error vs batch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = outdir / "error_vs_batch.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def report_markdown(df, errors, verdicts, comparison, meta: dict, coverage=None) -> str:
    """The validation report as Markdown."""
    lines = [f"# Validation report: {meta.get('profile', '')}", ""]
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    lines += ["", "Predictions were computed from the profile before each run and stored beside the "
              "measurement; no validation point was used to fit the profile.", "",
              "## Prediction error", "", _md(errors.round(2)), ""]
    if not verdicts.empty:
        lines += ["## COR and trap verdicts", "",
                  f"Trap-verdict agreement (J/query, quantized > native): {verdict_summary(verdicts)}.",
                  "", _md(verdicts.round(3)), ""]
    if comparison:
        lines += ["## Paper model vs physical model", "",
                  f"J/query MAPE: physical {comparison['physical_j_mape_pct']:.1f}%, "
                  f"paper eq. 19 {comparison['paper_j_mape_pct']:.1f}% over {comparison['n']} points.", ""]
    if coverage is not None and len(coverage):
        lines += ["## Band coverage", "",
                  "Share of held-out measurements inside the 68% and 95% bands. The bands add the "
                  "model's own error (split-conformal half-widths of |log(measured/predicted)|) to "
                  "the profile's parameter uncertainty. *leave-one-model-out* estimates that error "
                  "on the other architectures' points and scores the held-out one (the honest "
                  "figure); *in-sample* and *profile* (when the profile's record came from these "
                  "points) are circular and shown for reference; *parameters only* is the band "
                  "without model error. Predictions recomputed from the profile by this qtsim.", "",
                  _md(coverage.round(1)), ""]
    cols = ["model", "precision", "batch", "new_tokens", "t_step_s", "pred_step_s", "t_generate_s",
            "pred_latency_s", "j_per_query", "pred_j_per_query", "steady_memory_bytes",
            "pred_steady_bytes"]
    lines += ["## Points", "", _md(df[[c for c in cols if c in df]].round(5)), "",
              "![parity](parity.png)", "", "![error vs batch](error_vs_batch.png)", ""]
    return "\n".join(lines)


def _md(df) -> str:
    if df is None or len(df) == 0:
        return "(none)"
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
