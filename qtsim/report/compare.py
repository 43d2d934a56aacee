"""``qtsim compare``: one model at one batch across GPUs x precisions, side by side.

:func:`compare` evaluates every (GPU, precision) configuration with the simulator: whether it fits
in memory, tok/s, latency, J/query with its 68% band, the budget units (kWh per million queries,
gCO2e per query, $ per million tokens: :mod:`qtsim.report.budget`), and the energy verdict against the
16-bit reference on the same GPU (as ``qtsim trap`` gives it). Rows sort by any column; text,
JSON, CSV and a plot (:func:`plot_compare`) come from the same rows.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qtsim.errors import QtsimError
from qtsim.model import verdicts
from qtsim.model.architecture import Architecture, load_architecture
from qtsim.model.precision import get_precision
from qtsim.model.stats import GIB, band
from qtsim.model.workload import BnbSettings, Workload
from qtsim.profiles.hardware import list_profiles, load_profile, profile_notes
from qtsim.profiles.profile import HardwareProfile
from qtsim.report import budget
from qtsim.report.plots import DISCLAIMER, PRECISION_COLORS, save
from qtsim.report.serving import bnb_version, serving_assumption
from qtsim.simulate.simulator import Simulator

#: column -> (header, unit, format, True when smaller is better: the default sort direction)
COLUMNS = {
    "gpu": ("gpu", "", "{}", True),
    "precision": ("precision", "", "{}", True),
    "fits": ("fits", "", "{}", False),
    "peak_memory_gib": ("mem GiB", "GiB", "{:.1f}", True),
    "tok_per_s": ("tok/s", "tokens/s", "{:.3g}", False),
    "latency_s": ("latency s", "s", "{:.3g}", True),
    "j_per_query": ("J/query", "J", "{:.3g}", True),
    "avg_power_w": ("avg W", "W", "{:.3g}", True),
    "awake_frac": ("awake %", "%", "{:.0%}", True),
    "kwh_per_million_queries": ("kWh/M q", "kWh", "{:.3g}", True),
    "gco2e_per_query": ("gCO2e/q", "gCO2e", "{:.3g}", True),
    "usd_per_million_tokens": ("$/M tok", "USD", "{:.3g}", True),
    "energy_ratio": ("E vs 16-bit", "1", "{:.2f}x", True),
    "verdict": ("verdict", "", "{}", True),
}
DEFAULT_SORT = "j_per_query"
#: axis labels for plotted columns, in words
LONG_NAMES = {
    "peak_memory_gib": "peak memory (GiB)", "tok_per_s": "generated tokens per second (batch)",
    "latency_s": "latency of one batch of queries (s)", "j_per_query": "energy per query (J)",
    "kwh_per_million_queries": "kWh per million queries",
    "gco2e_per_query": "gCO2e per query", "usd_per_million_tokens": "USD per million tokens",
    "energy_ratio": "energy per query / same GPU's 16-bit",
    "avg_power_w": "average board power over the query (W)",
    "awake_frac": "share of the decode step the GPU waits for the host at awake power",
}


@dataclass
class Comparison:
    """Rows (one per GPU x precision) plus what they assume."""

    rows: list[dict]
    query: dict
    assumptions: budget.BudgetAssumptions
    bnb: BnbSettings
    serving: list[str] = field(default_factory=list)
    sort: str = DEFAULT_SORT
    usd_per_hour_by_gpu: dict | None = None
    origins: list[str] = field(default_factory=list)  # profiles not shipped: where they came from

    def columns(self) -> list[str]:
        """Columns worth showing: budget columns only where their assumption was given."""
        skip = set()
        if self.assumptions.grid_gco2_per_kwh is None:
            skip.add("gco2e_per_query")
        if self.assumptions.usd_per_hour is None and not self.usd_per_hour_by_gpu:
            skip.add("usd_per_million_tokens")
        return [c for c in COLUMNS if c not in skip]

    def describe_assumptions(self) -> str:
        text = self.assumptions.describe()
        if self.usd_per_hour_by_gpu:
            text = text.replace("no GPU price given (--usd-per-hour)", "$/GPU-hour " + ", ".join(
                f"{g} {v:g}" for g, v in self.usd_per_hour_by_gpu.items()) + ", busy the whole hour")
        return text

    def to_dict(self) -> dict:
        a = self.assumptions.to_dict()
        if self.usd_per_hour_by_gpu:
            a["usd_per_hour"] = dict(self.usd_per_hour_by_gpu)
        return {"query": self.query,
                "bitsandbytes": {p: self.bnb.bnb_config(p) for p in self.query["precisions"]},
                "assumptions": a, "sort": self.sort,
                "units": {c: COLUMNS[c][1] for c in COLUMNS if COLUMNS[c][1]},
                "rows": self.rows, "serving": self.serving, "profile_origins": self.origins,
                "note": "predictions from hardware profiles, not measurements; bands are 16-84% "
                        "over Monte-Carlo draws of each profile's constants"}


def compare(profiles: Sequence[HardwareProfile], arch: Architecture,
            workload: Workload | None = None,
            precisions: Sequence[str] = ("fp16", "int8", "nf4"),
            assumptions: budget.BudgetAssumptions | None = None, sort: str = DEFAULT_SORT,
            n_draws: int = 200, seed: int = 0,
            usd_per_hour_by_gpu: dict | None = None, host=None,
            bnb_release: str | None = None) -> Comparison:
    """Every GPU x precision for ``arch`` at ``workload``'s batch; rows sorted by ``sort``.

    ``workload``: the batch, tokens and bitsandbytes settings every precision runs with (its
    precision is replaced by each of ``precisions``); default batch 1 and
    :class:`~qtsim.model.workload.Workload`'s defaults. ``usd_per_hour_by_gpu`` (GPU name ->
    USD per GPU-hour) prices each GPU on its own, in place of ``assumptions.usd_per_hour``;
    ``host`` the host/software part (:mod:`qtsim.profiles.hosts`) combined with every device
    profile (None: each profile's own or the default); ``bnb_release`` the bitsandbytes
    release (:mod:`qtsim.model.stack`; None: each profile's recorded one, else the current).

    The verdict of a quantized row compares it with the GPU's own 16-bit reference at the same
    batch: "trapped" / "not trapped" (or "likely ... (uncertain)" when fewer than 84% of draws
    agree), "only option" when the 16-bit model does not fit but this one does, "does not fit".
    """
    workload = workload or Workload()
    precs = _check_compare(profiles, workload, precisions, sort)
    assumptions = assumptions or budget.BudgetAssumptions()
    if usd_per_hour_by_gpu:
        missing = [p.name for p in profiles if p.name not in usd_per_hour_by_gpu]
        if missing:
            raise QtsimError(f"no GPU price for {', '.join(missing)}")
        assumptions = dataclasses.replace(assumptions, usd_per_hour=None)
    counts = arch.counts()

    rows, serving = [], []
    origins = [f"profile {p.name}: {n}" for p in profiles for n in profile_notes(p)]
    for prof in profiles:
        workload.bnb.check(precs, prof)
        sim = Simulator(prof, n_draws=n_draws, seed=seed, host=host, bnb_version=bnb_release)
        serving.append(serving_assumption(sim.profile))  # with its host part
        price = (dataclasses.replace(assumptions, usd_per_hour=usd_per_hour_by_gpu[prof.name])
                 if usd_per_hour_by_gpu else assumptions)
        native = workload.replace(precision=prof.native)  # every precision's reference, once
        nat = (sim.evaluate(counts, native), sim.evaluate(counts, native, draws=True))
        rows += [_row(sim, counts, workload.replace(precision=p), nat, price) for p in precs]
    assumptions = dataclasses.replace(assumptions, scope=_scope(rows))
    query = {"model": arch.name, "model_params": arch.n_params, "batch": int(workload.batch),
             "new_tokens": int(workload.new_tokens), "prompt_tokens": int(workload.prompt_tokens),
             "precisions": precs, "gpus": [p.name for p in profiles]}
    serving = list(dict.fromkeys(serving))
    return Comparison(sort_rows(rows, sort), query, assumptions, workload.bnb, serving, sort,
                      dict(usd_per_hour_by_gpu) if usd_per_hour_by_gpu else None, origins)


def compare_text(model: str, gpus: Sequence[str], profile_paths: Sequence[str],
                 workload: Workload, precisions: Sequence[str], sort: str = DEFAULT_SORT,
                 assumptions: budget.BudgetAssumptions | None = None, prices=None,
                 n_draws: int = 200, host=None, fmt: str = "text",
                 plot_path: str | None = None,
                 bnb_release: str | None = None) -> tuple[str, str | None]:
    """``qtsim compare``: load the GPUs (names, ``["all"]`` for every visible profile, then
    ``profile_paths``) and ``model``, compare, and format as ``fmt`` (text, json or csv).

    ``prices``: None, one USD per GPU-hour for every GPU, or one per GPU in order. Returns
    (the formatted comparison, the plot written to ``plot_path`` or None): the plot shows the
    sort column, or J/query when that column is not numeric.
    """
    if sort not in COLUMNS:
        raise QtsimError(f"--sort {sort!r}: choose from {', '.join(COLUMNS)}")
    assumptions = assumptions or budget.BudgetAssumptions()
    profiles = load_gpus(gpus, profile_paths)
    arch = load_architecture(model)
    by_gpu = gpu_prices(prices, profiles)
    if prices and len(prices) == 1:
        assumptions = dataclasses.replace(assumptions, usd_per_hour=prices[0])
        by_gpu = None
    result = compare(profiles, arch, workload, precisions, assumptions, sort, n_draws=n_draws,
                     usd_per_hour_by_gpu=by_gpu, host=host, bnb_release=bnb_release)
    text = (json.dumps(result.to_dict(), indent=2) if fmt == "json" else
            csv_text(result) if fmt == "csv" else format_text(result))
    written = None
    if plot_path:
        col = sort if COLUMNS[sort][2] != "{}" and sort != "fits" else "j_per_query"
        written = save(plot_compare(result, col), plot_path)
    return text, written


def load_gpus(gpus: Sequence[str], profile_paths: Sequence[str] = ()) -> list[HardwareProfile]:
    """The profiles of ``gpus`` (names or aliases, or ``["all"]``: every visible profile, the
    user's included), then of ``profile_paths``; a GPU listed twice is refused."""
    if [n.lower() for n in gpus] == ["all"]:
        profiles = [r["profile"] for r in list_profiles(loaded=True) if r["source"] != "INVALID"]
    else:
        profiles = [load_profile(g) for g in gpus]
    profiles += [load_profile(path=p) for p in profile_paths]
    seen = [p.name for p in profiles]
    if len(set(seen)) != len(seen):
        raise QtsimError(f"GPU listed twice: {', '.join(seen)}")
    return profiles


def gpu_prices(prices: Sequence[float] | None, profiles) -> dict | None:
    """``--usd-per-hour``: None, one price for every GPU or one per GPU in order -> GPU name ->
    USD per GPU-hour (None when no price was given)."""
    if not prices:
        return None
    if len(prices) not in (1, len(profiles)):
        raise QtsimError(f"--usd-per-hour: give one price, or one per GPU ({len(profiles)}) in "
                         "--gpu order")
    names = [p.name for p in profiles]
    return dict(zip(names, list(prices) * len(names) if len(prices) == 1 else prices,
                    strict=True))


def _scope(rows: list[dict]) -> str:
    """What the energy figures cover: the label most GPUs share, then the others by name."""
    by_gpu = {r["gpu"]: r["energy_scope"] for r in rows}
    common = Counter(by_gpu.values()).most_common(1)[0][0] if by_gpu else budget.GPU_BOARD
    return "; ".join([common] + [f"{g}: {s}" for g, s in by_gpu.items() if s != common])


def _check_compare(profiles, workload: Workload, precisions, sort: str) -> list[str]:
    """Refuse no GPUs, a batch below 1, a precision listed twice or an unknown sort column;
    returns the canonical precisions."""
    if not profiles:
        raise QtsimError("no GPUs to compare")
    if workload.batch < 1:
        raise QtsimError("--batch and --tokens must be >= 1, --prompt-tokens >= 0")
    precs = [get_precision(p).name for p in precisions]
    if len(set(precs)) != len(precs):
        raise QtsimError(f"precision listed twice: {', '.join(precs)}")
    if sort not in COLUMNS:
        raise QtsimError(f"--sort {sort!r}: choose from {', '.join(COLUMNS)}")
    return precs


def _row(sim: Simulator, counts, w: Workload, nat: tuple, price: budget.BudgetAssumptions) -> dict:
    """One GPU x precision row: memory, speed, energy with its band, budget and the verdict.
    ``nat``: the GPU's native run at the same workload, central and drawn (what
    :meth:`Simulator.compare` compares a quantized run with)."""
    prof = sim.profile
    if w.precision == prof.native:
        q, qd = nat
    else:
        q, qd = sim.evaluate(counts, w), sim.evaluate(counts, w, draws=True)
    n, nd = nat if w.quantized else (q, qd)
    d = verdicts.ratios(q, n)
    nat = nat[0]
    share = float(np.mean(verdicts.costs_more(qd["j_per_query"], nd["j_per_query"])))
    quant = w.quantized
    fits, nat_fits = bool(q["fits"]), bool(nat["fits"])
    if not fits:
        verdict = "does not fit"
    elif not quant:
        verdict = "reference" if w.precision == prof.native else "16-bit"
    elif not nat_fits:
        verdict = f"only option ({prof.native} does not fit)"
    else:
        verdict = verdicts.verdict(
            bool(verdicts.costs_more(q["j_per_query"], n["j_per_query"])), share)
    j = float(q["j_per_query"])
    _, j_lo, j_hi = band(qd["j_per_query"])
    row = {
        "gpu": prof.name, "precision": w.bnb.label(w.precision), "fits": fits,
        "native_fits": nat_fits,
        "peak_memory_gib": float(q["peak_bytes"]) / GIB,
        "tok_per_s": float(q["tok_per_s"]), "latency_s": float(q["latency_s"]),
        "j_per_query": j, "j_per_query_low": float(j_lo), "j_per_query_high": float(j_hi),
        "avg_power_w": float(q["avg_power_w"]), "awake_frac": float(q["awake_frac"]),
        **budget.figures(j, float(q["tok_per_s"]), price),
        "energy_ratio": float(d["energy_ratio"]) if quant else 1.0,
        "verdict": verdict,
        "p_trapped_energy": share if quant else 0.0,
        "profile_source": prof.source,
        "energy_scope": budget.profile_energy_scope(prof),
        "bitsandbytes_version": bnb_version(prof),
    }
    # nothing that cannot run is tabled as if it ran: a configuration that does not fit has no
    # figures (null in JSON, empty in CSV, dashes in text); one whose 16-bit reference does not
    # fit has no comparison with it
    keep = {"gpu", "precision", "fits", "native_fits", "peak_memory_gib", "verdict",
            "profile_source", "bitsandbytes_version"}
    for k in row:
        if (not fits and k not in keep) or (quant and not nat_fits
                                            and k in ("energy_ratio", "p_trapped_energy")):
            row[k] = None
    return row


def sort_rows(rows: list[dict], column: str) -> list[dict]:
    """Rows that fit first, then by ``column`` in its better-first direction; missing last."""
    asc = COLUMNS[column][3]

    def key(r):
        v = r.get(column)
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not missing:
            v = v if asc else -v
        elif isinstance(v, bool):
            v = -int(v)
        return (not r["fits"], missing, v if not missing else 0)

    return sorted(rows, key=key)


def _base(label: str) -> str:
    """``nf4+dq bf16`` -> ``nf4``: the precision behind a row label."""
    return label.split("+")[0].split(" ")[0]


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return COLUMNS[column][2].format(value)


def format_text(c: Comparison) -> str:
    """An aligned table, then the assumptions and the serving model, each on its own line."""
    cols = c.columns()
    q = c.query
    head = [COLUMNS[k][0] for k in cols]
    # a configuration that does not fit has no throughput or cost to speak of: dashes, so that
    # its hypothetical figures never read as the cheapest option (null in JSON and CSV too)
    hypothetical = set(cols) - {"gpu", "precision", "fits", "peak_memory_gib", "verdict"}
    body = [[("-" if (not r["fits"] and k in hypothetical) else _cell(k, r[k])) for k in cols]
            for r in c.rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    left = {"gpu", "precision", "verdict"}

    def line(cells):
        return "  ".join(x.ljust(w) if k in left else x.rjust(w)
                         for k, x, w in zip(cols, cells, widths, strict=True)).rstrip()

    out = [f"{q['model']} ({q['model_params'] / 1e9:.2g}B params), batch {q['batch']}, "
           f"{q['new_tokens']} new tokens ({q['prompt_tokens']}-token prompt): "
           f"{len(q['gpus'])} GPU x {len(q['precisions'])} precision, sorted by "
           f"{COLUMNS[c.sort][0]} (configurations that do not fit last)",
           line(head), line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    out.append(f"assumptions: {c.describe_assumptions()}")
    if not c.bnb.is_default:
        out.append("bitsandbytes: " + ", ".join(
            f"{k}={v}" for k, v in (("bnb_4bit_use_double_quant", c.bnb.double_quant),
                                    ("llm_int8_threshold", c.bnb.int8_threshold),
                                    ("bnb_4bit_compute_dtype", c.bnb.compute_dtype or "profile's"))))
    out.append("verdict: energy per query vs the same GPU's 16-bit run (J/query, power model); "
               "'likely' = fewer than 84% of the profile's Monte-Carlo draws agree")
    out += c.serving
    out += c.origins
    out.append("every figure is a prediction from a hardware profile, not a measurement "
               "(spec-derived profiles carry wide priors: `qtsim trap` shows the bands)")
    return "\n".join(out)


def csv_text(c: Comparison) -> str:
    """One row per configuration; the assumptions repeated in every row (self-contained)."""
    keys = list(c.rows[0]) if c.rows else list(COLUMNS)
    extra = {"model": c.query["model"], "batch": c.query["batch"],
             "new_tokens": c.query["new_tokens"], "prompt_tokens": c.query["prompt_tokens"],
             "pue": c.assumptions.pue, "grid_gco2_per_kwh": c.assumptions.grid_gco2_per_kwh,
             "usd_per_hour": c.assumptions.usd_per_hour}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(extra) + keys)
    prices = c.usd_per_hour_by_gpu or {}
    for r in c.rows:
        if prices:
            extra["usd_per_hour"] = prices[r["gpu"]]
        w.writerow([("" if v is None else v) for v in extra.values()]
                   + [("" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                      for k in keys])
    return buf.getvalue().rstrip("\n")


def _bar(ax, r: dict, column: str, y: float, h: float, top: float, color) -> None:
    """One row's bar at ``y`` (with its J/query band) and its value and verdict written after;
    a configuration that does not fit gets a note instead of a bar."""
    v = r[column]
    if not r["fits"] or v is None:  # no bar: a length would suggest a value
        ax.text(top * 0.01, y, f"{r['precision']}: does not fit in memory", va="center",
                fontsize=8, color="0.3", style="italic")
        return
    err = None
    if column == "j_per_query":
        err = [[max(v - r["j_per_query_low"], 0)], [max(r["j_per_query_high"] - v, 0)]]
    ax.barh(y, v, height=h * 0.9, color=color, xerr=err,
            error_kw={"ecolor": "0.25", "capsize": 2, "lw": 0.8})
    tag = _cell(column, v)
    verdict = r["verdict"]
    if verdict not in ("reference", "16-bit"):
        tag += f"   energy: {verdict}"
    right = r["j_per_query_high"] if column == "j_per_query" else v
    ax.text(right + top * 0.01, y, tag, va="center", fontsize=8,
            color="#b22222" if verdict.startswith(("trapped", "likely trapped")) else "0.15")


def plot_compare(c: Comparison, column: str = "j_per_query"):
    """Horizontal bars of ``column`` per GPU, one bar per precision, verdicts written beside.

    GPUs run top to bottom in the table's order; J/query bars carry their 68% band; a
    configuration that does not fit is drawn as an empty, hatched outline labelled so.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if column not in COLUMNS or COLUMNS[column][2] in ("{}",):
        raise QtsimError(f"cannot plot column {column!r}")
    gpus = list(dict.fromkeys(r["gpu"] for r in c.rows))
    precs = list(dict.fromkeys(r["precision"] for r in sorted(
        c.rows, key=lambda r: c.query["precisions"].index(_base(r["precision"])))))
    by = {(r["gpu"], r["precision"]): r for r in c.rows}
    n_p = len(precs)
    h = 0.8 / n_p
    fig = Figure(figsize=(10, 1.0 + 0.32 * len(gpus) * n_p + 0.9), layout="constrained")
    ax = fig.subplots()
    ends = [(r["j_per_query_high"] if column == "j_per_query" else r[column])
            for r in c.rows if r[column] is not None and r["fits"]]
    top = max(ends) if ends else 1.0  # the furthest bar or whisker end
    for gi, g in enumerate(gpus):
        for pi, p in enumerate(precs):
            r = by.get((g, p))
            if r is None:
                continue
            _bar(ax, r, column, gi + (pi - (n_p - 1) / 2) * h, h, top,
                 PRECISION_COLORS.get(_base(p), "0.5"))
    ax.set_yticks(range(len(gpus)), gpus)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.85)  # room for the value and verdict written after each bar
    unit = COLUMNS[column][1]
    ax.set_xlabel(LONG_NAMES.get(column, COLUMNS[column][0] + (f" ({unit})" if unit else ""))
                  + ("  (lower is better)" if COLUMNS[column][3] else "  (higher is better)"))
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)
    q = c.query
    ax.set_title(f"{q['model']} at batch {q['batch']}, {q['new_tokens']} new tokens: "
                 f"{LONG_NAMES.get(column, COLUMNS[column][0])} per GPU and precision", fontsize=11)
    ax.legend(handles=[Patch(color=PRECISION_COLORS.get(_base(p), "0.5"), label=p)
                       for p in precs],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="precision",
              title_fontsize=8, frameon=False)
    band_note = "whiskers: 68% band; " if column == "j_per_query" else ""
    fig.text(0.5, 0.0, f"{DISCLAIMER} (HF transformers generate, eager); {band_note}"
             "red = quantized costs more energy per query than the same GPU's 16-bit run",
             ha="center", va="bottom", fontsize=7, color="0.35")
    fig.get_layout_engine().set(rect=(0, 0.03, 1, 0.97))
    return fig
