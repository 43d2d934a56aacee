"""Figures of qtsim's surfaces (matplotlib, headless: no pyplot, no display).

Each function takes computed data (:func:`qtsim.simulate.surface.trap_map`, a surface
Dataset of :mod:`qtsim.simulate.dataset`) and returns a :class:`matplotlib.figure.Figure`;
:func:`save` writes it. Figures are built with ``Figure()`` directly and saved through the Agg
canvas, so nothing depends on a display or on pyplot's global state.

- :func:`plot_trap_maps`: model size x batch, shaded where quantized J/query > native, with the
  B*(N) and N*(B) boundaries and the band where 16-84% of Monte-Carlo draws disagree;
- :func:`plot_fig1_panel`: the paper's Fig. 1 layout: tok/s, J/query, T_SI, E_SI, S_SI and SI per
  precision per GPU;
- :func:`plot_cor_vs_batch`: COR (eq. 8/9) against batch per precision (the paper's Fig. 4B).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from qtsim.errors import QtsimError
from qtsim.simulate.dataset import trust_status

PRECISION_COLORS = {"fp16": "#4c72b0", "bf16": "#64b5cd", "int8": "#dd8452", "nf4": "#55a868",
                    "fp4": "#8172b3"}
GPU_STYLES = ("-", "--", ":", "-.")
DISCLAIMER = "predictions from hardware profiles, not measurements"
NO_FIT_COLOR = "#c8c8c8"  # configurations that do not fit in device memory: no verdict


def _figure(nrows: int, ncols: int, width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _footnote(fig, text: str) -> None:
    """A grey footer under the axes, wrapped to the figure's width so no edge clips it."""
    width_in, height_in = fig.get_size_inches()
    lines = textwrap.wrap(text, max(40, int(width_in * 15)))  # about 15 characters per inch at 8 pt
    frac = (0.05 + 0.15 * len(lines)) / height_in  # 8 pt lines are about 0.15 inch apart
    fig.get_layout_engine().set(rect=(0, frac, 1, 1 - frac))
    fig.text(0.5, 0.01 / height_in, "\n".join(lines), ha="center", va="bottom", fontsize=8,
             color="0.35", linespacing=1.3)


