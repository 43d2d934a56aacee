"""The trust probe's report (pure: reads a probe record, never torch): accuracy per hop count
with intervals, the fitted per-hop reliability and eps (eq. 7), Theorem 4.5's batch check,
as text, JSON or CSV, and the ``--trust`` CSV that ``qtsim trap`` and ``qtsim simulate`` read.

A probe record is what :func:`qtsim.calibration.trust.hops_probe.probe` returns (``probe.json``):
per setting, the problems decoded and answered right at each hop count, the histogram of hops
right before the first error, and the batch-1 vs batch-8 decode of the same problems.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from qtsim.errors import QtsimError, read_user_file
from qtsim.report.plots import save
from qtsim.trust import compounding as cmp
from qtsim.trust import tasks
from qtsim.trust.plots import params_text, plot_accuracy_vs_hops

TASK = "pointer-chase"
#: below this goodness-of-fit p-value accuracy is said not to fall as r**k
GOF_ALPHA = 0.05
TABLE_COLUMNS = ("setting", "hops", "n", "correct", "accuracy", "ci_low", "ci_high",
                 "chain_accuracy", "eq7_curve", "eq7_inside_ci")
#: the ``--trust`` table's columns (:mod:`qtsim.model.trust`), then the probe's own
TRUST_COLUMNS = ("model", "task", "precision", "accuracy", "kind", "depth", "source", "status",
                 "note", "n", "correct", "ci_low", "ci_high")


def read_record(path) -> dict[str, Any]:
    """A saved probe record (``probe.json``), checked enough to report on (one-line errors)."""
    text = read_user_file(path, QtsimError, "no such probe record")
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise QtsimError(f"{path}: not JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("kind") != "qtsim trust probe" \
            or not isinstance(rec.get("settings"), dict) or not rec["settings"]:
        raise QtsimError(f"{path}: not a `qtsim trust probe` record")
    return rec


def _pick_reference(rec: dict, reference: str | None) -> str:
    names = list(rec["settings"])
    if reference is None:
        return next((r for r in ("fp16", "bf16", "fp32") if r in names), names[0])
    if reference not in names:
        raise QtsimError(f"reference {reference!r} was not probed (probed: {', '.join(names)})")
    return reference


def analyse(rec: dict, reference: str | None = None, level: float = cmp.LEVEL) -> dict[str, Any]:
    """The probe's statistics (JSON-ready): per setting, accuracy per k with intervals, chain
    accuracy, the per-hop reliability fit, eps against ``reference`` (default fp16: the
    reference of T_SI) and eq. 7's curve T_ref(k) (1 - eps)^k, the hop-position reliabilities
    and the batch check."""
    ref = _pick_reference(rec, reference)
    r = rec["settings"][ref]
    ref_acc = np.asarray(r["answer_correct"], float) / np.asarray(r["n"], float)
    out: dict[str, Any] = {"reference": ref, "level": level, "settings": {}}
    for name, s in rec["settings"].items():
        hops = np.asarray(s["hops"])
        n = np.asarray(s["n"], float)
        ok = np.asarray(s["answer_correct"], float)
        lo, hi = cmp.binomial_ci(ok, n, level)
        fit = cmp.fit_hop_reliability(hops, ok, n, level)
        a: dict[str, Any] = {
            "description": s.get("description", name), "hops": hops.tolist(), "n": n.astype(int).tolist(),
            "correct": ok.astype(int).tolist(), "accuracy": (ok / n).tolist(),
            "ci_low": lo.tolist(), "ci_high": hi.tolist(),
            "chain_accuracy": (np.asarray(s["chain_correct"], float) / n).tolist(),
            "hop_reliability": fit.to_dict(),
            "hop_position": cmp.hop_position_reliability(s["hops_right_hist"], level),
            "batch_check": _batch(s.get("batch_check", {}), level),
            "outlier_column_share": s.get("outlier_column_share"),
        }
        if name != ref and list(hops) == list(r["hops"]):
            if s.get("chains") and r.get("chains"):
                a["divergence"] = _divergence(rec, s["chains"], r["chains"], hops, level)
            e = cmp.fit_eps(hops, r["answer_correct"], r["n"], ok, n, ref, level)
            curve = cmp.compounding_curve(ref_acc, e.eps, hops)
            a["eps"] = e.to_dict()
            a["eq7_curve"] = curve.tolist()
            a["eq7_inside_ci"] = ((curve >= lo) & (curve <= hi)).tolist()
        a["finding"] = _finding(a, ref)
        out["settings"][name] = a
    return out


def _divergence(rec, chains, ref_chains, hops, level: float) -> dict[str, Any]:
    """Paired with the reference on the same problems: how often a hop leaves the reference's
    chain, and who was right where they part.

    ``identical``: chains equal to the reference's at each k; ``per_hop``: the fitted per-hop
    divergence rate delta in identical(k) = (1 - delta)^k, with its interval and fit;
    ``flips``: at each first parting, reference right / setting right / both wrong
    (:func:`qtsim.trust.tasks.flip_outcomes`), with McNemar's exact test of "no extra error"
    (the two one-sided flips equally likely)."""
    same, hist, n = [], [], []
    flips = {"ref_right": 0, "pred_right": 0, "both_wrong": 0, "at_risk": 0}
    task = rec["task"]
    for k, c, rc in zip(hops, chains, ref_chains, strict=True):
        pred, ref = tasks.decode_chains(c), tasks.decode_chains(rc)
        first = tasks.first_divergence(pred, ref)
        same.append(int((first == k).sum()))
        hist.append(np.bincount(first, minlength=k + 1).tolist())
        n.append(len(first))
        flips["at_risk"] += int(np.minimum(first + 1, k).sum())  # hops decoded while paired
        probs = tasks.problems(len(first), k, task["n_nodes"], seed=task.get("seed", 0),
                               split=task.get("split", "test"))
        for key, v in tasks.flip_outcomes(pred, ref, probs).items():
            if key in flips:
                flips[key] += v
    fit = cmp.fit_hop_reliability(hops, same, n, level)
    flips.update(_paired_eps(flips["ref_right"], flips["pred_right"], flips["at_risk"], level))
    return {"identical": same, "n": n,
            "per_hop": {"delta": 1 - fit.reliability, "low": 1 - fit.high, "high": 1 - fit.low,
                        "p_value": fit.p_value},
            "position": cmp.hop_position_reliability(hist, level), "flips": flips}


def _paired_eps(ref_right: int, pred_right: int, at_risk: int, level: float) -> dict:
    """Extra error per hop from the paired flips: (ref right - setting right) / hops decoded
    while the chains agreed, with McNemar's exact test and an interval from the exact
    (Clopper-Pearson) interval of the share of one-sided flips that went against the setting."""
    from scipy import stats

    m = ref_right + pred_right
    if m == 0 or at_risk == 0:
        return {"mcnemar_p": 1.0, "eps_paired": 0.0, "eps_paired_low": 0.0,
                "eps_paired_high": 0.0}
    lo, hi = cmp.binomial_ci(ref_right, m, level)
    return {"mcnemar_p": float(stats.binomtest(ref_right, m).pvalue),
            "eps_paired": (ref_right - pred_right) / at_risk,
            "eps_paired_low": float((2 * lo - 1) * m / at_risk),
            "eps_paired_high": float((2 * hi - 1) * m / at_risk)}


def _batch(check: dict, level: float) -> dict[str, Any]:
    """Theorem 4.5: accuracy per batch size with intervals; equal within the intervals?"""
    if not check:
        return {}
    rows = {}
    for b, c in check.items():
        lo, hi = cmp.binomial_ci(c["answer_correct"], c["n"], level)
        rows[b] = {"n": c["n"], "correct": c["answer_correct"],
                   "accuracy": c["answer_correct"] / c["n"], "ci_low": float(lo),
                   "ci_high": float(hi), "identical_chains": c.get("identical_chains")}
    first = next(iter(rows.values()))
    equal = all(cmp.intervals_overlap((first["ci_low"], first["ci_high"]),
                                      (v["ci_low"], v["ci_high"])) for v in rows.values())
    return {"batches": rows, "equal_within_intervals": bool(equal)}


def _finding(a: dict, ref: str) -> str:
    """One line: does this setting's extra error compound per hop, at what rate?"""
    fit = a["hop_reliability"]
    p = fit["p_value"]
    shape = (f"accuracy does NOT follow r^k (goodness of fit p = {p:.2g})" if p < GOF_ALPHA
             else f"accuracy consistent with r^k (goodness of fit p = {p:.2g})")
    if "eps" not in a:
        return f"reference; per-hop reliability {fit['reliability']:.4f}; {shape}"
    e = a["eps"]
    rate = f"eps {e['eps'] * 100:+.2f}%/hop [{e['low'] * 100:+.2f}, {e['high'] * 100:+.2f}]"
    if e["low"] > 0:
        verdict = f"extra error compounds per hop vs {ref}"
    elif e["high"] < 0:
        verdict = f"more reliable per hop than {ref}"
    else:
        verdict = f"no extra per-hop error measurable vs {ref}"
    return f"{verdict}: {rate}; {shape}"


