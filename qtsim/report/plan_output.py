"""``qtsim plan``'s answer as a person reads it (text), as data (JSON, CSV) and as a figure
(cost against energy per configuration, the feasible frontier marked), and the command's run
(:func:`plan_answer`: load, plan, format, plot). The planning itself is :mod:`qtsim.report.plan`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence

import numpy as np

from qtsim.model.architecture import load_architecture
from qtsim.report import serving
from qtsim.report.compare import gpu_prices, load_gpus
from qtsim.report.grid import NoBar
from qtsim.report.plan import (
    OBJECTIVES,
    Plan,
    PlanRequest,
    Targets,
    assumptions_dict,
    parse_demand,
    parse_settings,
    plan,
    query_dict,
)
from qtsim.report.plots import DISCLAIMER, PRECISION_COLORS, _footnote, save

#: CSV columns after the query's: one row per GPU x setting (its best batch)
CSV_ROW = ("rank", "gpu", "setting", "precision", "quantized", "feasible", "batch",
           "replicas", "replicas_low", "replicas_high", "usd_per_month", "usd_per_month_low",
           "usd_per_month_high", "kwh_per_month", "kwh_per_month_low", "kwh_per_month_high",
           "tco2e_per_month", "tco2e_per_month_low", "tco2e_per_month_high",
           "time_per_query_s", "time_per_query_p_s", "step_s", "step_p_s", "latency_s",
           "host_s", "device_s", "binding", "headroom", "utilisation", "j_per_query",
           "avg_power_w", "peak_memory_gib", "device_memory_gib", "usd_per_hour",
           "profile_source", "best_for", "reason")


#: the serving arithmetic in one CSV cell (the full statement: JSON ``serving.arithmetic``)
SERVING_FORMULAS = ("HF generate, static batches: replicas = ceil(demand x peak factor / (B / "
                    "latency)); time per query = (B - 1) x replicas / demand + latency; kWh = "
                    "(queries x J/query + idle replica-s x idle W) x PUE / 3.6e6; $ = replicas x "
                    "$/GPU-hour x 730.5 h; continuous batching and multi-GPU sharding out of scope")


# ---- text -------------------------------------------------------------------------------------
def _n(x, money=False) -> str:
    if x is None:
        return "-"
    if money:
        return f"${x:,.0f}" if x >= 100 else f"${x:.3g}"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _banded(r: dict, key: str, money=False) -> str:
    """'4,383 [2,192, 4,383]' (with a $ before the central value when ``money``)."""
    return f"{_n(r[key], money)} [{_n(r[key + '_low'])}, {_n(r[key + '_high'])}]"


def _pct(v) -> str:
    """A share as a percentage; '<1%' for a positive share that rounds to 0."""
    return "-" if v is None else ("<1%" if 0 <= v < 0.005 else f"{v:.0%}")


def _latency(r: dict, t: Targets) -> str:
    """'time per query 21.3 s (p84; headroom 65%), step 71 ms (p84; headroom 11%)'."""
    pct = f"p{t.percentile:g}"
    h = r["headroom_by_target"]
    tq = f"time per query {r['time_per_query_p_s']:.3g} s ({pct}"
    tq += f"; headroom {_pct(h['time_per_query'])})" if "time_per_query" in h else ")"
    st = f"step {r['step_p_s'] * 1e3:.3g} ms ({pct}"
    st += f"; headroom {_pct(h['step'])})" if "step" in h else ")"
    return f"{tq}, {st}, {r['binding']}"


def describe_row(r: dict, t: Targets) -> str:
    """One configuration in a sentence: replicas x GPU setting at batch, money, energy, time."""
    money = f"{_banded(r, 'usd_per_month', True)}/month, " if r["usd_per_month"] is not None else ""
    co2 = (f", {r['tco2e_per_month']:.3g} tCO2e/month" if r["tco2e_per_month"] is not None
           else "")
    return (f"{r['replicas']} [{r['replicas_low']}, {r['replicas_high']}] x {r['gpu']} "
            f"{r['setting']} at batch {r['batch']}: {money}"
            f"{_banded(r, 'kwh_per_month')} kWh/month{co2}; {_latency(r, t)}")


def trap_line(tr: dict) -> str:
    """The trap test on one GPU in a line: its best quantized plan against its best 16-bit plan,
    energy and cost per month as ratios with their 68% bands and verdicts."""
    q, n = tr["quantized"], tr["native"]

    def plan_(r):
        return f"{r['replicas']} x {r['setting']} at batch {r['batch']}"

    if tr["verdict"] != "compared":
        head = f"quantized {plan_(q)}: " if q else ""
        return f"{tr['gpu']}: {head}{tr['verdict']}"
    parts = []
    for key, what in (("kwh_per_month", "energy"), ("usd_per_month", "cost")):
        if key in tr:
            x = tr[key]
            parts.append(f"{what} {x['ratio']:.2f}x [{x['low']:.2f}, {x['high']:.2f}] "
                         f"{x['verdict']}")
    return (f"{tr['gpu']}: quantized {plan_(q)} vs 16-bit {plan_(n)}: {', '.join(parts)}")


def _best_lines(p: Plan) -> list[str]:
    out = []
    for o, r in p.best.items():
        label = OBJECTIVES[o][1]
        if o == "co2" and "kwh" in p.best and _same(r, p.best["kwh"]):
            out.append(f"best for {label}: the same as for kWh/month (one grid intensity for "
                       "every GPU)")
            continue
        out.append(f"best for {label}: {describe_row(r, p.request.targets)}")
    return out


def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("gpu", "setting", "batch"))


def _table(p: Plan, top: int) -> list[str]:
    """The ranked rows (feasible ones, at most ``top``) as an aligned table."""
    pct = f"p{p.request.targets.percentile:g}"
    cols = [("#", None), ("gpu", "gpu"), ("setting", "setting"), ("batch", "batch"),
            ("replicas", "replicas")]
    if p.prices:
        cols.append(("$/month", "usd_per_month"))
    cols += [("kWh/month", "kwh_per_month")]
    if p.request.assumptions.grid_gco2_per_kwh is not None:
        cols.append(("tCO2e/month", "tco2e_per_month"))
    cols += [(f"s/query {pct}", "time_per_query_p_s"), (f"step ms {pct}", "step_p_s"),
             ("headroom", "headroom"), ("busy", "utilisation"), ("GiB", "peak_memory_gib")]

    def cell(i, r, key):
        v = r.get(key) if key else i + 1
        if key in ("replicas", "usd_per_month", "kwh_per_month", "tco2e_per_month"):
            return _banded(r, key)
        if key == "step_p_s":
            return f"{v * 1e3:.3g}"
        if key in ("headroom", "utilisation"):
            return _pct(v)
        if key == "peak_memory_gib":
            return f"{v:.1f}"
        return v if isinstance(v, str) else (_n(v) if isinstance(v, float) else str(v))

    good = [r for r in p.rows if r["feasible"]][:top]
    body = [[str(cell(i, r, k)) for _, k in cols] for i, r in enumerate(good)]
    heads = [h for h, _ in cols]
    widths = [max(len(h), *(len(b[j]) for b in body)) for j, h in enumerate(heads)]
    left = {"gpu", "setting"}

    def line(cells):
        return "  ".join(c.ljust(w) if k in left else c.rjust(w)
                         for (_, k), c, w in zip(cols, cells, widths, strict=True)).rstrip()

    return [line(heads), line(["-" * w for w in widths])] + [line(b) for b in body]


def format_text(p: Plan, top: int = 15) -> str:
    """The answer: the question, the best plan per objective, the trap test for the plan, the
    ranked table, what is not feasible and why, and every assumption."""
    r, q = p.request, query_dict(p)
    n_ok = sum(1 for x in p.rows if x["feasible"])
    out = [f"PLAN for {r.arch.name} ({r.arch.n_params / 1e9:.3g}B params): "
           f"{r.demand.describe()}; {r.prompt_tokens}-token prompts, {r.new_tokens} new tokens",
           f"  targets: {r.targets.describe()}; searched {len(p.grids)} GPU x "
           f"{len(r.settings)} settings x batches {q['batches']['min']}-{q['batches']['max']}; "
           f"minimize {OBJECTIVES[p.objective][1]}"]
    out += [f"  {x}" for x in _best_lines(p)]
    out.append(f"  trap for the plan: {trap_line(p.trap)}")
    out.append(f"ranked: each GPU x setting at its best batch, {min(n_ok, top)} of {n_ok} "
               f"feasible shown (--top), sorted by {OBJECTIVES[p.objective][1]}; "
               "[a, b] = 68% band")
    out += _table(p, top)
    bad = [x for x in p.rows if not x["feasible"]]
    if bad:
        out.append(f"not feasible ({len(bad)}):")
        out += [f"  {x['reason']}" for x in bad]
    out.append("trap per GPU (its best quantized plan vs its best 16-bit plan, per month; "
               "'likely' = fewer than 84% of draws agree):")
    out += [f"  {trap_line(g.trap)}" for g in p.grids]
    out.append(f"assumptions: {describe_assumptions(p)}")
    out.append(serving.static_batching_statement(r.demand.peak_factor, r.targets.percentile))
    out += p.serving_model
    out.append("every figure is a prediction from hardware profiles (spec-derived ones carry "
               "wide priors), not a measurement; bands: 16th-84th percentiles over "
               f"{r.n_draws} Monte-Carlo draws of each profile's constants and the model's own "
               "error")
    return "\n".join(out)


def describe_assumptions(p: Plan) -> str:
    text = p.request.assumptions.describe()
    if p.prices:
        vals = set(p.prices.values())
        price = (f"${vals.pop():g}/GPU-hour" if len(vals) == 1 else "$/GPU-hour " + ", ".join(
            f"{g} {v:g}" for g, v in p.prices.items()))
        text = text.replace("no GPU price given (--usd-per-hour)",
                            f"{price}, paid for every hour of the month (730.5 h)")
    return text.replace(", busy the whole hour", ", paid for every hour of the month (730.5 h)")


# ---- CSV ----------------------------------------------------------------------------------------
def csv_text(p: Plan) -> str:
    """One row per GPU x setting (its best batch; infeasible ones with their reason), the query
    and the assumptions repeated in every row so files stack."""
    q, a = query_dict(p), assumptions_dict(p)
    head = {"model": q["model"], "queries_per_s": q["demand"]["queries_per_s"],
            "peak_factor": q["demand"]["peak_factor"], "prompt_tokens": q["prompt_tokens"],
            "new_tokens": q["new_tokens"], "max_step_s": q["targets"]["step_s"],
            "max_time_per_query_s": q["targets"]["time_per_query_s"],
            "percentile": q["targets"]["percentile"], "pue": a["pue"],
            "grid_gco2_per_kwh": a["grid_gco2_per_kwh"], "minimize": p.objective,
            "serving": SERVING_FORMULAS}
    best = {}
    for o, r in p.best.items():
        best.setdefault((r["gpu"], r["setting"], r["batch"]), []).append(o)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*head, *CSV_ROW])
    for i, r in enumerate(p.rows):
        vals = {**r, "rank": i + 1 if r["feasible"] else None,
                "best_for": "+".join(best.get((r["gpu"], r["setting"], r.get("batch")), []))}
        w.writerow([_csv(v) for v in head.values()] + [_csv(vals.get(k)) for k in CSV_ROW])
    return buf.getvalue().rstrip("\n")


def _csv(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# ---- the figure ---------------------------------------------------------------------------------
#: marker per bitsandbytes modifier of a setting (its colour is the precision's)
SETTING_MARKERS = {"+dq": "s", " t=0": "^"}
#: ranked rows numbered in the close-up (and kept in it when within ZOOM_MAX of the frontier)
ZOOM_ROWS = 6
#: the close-up reaches this many times the frontier's largest energy and cost, at least ...
ZOOM = 3.0
#: ... and at most this many, to hold the best ranked rows
ZOOM_MAX = 10.0
MAX_LABELS = 8


def _style(setting: str) -> tuple[str, str]:
    """(colour, marker) of a setting: the precision's colour, the modifier's marker."""
    base = setting.split("+")[0].split(" ")[0]
    rest = setting[len(base):]
    marker = next((m for k, m in SETTING_MARKERS.items() if k in rest), "D" if rest else "o")
    return PRECISION_COLORS.get(base, "0.5"), marker


def plot_plan(p: Plan):
    """Cost per month against energy per month, two panels: every feasible configuration
    (log axes; small points every batch, large ones each GPU x setting at its best batch), and
    a close-up of the cheapest corner (linear axes) with the frontier (no configuration both
    cheaper and less energy-hungry) joined and labelled, the best ranked rows numbered as in
    the table, and the best plan per objective starred."""
    from matplotlib.figure import Figure

    pts = p.points()
    box = _zoom_box(p, pts)
    inside = ((pts["kwh"] >= box[0]) & (pts["kwh"] <= box[1]) & (pts["cost"] >= box[2])
              & (pts["cost"] <= box[3]))
    if inside.all():  # the close-up would show everything: one panel
        fig = Figure(figsize=(10, 6.4), layout="constrained")
        zoom, over = fig.subplots(), None
    else:
        fig = Figure(figsize=(13, 6.4), layout="constrained")
        over, zoom = fig.subplots(1, 2, width_ratios=(1, 1.25))
    for ax, close in ((over, False), (zoom, True)):
        if ax is None:
            continue
        _points(ax, p, pts, box if close else None)
        _frontier(ax, p, pts, labels=close)
        _stars(ax, p, labels=close)
        ax.set_xlabel("energy per month, kWh (GPU boards x PUE, idle replicas included)")
        ax.set_ylabel("GPU cost per month, USD" if p.prices else "GPUs (replicas; no --usd-per-hour)")
        ax.grid(which="both", color="0.92")
        ax.set_axisbelow(True)
    if over is not None:
        _scales(over, pts)
        over.add_patch(_rect(box))
        over.set_title("every feasible configuration", fontsize=10)
        zoom.set_title("close-up of the cheapest corner (grey box); numbers = rank in the table",
                       fontsize=10)
    else:
        zoom.set_title("every feasible configuration; numbers = rank in the table", fontsize=10)
    zoom.set(xlim=box[:2], ylim=box[2:])
    r = p.request
    fig.suptitle(f"{r.arch.name}: {r.demand.queries_per_s:.3g} queries/s (peak x"
                 f"{r.demand.peak_factor:g}), {r.prompt_tokens}-token prompts, {r.new_tokens} new "
                 f"tokens; targets: {r.targets.short()}", fontsize=10.5)
    zoom.yaxis.set_major_formatter("{x:,.0f}")
    if not p.prices:  # replicas are whole GPUs: ticks on integers (a formatter alone repeats them)
        from matplotlib.ticker import MaxNLocator

        zoom.yaxis.set_major_locator(MaxNLocator(integer=True))
    zoom.legend(handles=_handles(p), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                frameon=False, title="setting", title_fontsize=8)
    n_bad = sum(1 for x in p.rows if not x["feasible"])
    _footnote(fig, f"{DISCLAIMER} (HF transformers generate, static batches). Small points: every "
              "feasible batch; large: each GPU x setting at its best batch"
              + (f"; {n_bad} GPU x setting with no feasible batch not shown" if n_bad else "")
              + ". Frontier labels: GPU, setting, batch B, replicas.")
    return fig


def _handles(p: Plan) -> list:
    """Legend entries: each setting (saying so when no GPU has a feasible batch of it), the
    frontier and the stars."""
    from matplotlib.lines import Line2D

    ok = {r["setting"] for r in p.rows if r["feasible"]}
    out = [Line2D([], [], ls="", marker=_style(x.label)[1], color=_style(x.label)[0],
                  label=x.label + ("" if x.label in ok else " (none feasible)"))
           for x in p.request.settings]
    return out + [Line2D([], [], color="0.1", ls="--", marker="o", mfc="none", label="frontier"),
                  Line2D([], [], ls="", marker="*", color="gold", mec="0.1", ms=12,
                         label="best per objective")]


def _cost_key(p: Plan) -> str:
    return "usd_per_month" if p.prices else "replicas"


def _points(ax, p: Plan, pts, box=None) -> None:
    """Every feasible batch (small) and each GPU x setting at its best batch (large); with a
    close-up ``box`` the best :data:`ZOOM_ROWS` rows are numbered by rank, rows that overlap
    sharing one label ("1, 2")."""
    for x in p.request.settings:
        m = np.array([s == x.label for s in pts["setting"]])
        c, mk = _style(x.label)
        ax.scatter(pts["kwh"][m], pts["cost"][m], s=7, color=c, marker=mk, alpha=0.25, lw=0)
    ck = _cost_key(p)
    good = [r for r in p.rows if r["feasible"]]
    for r in good:
        c, mk = _style(r["setting"])
        ax.scatter(r["kwh_per_month"], r[ck], s=46, color=c, marker=mk, edgecolor="0.15",
                   lw=0.6, zorder=3)
    if box is None:
        return
    tol_x, tol_y = 0.02 * (box[1] - box[0]), 0.02 * (box[3] - box[2])
    spots: list[list] = []  # [x, y, ranks]
    for k, r in enumerate(good[:ZOOM_ROWS]):
        x, y = r["kwh_per_month"], r[ck]
        near = next((sp for sp in spots if abs(sp[0] - x) < tol_x and abs(sp[1] - y) < tol_y),
                    None)
        if near:
            near[2].append(k + 1)
        else:
            spots.append([x, y, [k + 1]])
    for x, y, ranks in spots:
        ax.annotate(", ".join(map(str, ranks)), (x, y), xytext=(-5, 5),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8,
                    color="0.25", zorder=3, clip_on=True)


def _zoom_box(p: Plan, pts) -> tuple[float, float, float, float]:
    """(x0, x1, y0, y1) of the close-up: the frontier to :data:`ZOOM` times its largest energy
    and cost, widened to hold the best :data:`ZOOM_ROWS` ranked rows that lie within
    :data:`ZOOM_MAX` times it, padded."""
    f = pts["frontier"]
    xs, ys = pts["kwh"][f], pts["cost"][f]
    ck = _cost_key(p)
    near = [(r["kwh_per_month"], r[ck]) for r in p.rows[:ZOOM_ROWS] if r["feasible"]
            and r["kwh_per_month"] <= ZOOM_MAX * xs.max() and r[ck] <= ZOOM_MAX * ys.max()]
    x1 = max([ZOOM * xs.max()] + [1.1 * x for x, _ in near])
    y1 = max([ZOOM * ys.max()] + [1.1 * y for _, y in near])
    pad_x, pad_y = 0.06 * (x1 - xs.min()), 0.06 * (y1 - ys.min())
    return (max(xs.min() - pad_x, 0.0), x1, max(ys.min() - pad_y, 0.0), y1)


def _rect(box):
    from matplotlib.patches import Rectangle

    x0, x1, y0, y1 = box
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="0.45", lw=1.0, zorder=5)


def _scales(ax, pts) -> None:
    """Log axes where the points span more than a factor of 20."""
    for vals, setter in ((pts["kwh"], ax.set_xscale), (pts["cost"], ax.set_yscale)):
        v = np.asarray(vals)[np.asarray(vals) > 0]
        if v.size and v.max() / v.min() > 20:
            setter("log")


def _frontier(ax, p: Plan, pts, labels: bool) -> None:
    """The frontier joined in cost order, its points circled and (at most MAX_LABELS, when
    ``labels``) labelled with GPU, setting, batch and replicas."""
    f = np.flatnonzero(pts["frontier"])
    f = f[np.argsort(pts["cost"][f])]
    ax.plot(pts["kwh"][f], pts["cost"][f], ls="--", color="0.1", lw=0.9, zorder=4)
    ax.scatter(pts["kwh"][f], pts["cost"][f], s=80, facecolor="none", edgecolor="0.1", lw=0.9,
               zorder=4)
    if not labels:
        return
    show = f if f.size <= MAX_LABELS else f[np.unique(np.linspace(0, f.size - 1,
                                                                  MAX_LABELS).round().astype(int))]
    unit = "" if p.prices else " GPUs"
    grids = {g.profile.name: g for g in p.grids}
    names = [x.label for x in p.request.settings]
    for k, i in enumerate(show):
        g, s = grids[pts["gpu"][i]], names.index(pts["setting"][i])
        reps = int(g.fig["replicas"][s, p.request.batches.index(pts["batch"][i])])
        ax.annotate(f"{pts['gpu'][i]} {pts['setting'][i]} B={pts['batch'][i]} x{reps}{unit}",
                    (pts["kwh"][i], pts["cost"][i]), xytext=(9, -4 if k % 2 else -13),
                    textcoords="offset points", fontsize=8, color="0.1", zorder=5)


def _stars(ax, p: Plan, labels: bool) -> None:
    """The best configuration per objective, starred (and named by objective when ``labels``)."""
    ck, seen = _cost_key(p), {}
    for o, r in p.best.items():
        seen.setdefault((r["gpu"], r["setting"], r["batch"]), (r, []))[1].append(o)
    for r, objs in seen.values():
        ax.scatter(r["kwh_per_month"], r[ck], s=230, marker="*", color="gold", edgecolor="0.1",
                   lw=0.7, zorder=6)
        if labels:
            ax.annotate("best " + ", ".join(OBJECTIVES[o][1].split("/")[0] for o in objs),
                        (r["kwh_per_month"], r[ck]), xytext=(7, 9), textcoords="offset points",
                        ha="left", va="bottom", fontsize=8, weight="bold", zorder=6)


# ---- the command --------------------------------------------------------------------------------
def plan_answer(model: str, gpus: Sequence[str], profile_paths: Sequence[str], demand: str,
                settings: str, req_options: dict, prices=None, host=None, fmt: str = "text",
                plot_path: str | None = None, top: int = 15,
                progress_bar: Callable | None = None) -> tuple[str, str | None]:
    """``qtsim plan``: load the GPUs (names, ``["all"]``, then ``profile_paths``) and ``model``,
    parse ``demand`` (:func:`qtsim.report.plan.parse_demand`, with ``req_options``'
    ``peak_factor``) and ``settings``, plan, and format as ``fmt``; ``req_options`` holds the
    other :class:`PlanRequest` fields. Returns (the answer, the figure written or None).
    """
    opts = dict(req_options)
    d = parse_demand(demand, opts.pop("peak_factor", 1.0))
    req = PlanRequest(load_architecture(model), d, settings=tuple(parse_settings(settings)),
                      **opts)
    profiles = load_gpus(gpus, profile_paths)
    by_gpu = gpu_prices(prices, profiles)
    req.validate(by_gpu)  # refuse what cannot be planned before loading more
    with (progress_bar or NoBar)(len(profiles)) as bar:
        result = plan(profiles, req, by_gpu, host, progress=bar.update)
    text = (json.dumps(result.to_dict(), indent=2) if fmt == "json" else
            csv_text(result) if fmt == "csv" else format_text(result, top))
    written = None
    if plot_path:
        written = save(plot_plan(result), plot_path)
    return text, written