def _legend(fig, handles, fontsize=8, col_in: float = 2.9) -> None:
    """A legend above the axes with as many columns as the figure's width holds."""
    width_in = fig.get_size_inches()[0]
    ncols = max(1, min(len(handles), int(width_in // col_in)))
    fig.legend(handles=handles, loc="outside upper center", ncols=ncols, fontsize=fontsize,
               frameon=False)


def _label_tiers(xs, min_gap: float) -> list[int]:
    """Stack labels at x positions (log10 units) into tiers so neighbours closer than
    ``min_gap`` do not overlap: tier k of each label, in the order given."""
    order = np.argsort(xs)
    tiers = [0] * len(xs)
    last: dict[int, float] = {}
    for i in order:
        k = 0
        while k in last and xs[i] - last[k] < min_gap:
            k += 1
        tiers[i] = k
        last[k] = xs[i]
    return tiers


def _params_fmt(x, _pos=None) -> str:
    if x >= 1e9:
        return f"{x / 1e9:g}B"
    return f"{x / 1e6:g}M"


def save(fig, path, dpi: int = 130) -> str:
    """Write ``fig`` (PNG, PDF or SVG by suffix) and return the path."""
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
    fits = np.asarray(m.get("fits", np.ones_like(m["trapped"])), bool)
    # 0 not trapped, 1 trapped, 2 the quantized model itself does not fit: no verdict there
    cls = np.where(fits, np.asarray(m["trapped"], float), 2.0)
    ax.pcolormesh(sx, by, cls, shading="nearest", vmin=0, vmax=2,
                  cmap=ListedColormap(["#e3f1e3", "#f3aaa4", NO_FIT_COLOR]), rasterized=True)
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
    # boundaries only where a model runs: B*(N) where size N fits at that batch, N*(B) where
    # the model of size N* fits at batch B
    bn = np.where(np.isin(m["b_star_kind"], (0, 1)), m["b_star_of_n"], np.nan)
    bn = np.where(_fits_at(fits, b, bn, axis=1), bn, np.nan)
    ax.plot(s, bn, color="k", lw=1.8)
    nb = np.where(np.isin(m["n_star_kind"], (0, 1)), m["n_star_of_b"], np.nan)
    nb = np.where(_fits_at(fits.T, s, nb, axis=1), nb, np.nan)
    ax.plot(nb, b, color="#1f3fbf", lw=1.6, ls="--", marker="o", ms=2.5)
    shown = [(name, n) for name, n in marks if s.min() <= n <= s.max()]
    span = np.log10(s.max() / s.min())
    tiers = _label_tiers([np.log10(n) for _, n in shown], 0.045 * span)  # a label is ~4% wide
    for (name, n_params), tier in zip(shown, tiers, strict=True):
        ax.axvline(n_params, color="0.2", lw=0.6, ls=":")
        ax.text(n_params, 0.03 + 0.3 * (tier % 3), name, rotation=90, va="bottom", ha="center",
                fontsize=7, color="0.1", transform=ax.get_xaxis_transform(),
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


def _fits_at(fits, grid, values, axis: int = 1) -> np.ndarray:
    """Whether each row of ``fits`` (rows x ``grid``) fits at ``values`` (one per row, on
    ``grid``'s scale; NaN: False), read at the nearest grid point at or below it."""
    v = np.asarray(values, float)
    idx = np.clip(np.searchsorted(grid, np.where(np.isfinite(v), v, grid[0]), side="right") - 1,
                  0, len(grid) - 1)
    return np.isfinite(v) & np.take_along_axis(fits, idx[:, None], axis=axis)[:, 0]


def plot_trap_maps(maps, ncols: int | None = None, marks=()):
    """Trap maps (from :func:`qtsim.simulate.surface.trap_map`) on a grid, one panel per map.

    ``marks``: (name, parameters) pairs drawn as dotted verticals (e.g. shipped models).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    maps = list(maps)
    ncols = ncols or min(len(maps), 2)
    nrows = -(-len(maps) // ncols)
    fig, axes = _figure(nrows, ncols, max(5.2 * ncols, 7.0), 4.1 * nrows + 1.3)
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
    if any((~np.asarray(m.get("fits", True), bool)).any() for m in maps):
        handles.append(Patch(facecolor=NO_FIT_COLOR, label="quantized does not fit: no verdict"))
    if any((~np.asarray(m["native_fits"], bool)).any() for m in maps):
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch="//",
                             label="native 16-bit does not fit"))
    _legend(fig, handles, 8)
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


def _fig1_bars(surface, name: str, model: str, batch, native=None):
    """[(precision, values (gpu,), low or None, high or None)] for one Fig.-1 quantity: the
    native 16-bit reference first (from ``native``, a surface of the native precision, when
    ``surface`` lacks it), then the surface's precisions."""
    def cols(surf):
        def at(var):
            return surf[var].sel(model=model, batch=batch).values if var in surf else None

        vals, lo, hi = at(name), at(f"{name}_low"), at(f"{name}_high")
        return [(p, vals[:, k], None if lo is None else lo[:, k], None if hi is None else hi[:, k])
                for k, p in enumerate(surf["precision"].values.tolist())]

    bars = cols(surface)
    have = set(surface["precision"].values.tolist())
    if native is not None and model in native["model"].values.tolist():
        bars = [b for b in cols(native) if b[0] not in have] + bars
    return bars


def _fig1_legend(fig, precs) -> None:
    """Precision colours and the HLI tick, above the panels."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PRECISION_COLORS.get(p, "0.5"), label=p.upper()) for p in precs]
    handles.append(Line2D([], [], marker="_", ls="none", color="k", markersize=14, mew=2,
                          label="J/query by the paper's HLI (TDP x latency)"))
    _legend(fig, handles, 9, col_in=2.2)


def _fig1_bar_group(ax, xs, w, p: str, vals, lo_v, hi_v, fits) -> tuple[bool, bool, bool]:
    """One precision's bars at ``xs`` (one per GPU), with their 16-84% error bars; no bar where
    the configuration does not fit, or (NaN) has no 16-bit run to compare with, but a note.
    Returns (any error bar, any gap, any bar drawn)."""
    vals = np.where(np.asarray(fits, bool), vals, np.nan)  # trust too: nothing that cannot run
    err = None
    if lo_v is not None:
        err = np.abs(np.vstack([vals - lo_v, hi_v - vals]))
        err = np.where(np.isfinite(err), err, 0.0)
    ax.bar(xs, vals, w * 0.92, color=PRECISION_COLORS.get(p, "0.5"), yerr=err,
           capsize=2, error_kw={"lw": 0.8, "ecolor": "0.2"}, label=p.upper())
    for x_, v_, f_ in zip(xs, vals, fits, strict=True):
        if not np.isfinite(v_):
            ax.text(x_, 0.02, "does not fit" if not f_ else "no 16-bit run", rotation=90,
                    ha="center", va="bottom", fontsize=7, color="0.35", style="italic",
                    transform=ax.get_xaxis_transform())
    return (err is not None and bool(np.any(err > 0)), bool(np.any(~np.isfinite(vals))),
            bool(np.any(np.isfinite(vals))))


def plot_fig1_panel(surface, model: str, batch=None, native=None):
    """The paper's Fig. 1 for one model: six panels of grouped bars (GPU groups, precision bars).

    J/query bars are the power model; black ticks mark the paper's HLI (TDP x latency) for the
    same configuration. Error bars are 16-84% over draws when the surface has them. The native
    16-bit bars are the comparison the figure exists for: when ``surface`` has no native
    precision, pass ``native``, a surface of the same GPUs and model at the native precision.
    """
    c = {d: surface[d].values.tolist() for d in ("gpu", "batch")}
    batch = c["batch"][0] if batch is None else batch
    gpus = c["gpu"]
    fig, axes = _figure(2, 3, max(12.5, 1.1 * len(gpus) + 6), 7.8)
    x = np.arange(len(gpus))
    precs: list[str] = []
    any_band = no_fit = False
    rotate = sum(len(g) for g in gpus) > 40  # long or many names: slant them
    for ax, (name, ylabel, title) in zip(axes.flat, FIG1_PANELS, strict=True):
        bars = _fig1_bars(surface, name, model, batch, native)
        hli_bars = dict((p, v) for p, v, _, _ in _fig1_bars(surface, "j_per_query_hli", model,
                                                             batch, native))
        fit = {p: v for p, v, *_ in _fig1_bars(surface, "fits", model, batch, native)}
        precs = [p for p, *_ in bars]
        w = 0.8 / len(bars)
        drawn = False
        for k, (p, vals, lo_v, hi_v) in enumerate(bars):
            xs = x + (k - (len(bars) - 1) / 2) * w
            band, gap, shown = _fig1_bar_group(ax, xs, w, p, vals, lo_v, hi_v, fit[p])
            any_band, no_fit, drawn = any_band or band, no_fit or gap, drawn or shown
            if name == "j_per_query":
                ax.scatter(xs, hli_bars[p], marker="_", s=220, color="k", lw=2, zorder=3)
        if name in ("t_si", "e_si", "s_si", "si"):
            ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        if rotate:
            ax.set_xticks(x, gpus, fontsize=8, rotation=30, ha="right", rotation_mode="anchor")
        else:
            ax.set_xticks(x, gpus, fontsize=9)
        ax.set_xlim(-0.5, len(gpus) - 0.5)  # every GPU's slot, bars or not
        if not drawn:
            ax.set_ylim(0, 1.2)  # nothing runs here: an axis from 0, not a zoom on nothing
        ax.set(xlabel="GPU", ylabel=ylabel)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.12)
    _fig1_legend(fig, precs)
    t = {}
    for surf in ([native] if native is not None else []) + [surface]:
        t.update({p: st for (p, m), st in trust_status(surf).items() if m == model})
    trust = ", ".join(f"{p.upper()} {t[p]}" for p in precs if p in t)
    a = surface.attrs
    bands = ("error bars: 16-84% of Monte-Carlo draws" if any_band else "no uncertainty bands "
             "(run with --draws N for them)")
    fit_text = ("no bar where the configuration does not fit in device memory ('does not "
                "fit'), nor a pillar where its 16-bit reference does not ('no 16-bit run'); "
                if no_fit else "")
    _footnote(fig, f"{model}, batch {batch:g}, K = {a['new_tokens']} new tokens; trust: {trust}; "
                   f"S_SI and SI from the power model; {bands}; {fit_text}{DISCLAIMER}")
    return fig


# ---- (c) COR vs batch -------------------------------------------------------------------------
def plot_cor_vs_batch(surface, models=None):
    """COR (eq. 8/9, from decode step times) against batch: one panel per model, a line per
    precision (colour) and GPU (line style), 16-84% bands when the surface has draws."""
    from matplotlib.lines import Line2D

    c = {d: surface[d].values.tolist()
         for d in ("gpu", "precision", "bits", "model", "synthetic", "batch")}
    models = list(models or [m for m, syn in zip(c["model"], c["synthetic"], strict=True) if not syn]
                  or c["model"][:1])
    precs = [p for p, bits in zip(c["precision"], c["bits"], strict=True) if bits < 16]
    b = np.asarray(c["batch"], float)
    ncols = min(len(models), 3)
    nrows = -(-len(models) // ncols)
    fig, axes = _figure(nrows, ncols, max(5.0 * ncols, 7.0), 3.9 * nrows + 1.3)
    bands = "cor_low" in surface
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    for ax, model in zip(axes.flat, models, strict=False):
        drawn = False
        for gi, gpu in enumerate(c["gpu"]):
            for p in precs:
                def cor(var, gpu=gpu, p=p, model=model):
                    return surface[var].sel(gpu=gpu, precision=p, model=model).values

                y = cor("cor")  # NaN where it or its 16-bit reference does not fit: a gap
                col = PRECISION_COLORS.get(p, "0.5")
                ax.plot(b, y, color=col, ls=GPU_STYLES[gi % len(GPU_STYLES)], marker="o", ms=3)
                drawn = drawn or bool(np.isfinite(y).any())
                if bands:
                    ax.fill_between(b, cor("cor_low"), cor("cor_high"), color=col, alpha=0.15,
                                    lw=0)
        if not drawn:
            ax.text(0.5, 0.5, "does not fit in memory at any batch shown\n(quantized or 16-bit)",
                    ha="center", va="center", fontsize=9, color="0.3", style="italic",
                    transform=ax.transAxes)
        ax.axhline(1.0, color="#c03030", lw=1, ls="--")
        ax.axhline(0.0, color="0.4", lw=0.7)
        ax.text(0.01, 0.99, "above the red line (COR = 1): casting dominates", va="top",
                ha="left", fontsize=7, color="#c03030", transform=ax.transAxes,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.set_xscale("log", base=2)
        ax.set_xlim(b.min() / 1.15, b.max() * 1.15)
        ax.xaxis.set_major_formatter(lambda v, _p: f"{v:g}")
        ax.set_xlabel("batch size B (sequences)")
        ax.set_ylabel("COR = tau_p / tau_ref - 1 (eq. 9)")
        ax.set_title(model if len(c["gpu"]) > 1 else f"{model} on {c['gpu'][0]}", fontsize=10)
    handles = [Line2D([], [], color=PRECISION_COLORS.get(p, "0.5"), lw=2, label=p.upper())
               for p in precs]
    if len(c["gpu"]) > 1:
        handles += [Line2D([], [], color="0.2", ls=GPU_STYLES[i % len(GPU_STYLES)], label=g)
                    for i, g in enumerate(c["gpu"])]
    _legend(fig, handles, 9, col_in=1.6)
    gpus = ", ".join(c["gpu"])
    band_text = ("shaded: 16-84% of Monte-Carlo draws" if bands
                 else "no uncertainty bands (run with --draws N for them)")
    _footnote(fig, f"{gpus}; K = {surface.attrs['new_tokens']} new tokens; {band_text}; "
                   "no point where the quantized or the 16-bit model does not fit in memory; "
                   f"{DISCLAIMER}")
    return fig