# ---- text, CSV, JSON -----------------------------------------------------------------------
def _pct(x) -> str:
    return f"{100 * x:5.1f}"


def _ci(x) -> str:
    """An interval end in %, one decimal, '100' and '0' without."""
    t = f"{100 * x:.1f}"
    return t[:-2] if t.endswith(".0") else t


def format_text(rec: dict, an: dict) -> str:
    """The probe as a person reads it: one block per setting, then the batch check."""
    hops = next(iter(an["settings"].values()))["hops"]
    lines = [
        f"trust probe: {rec['model']} ({rec['checkpoint'].get('n_params') or '?'} parameters), "
        f"pointer chasing over {rec['task']['n_nodes']} nodes, k = 1..{max(hops)} hops, "
        f"{rec['n_per_hop']} problems per k, greedy chain of thought, batch {rec['batch']}",
        f"  measured on {rec['environment']['cpu']} ({rec['environment']['threads']} thread(s)), "
        + ", ".join(f"{k} {v}" for k, v in rec["environment"]["versions"].items() if v),
        f"  accuracy = final answer x_k right, % [{int(an['level'] * 100)}% Clopper-Pearson]; "
        f"eps: per-hop extra error vs {an['reference']} (eq. 7: T = T_ref (1 - eps)^k)",
        "",
        "  setting   " + "".join(f"{'k=' + str(k):>12}" for k in hops) + "   r per hop [95%]",
    ]
    for name, a in an["settings"].items():
        f = a["hop_reliability"]
        lines.append(f"  {name:<9} " + "".join(f"{_pct(x):>12}" for x in a["accuracy"])
                     + f"   {f['reliability']:.4f} [{f['low']:.4f}, {f['high']:.4f}]")
        lines.append("  " + " " * 9 + " " + "".join(
            f"{'[' + _ci(lo) + ',' + _ci(hi) + ']':>12}"
            for lo, hi in zip(a["ci_low"], a["ci_high"], strict=True)))
    lines += ["", *_finding_lines(an, hops), "", *_batch_lines(rec, an)]
    lines.append("")
    lines.append(f"  a {params_text(rec)}-parameter model trained here on a synthetic task: it "
                 "tests the compounding claim itself, not any LLM's accuracy "
                 "(docs/trust-probe.md)")
    return "\n".join(lines)


