"""Figures of qtsim's surfaces (matplotlib, headless: no pyplot, no display).

Each function takes computed data (:func:`qtsim.surface.trap_map`, a
:class:`qtsim.surface.Surface`) and returns a :class:`matplotlib.figure.Figure`; :func:`save`
writes it. Figures are built with ``Figure()`` directly and saved through the Agg canvas, so
nothing depends on a display or on pyplot's global state.

- :func:`plot_trap_maps`: model size x batch, shaded where quantized J/query > native, with the
  B*(N) and N*(B) boundaries and the band where 16-84% of Monte-Carlo draws disagree;
- :func:`plot_fig1_panel`: the paper's Fig. 1 layout: tok/s, J/query, T_SI, E_SI, S_SI and SI per
  precision per GPU;
- :func:`plot_cor_vs_batch`: COR (eq. 8/9) against batch per precision (the paper's Fig. 4B).
"""

from __future__ import annotations

import numpy as np

PRECISION_COLORS = {"fp16": "#4c72b0", "bf16": "#64b5cd", "int8": "#dd8452", "nf4": "#55a868",
                    "fp4": "#8172b3"}
GPU_STYLES = ("-", "--", ":", "-.")
DISCLAIMER = "predictions from hardware profiles, not measurements"


def _figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _footnote(fig, text: str) -> None:
    fig.get_layout_engine().set(rect=(0, 0.035, 1, 0.965))
    fig.text(0.5, 0.004, text, ha="center", va="bottom", fontsize=8, color="0.35")


def _params_fmt(x, _pos=None) -> str:
    if x >= 1e9:
        return f"{x / 1e9:g}B"
    return f"{x / 1e6:g}M"


def save(fig, path, dpi: int = 130) -> str:
    """Write ``fig`` (PNG, PDF or SVG by suffix) and return the path."""
    from pathlib import Path

    from qtsim.errors import QtsimError

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p, dpi=dpi)
    except OSError as e:
        raise QtsimError(f"{p}: cannot write figure ({e})") from None
    return str(p)


# ---- (a) trap map -----------------------------------------------------------------------------
def _trap_map_axes(ax, m: dict, marks=()) -> None:
    import matplotlib as mpl
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import FuncFormatter

    s, b = m["sizes"], m["batches"]
    sx, by = np.meshgrid(s, b, indexing="ij")
    trapped = np.asarray(m["trapped"], float)
    ax.pcolormesh(sx, by, trapped, shading="nearest", vmin=0, vmax=1,
                  cmap=ListedColormap(["#e3f1e3", "#f3aaa4"]), rasterized=True)
    with mpl.rc_context({"hatch.color": "0.45", "hatch.linewidth": 0.6}):
        if m.get("p_trapped") is not None:
            p = np.asarray(m["p_trapped"])
            unsure = ((p > 0.16) & (p < 0.84)).astype(float)
            if unsure.any():
                ax.contourf(sx, by, unsure, levels=[0.5, 1.5], colors="none", hatches=[".."])
                ax.contour(sx, by, unsure, levels=[0.5], colors="0.5", linewidths=0.6)
        nofit = (~np.asarray(m["native_fits"], bool)).astype(float)
        if nofit.any():
            ax.contourf(sx, by, nofit, levels=[0.5, 1.5], colors="none", hatches=["//"])
            ax.contour(sx, by, nofit, levels=[0.5], colors="0.25", linewidths=0.8)
    bn = np.where(np.isin(m["b_star_kind"], (0, 1)), m["b_star_of_n"], np.nan)
    ax.plot(s, bn, color="k", lw=1.8)
    nb = np.where(np.isin(m["n_star_kind"], (0, 1)), m["n_star_of_b"], np.nan)
    ax.plot(nb, b, color="#1f3fbf", lw=1.6, ls="--", marker="o", ms=2.5)
    for name, n_params in marks:
        if s.min() <= n_params <= s.max():
            ax.axvline(n_params, color="0.2", lw=0.6, ls=":")
            ax.text(n_params, b.min() * 1.5, name, rotation=90, va="bottom", ha="center",
                    fontsize=7, color="0.1",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    ax.set_xscale("log")
    ax.set_yscale("log", base=2)
    ax.set_xlim(s.min(), s.max())
    ax.set_ylim(b.min(), b.max())
    ax.xaxis.set_major_formatter(FuncFormatter(_params_fmt))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _p: f"{y:g}"))
    ax.set_xlabel("model size N (parameters)")
    ax.set_ylabel("batch size B (sequences)")
    ax.set_title(f"{m['gpu']}: {m['precision'].upper()} vs FP16 ({m['family']} family)",
                 fontsize=10)


