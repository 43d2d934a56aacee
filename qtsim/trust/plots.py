"""Figure of the trust probe (matplotlib, headless; built like :mod:`qtsim.report.plots`).

:func:`plot_accuracy_vs_hops`, three panels against hop count k, one colour per setting:

1. accuracy (final answer right) with 95% Clopper-Pearson intervals, and dashed eq. 7's curve
   T_ref(k) (1 - eps)^k with eps fitted over all k;
2. T_SI(k) = acc_p(k) / acc_ref(k) with Katz intervals (unpaired, so conservative: every
   setting decodes the same problems) and dashed (1 - eps)^k;
3. chains identical to the reference's on the same problems, with dashed (1 - delta)^k: how
   often quantization moves a hop at all, right or wrong.
"""

from __future__ import annotations

import numpy as np

from qtsim.report.plots import PRECISION_COLORS, _figure, _footnote, _legend
from qtsim.trust.compounding import binomial_ci, ratio_ci

COLORS = {**PRECISION_COLORS, "fp32": "#222222", "int8_t0": "#c44e52", "nf4dq": "#8c8c3a"}
MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^", "int8_t0": "v", "nf4": "P",
           "nf4dq": "X"}


def _points(ax, x, y, lo, hi, name, **kw):
    return ax.errorbar(x, y, yerr=[y - lo, hi - y], color=COLORS.get(name), ms=5, capsize=2,
                       marker=MARKERS.get(name, "o"), **kw)


def plot_accuracy_vs_hops(rec: dict, an: dict):
    """Accuracy, T_SI and agreement with the reference against hops, per setting."""
    fig, axes = _figure(1, 3, 16.0, 5.2)
    ax_acc, ax_ratio, ax_same = axes[0]
    ref = an["reference"]
    r = an["settings"][ref]
    names = list(an["settings"])
    width = 0.5 / max(1, len(names))
    handles = []
    for i, name in enumerate(names):
        a = an["settings"][name]
        hops = np.asarray(a["hops"], float)
        k = hops + (i - (len(names) - 1) / 2) * width
        acc = 100 * np.asarray(a["accuracy"])
        handles.append(_points(ax_acc, k, acc, 100 * np.asarray(a["ci_low"]),
                               100 * np.asarray(a["ci_high"]), name, lw=1.2,
                               label=_label(name, a["description"], ref)))
        if "eps" not in a:
            continue
        c = COLORS.get(name)
        ax_acc.plot(hops, 100 * np.asarray(a["eq7_curve"]), ":", color=c, lw=1.4)
        ratio, lo, hi = ratio_ci(a["correct"], a["n"], r["correct"], r["n"])
        _points(ax_ratio, k, ratio, lo, hi, name, lw=0, elinewidth=1)
        kk = np.linspace(0, hops.max(), 50)
        ax_ratio.plot(kk, (1 - a["eps"]["eps"]) ** kk, "--", color=c, lw=1.2)
        if "divergence" in a:
            d = a["divergence"]
            same = np.asarray(d["identical"], float) / np.asarray(d["n"], float)
            lo, hi = binomial_ci(d["identical"], d["n"])
            _points(ax_same, k, 100 * same, 100 * lo, 100 * hi, name, lw=0, elinewidth=1)
            ax_same.plot(kk, 100 * (1 - d["per_hop"]["delta"]) ** kk, "--", color=c, lw=1.2)
    xt = r["hops"]
    ax_acc.set(xlabel="hops k (pointer lookups chained; one generated token each)",
               ylabel="accuracy: final answer right (%)", xticks=xt,
               title=f"Accuracy ({rec['n_per_hop']} problems per k, 95% CI)\n"
                     f"dotted: eq. 7, T_{ref}(k) (1 - eps)^k")
    ax_ratio.axhline(1.0, color="0.5", lw=0.8)
    ax_ratio.set(xlabel="hops k", ylabel=f"T_SI(k) = acc(k) / acc_{ref}(k)", xticks=xt,
                 title=f"Trust ratio vs {ref} (unpaired 95% CI)\ndashed: (1 - eps)^k, eps fitted")
    ax_same.set(xlabel="hops k", ylabel=f"chains identical to {ref}'s (%)", xticks=xt,
                title=f"Same problems, paired with {ref}\ndashed: (1 - delta)^k, delta fitted")
    for ax in (ax_acc, ax_ratio, ax_same):
        ax.grid(alpha=0.3)
    _legend(fig, handles, fontsize=8, col_in=2.7)
    _footnote(fig, f"{rec['model']} ({params_text(rec)} parameters, trained here on pointer "
                   f"chasing over {rec['task']['n_nodes']} nodes), bitsandbytes "
                   f"{rec['environment']['versions'].get('bitsandbytes')} on "
                   f"{rec['environment']['cpu']}; measured, greedy decoding. A small model on a "
                   "synthetic task: it tests whether quantization error compounds per hop, not "
                   "any LLM's accuracy.")
    return fig


def _label(name: str, description: str, ref: str) -> str:
    text = name if description.split(" (")[0] == name else f"{name}: {description}"
    return text + (" (eps reference)" if name == ref else "")


def params_text(rec: dict) -> str:
    """The probe model's size from its record, e.g. '3.1M' ('?' if not recorded)."""
    n = rec["checkpoint"].get("n_params")
    return f"{n / 1e6:.1f}M" if n else "?"