def _finding_lines(an: dict, hops) -> list[str]:
    """Per setting: the finding, the paired comparison, eq. 7's curve, LLM.int8()'s outliers."""
    lines = []
    for name, a in an["settings"].items():
        lines.append(f"  {name:<9} {a['finding']}")
        if "divergence" in a:
            d = a["divergence"]
            dd = d["per_hop"]
            lines.append(f"  {'':<9} paired with {an['reference']} on the same problems: a hop "
                         f"leaves its chain at {100 * dd['delta']:.3f}%/hop "
                         f"[{100 * dd['low']:.3f}, {100 * dd['high']:.3f}] (fit p = "
                         f"{dd['p_value']:.2g}); chains identical at k={hops[-1]}: "
                         f"{d['identical'][-1]}/{d['n'][-1]}")
            f = d["flips"]
            lines.append(f"  {'':<9} where they part: {an['reference']} right {f['ref_right']}, "
                         f"{name} right {f['pred_right']}, both wrong {f['both_wrong']} "
                         f"(McNemar p = {f['mcnemar_p']:.2g}): paired eps "
                         f"{100 * f['eps_paired']:+.3f}%/hop [{100 * f['eps_paired_low']:+.3f}, "
                         f"{100 * f['eps_paired_high']:+.3f}] over {f['at_risk']} paired hops")
        if "eq7_curve" in a:
            inside = sum(a["eq7_inside_ci"])
            lines.append(f"  {'':<9} eq. 7 curve T_ref(k) (1 - eps)^k inside the measured "
                         f"interval at {inside}/{len(hops)} depths")
        if a.get("outlier_column_share") is not None:
            lines.append(f"  {'':<9} input columns with |x| >= 6 (kept in fp16 at threshold 6): "
                         f"{100 * a['outlier_column_share']:.1f}%")
    return lines