def plot_trap_maps(maps, ncols: int | None = None, marks=()):
    """Trap maps (from :func:`qtsim.surface.trap_map`) on a grid, one panel per map.

    ``marks``: (name, parameters) pairs drawn as dotted verticals (e.g. shipped models).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    maps = list(maps)
    ncols = ncols or min(len(maps), 2)
    nrows = -(-len(maps) // ncols)
    fig, axes = _figure(nrows, ncols, 5.2 * ncols, 4.1 * nrows + 0.9)
    for ax, m in zip(axes.flat, maps, strict=False):
        _trap_map_axes(ax, m, marks)
    for ax in list(axes.flat)[len(maps):]:
        ax.set_visible(False)
    handles = [
        Patch(facecolor="#f3aaa4", label="trapped: quantized J/query > native"),
        Patch(facecolor="#e3f1e3", label="not trapped"),
        Line2D([], [], color="k", lw=1.8, label="B*(N): crossing along batch"),
        Line2D([], [], color="#1f3fbf", lw=1.6, ls="--", marker="o", ms=2.5, label="N*(B): crossing along size"),
    ]
    if any(m.get("p_trapped") is not None for m in maps):
        handles.append(Patch(facecolor="white", edgecolor="0.45", hatch="..",
                             label="uncertain: 16-84% of draws trapped"))
    if any((~np.asarray(m["native_fits"], bool)).any() for m in maps):
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//",
                             label="native 16-bit does not fit"))
    fig.legend(handles=handles, loc="outside upper center", ncols=3, fontsize=8, frameon=False)
    m0 = maps[0]
    draws = f"{m0['n_draws']} Monte-Carlo draws" if m0.get("p_trapped") is not None else "no draws"
    _footnote(fig, f"energy per query from the integrated power model, K = {m0['new_tokens']} new "
                   f"tokens, {m0['prompt_tokens']}-token prompt; {draws}; {DISCLAIMER}")
    return fig


def plot_trap_map(m: dict, marks=()):
    """One trap map (see :func:`plot_trap_maps`)."""
    return plot_trap_maps([m], 1, marks)


# ---- (b) Fig.-1-style panel ----------------------------------------------------------------------
FIG1_PANELS = (
    ("tok_per_s", "throughput (tokens/s)", "throughput"),
    ("j_per_query", "energy per query (J)", "energy per query"),
    ("t_si", "T_SI (trust, eq. 2)", "trust pillar"),
    ("e_si", "E_SI (economy, eq. 3)", "economic pillar"),
    ("s_si", "S_SI (energy, E_ref/E)", "energy pillar"),
    ("si", "SI (eq. 6)", "Sustainability Index"),
)


def plot_fig1_panel(surface, model: str, batch=None):
    """The paper's Fig. 1 for one model: six panels of grouped bars (GPU groups, precision bars).

    J/query bars are the power model; black ticks mark the paper's HLI (TDP x latency) for the
    same configuration. Error bars are 16-84% over draws when the surface has them.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    c = surface.coords
    batch = c["batch"][0] if batch is None else batch
    gpus, precs = c["gpu"], c["precision"]
    fig, axes = _figure(2, 3, 12.5, 7.4)
    x = np.arange(len(gpus))
    w = 0.8 / len(precs)
    for ax, (name, ylabel, title) in zip(axes.flat, FIG1_PANELS, strict=True):
        vals = surface.sel(name, model=model, batch=batch)  # (gpu, precision)
        lo = surface.data.get(f"{name}_low")
        for k, p in enumerate(precs):
            xs = x + (k - (len(precs) - 1) / 2) * w
            err = None
            if lo is not None:
                lo_v = surface.sel(f"{name}_low", model=model, batch=batch)[:, k]
                hi_v = surface.sel(f"{name}_high", model=model, batch=batch)[:, k]
                err = np.abs(np.vstack([vals[:, k] - lo_v, hi_v - vals[:, k]]))
                err = np.where(np.isfinite(err), err, 0.0)
            ax.bar(xs, vals[:, k], w * 0.92, color=PRECISION_COLORS.get(p, "0.5"), yerr=err,
                   capsize=2, error_kw={"lw": 0.8, "ecolor": "0.2"}, label=p.upper())
            if name == "j_per_query":
                hli = surface.sel("j_per_query_hli", model=model, batch=batch)[:, k]
                ax.scatter(xs, hli, marker="_", s=220, color="k", lw=2, zorder=3)
        if name in ("t_si", "e_si", "s_si", "si"):
            ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.set_xticks(x, gpus, fontsize=9)
        ax.set_xlabel("GPU")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.12)
    handles = [Patch(facecolor=PRECISION_COLORS.get(p, "0.5"), label=p.upper()) for p in precs]
    handles.append(Line2D([], [], marker="_", ls="none", color="k", markersize=14, mew=2,
                          label="J/query by the paper's HLI (TDP x latency)"))
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False,
               fontsize=9)
    t = {e["precision"]: e["status"] for e in surface.trust if e["model"] == model}
    trust = ", ".join(f"{p.upper()} {t[p]}" for p in precs if p in t)
    a = surface.attrs
    _footnote(fig, f"{model}, batch {batch:g}, K = {a['new_tokens']} new tokens; trust: {trust}; "
                   f"S_SI and SI from the power model; {DISCLAIMER}")
    return fig


# ---- (c) COR vs batch -------------------------------------------------------------------------
def plot_cor_vs_batch(surface, models=None):
    """COR (eq. 8/9, from decode step times) against batch: one panel per model, a line per
    precision (colour) and GPU (line style), 16-84% bands when the surface has draws."""
    from matplotlib.lines import Line2D

    c = surface.coords
    models = list(models or [m for m, syn in zip(c["model"], c["synthetic"], strict=True) if not syn]
                  or c["model"][:1])
    precs = [p for p, bits in zip(c["precision"], c["bits"], strict=True) if bits < 16]
    b = np.asarray(c["batch"], float)
    fig, axes = _figure(1, len(models), 5.0 * len(models), 4.2)
    for ax, model in zip(axes.flat, models, strict=True):
        for gi, gpu in enumerate(c["gpu"]):
            for p in precs:
                y = surface.sel("cor", gpu=gpu, precision=p, model=model)
                col = PRECISION_COLORS.get(p, "0.5")
                ax.plot(b, y, color=col, ls=GPU_STYLES[gi % len(GPU_STYLES)], marker="o", ms=3)
                if "cor_low" in surface.data:
                    ax.fill_between(b, surface.sel("cor_low", gpu=gpu, precision=p, model=model),
                                    surface.sel("cor_high", gpu=gpu, precision=p, model=model),
                                    color=col, alpha=0.15, lw=0)
        ax.axhline(1.0, color="#c03030", lw=1, ls="--")
        ax.axhline(0.0, color="0.4", lw=0.7)
        ax.text(b.min(), 1.0, " COR = 1: casting dominance above", va="bottom", fontsize=7,
                color="#c03030")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(lambda v, _p: f"{v:g}")
        ax.set_xlabel("batch size B (sequences)")
        ax.set_ylabel("COR = tau_p / tau_ref - 1 (eq. 9)")
        ax.set_title(model if len(c["gpu"]) > 1 else f"{model} on {c['gpu'][0]}", fontsize=10)
    handles = [Line2D([], [], color=PRECISION_COLORS.get(p, "0.5"), lw=2, label=p.upper())
               for p in precs]
    if len(c["gpu"]) > 1:
        handles += [Line2D([], [], color="0.2", ls=GPU_STYLES[i % len(GPU_STYLES)], label=g)
                    for i, g in enumerate(c["gpu"])]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False,
               fontsize=9)
    gpus = ", ".join(c["gpu"])
    _footnote(fig, f"{gpus}; K = {surface.attrs['new_tokens']} new tokens; bands 16-84% of draws "
                   f"where computed; {DISCLAIMER}")
    return fig