def _batch_lines(rec: dict, an: dict) -> list[str]:
    """Theorem 4.5: accuracy at each batch size with intervals, and identical chains."""
    chk = rec.get("check", {})
    lines = [f"  Theorem 4.5 (accuracy invariant to batch): the same {chk.get('problems')} "
             f"problems of k = {chk.get('hops')} hops decoded at batch "
             + " and ".join(str(b) for b in chk.get("batches", []))]
    for name, a in an["settings"].items():
        b = a["batch_check"]
        if not b:
            continue
        parts = [f"b{k} {_pct(v['accuracy']).strip()}% [{100 * v['ci_low']:.0f}, "
                 f"{100 * v['ci_high']:.0f}]" for k, v in b["batches"].items()]
        last = list(b["batches"].values())[-1]
        lines.append(f"  {name:<9} " + "  ".join(parts)
                     + f"  {'equal' if b['equal_within_intervals'] else 'DIFFERENT'} within "
                     f"intervals; identical chains {last['identical_chains']}/{last['n']}")
    return lines


def table_rows(an: dict) -> list[dict[str, Any]]:
    """One row per (setting, k): the ``--format csv`` table."""
    rows = []
    for name, a in an["settings"].items():
        for i, k in enumerate(a["hops"]):
            rows.append({"setting": name, "hops": k, "n": a["n"][i], "correct": a["correct"][i],
                         "accuracy": a["accuracy"][i], "ci_low": a["ci_low"][i],
                         "ci_high": a["ci_high"][i], "chain_accuracy": a["chain_accuracy"][i],
                         "eq7_curve": a["eq7_curve"][i] if "eq7_curve" in a else "",
                         "eq7_inside_ci": int(a["eq7_inside_ci"][i]) if "eq7_curve" in a else ""})
    return rows


def trust_rows(rec: dict, an: dict) -> list[dict[str, Any]]:
    """The ``--trust`` table: one ``measured`` accuracy row per (setting, k), depth = k.

    ``precision`` is the setting's kernel-path family (``int8``, ``int8_t0``, ``nf4``,
    ``nf4dq``, ``fp16``, ...): :func:`qtsim.model.trust.lookup_trust` takes the family's rows
    first, the row at the depth asked for (else the deepest), T_SI against fp16 at that depth.
    """
    env = rec["environment"]
    src = (f"qtsim trust probe of {rec['model']} (weights sha256 "
           f"{rec['checkpoint']['weights_sha256'][:12]}) on {env['cpu']}, bitsandbytes "
           f"{env['versions'].get('bitsandbytes')}")
    rows = []
    for name, a in an["settings"].items():
        for i, k in enumerate(a["hops"]):
            rows.append({"model": rec["model"], "task": TASK, "precision": name,
                         "accuracy": round(a["accuracy"][i], 6), "kind": "accuracy",
                         "depth": k, "source": src, "status": "measured",
                         "note": f"{a['description']}; {a['correct'][i]}/{a['n'][i]} right, "
                                 f"95% CI [{a['ci_low'][i]:.3f}, {a['ci_high'][i]:.3f}]",
                         "n": a["n"][i], "correct": a["correct"][i],
                         "ci_low": round(a["ci_low"][i], 6), "ci_high": round(a["ci_high"][i], 6)})
    return rows


def csv_text(rows: list[dict], columns) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_outputs(rec: dict, an: dict, out_dir, plot: bool = True) -> dict[str, str]:
    """``probe.json``, ``trust.csv`` (the ``--trust`` table), ``table.csv`` and
    ``accuracy_vs_hops.png`` under ``out_dir``; returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"record": out / "probe.json", "trust_csv": out / "trust.csv",
             "table_csv": out / "table.csv"}
    paths["record"].write_text(json.dumps(rec, indent=1) + "\n")  # chains: one string per k
    paths["trust_csv"].write_text(csv_text(trust_rows(rec, an), TRUST_COLUMNS))
    paths["table_csv"].write_text(csv_text(table_rows(an), TABLE_COLUMNS))
    if plot:
        paths["plot"] = out / "accuracy_vs_hops.png"
        save(plot_accuracy_vs_hops(rec, an), paths["plot"])
    return {k: str(v) for k, v in paths.items()}


def render(rec: dict, an: dict, fmt: str = "text") -> str:
    """The report as ``fmt``: text, json (record + analysis) or csv (:data:`TABLE_COLUMNS`)."""
    if fmt == "json":
        return json.dumps({"record": rec, "analysis": an}, indent=1)
    if fmt == "csv":
        return csv_text(table_rows(an), TABLE_COLUMNS).rstrip("\n")
    return format_text(rec, an)
