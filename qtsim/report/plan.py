"""``qtsim plan``: which GPU, precision setting, batch and how many replicas serve a demand
within latency targets at least cost, energy or carbon, with bands, and whether quantizing is a
trap *for the plan*.

For every GPU x precision setting the simulator evaluates the whole batch axis at once, central
and with Monte-Carlo draws of the profile's constants (:meth:`Simulator.evaluate`: latency,
step time, J/query, memory). :func:`serve` turns those into a serving plan with the
static-batching arithmetic of :mod:`qtsim.report.serving` and the units of
:mod:`qtsim.report.budget`, vectorised over settings x draws x batches: replicas, time per query,
$, kWh and tCO2e per month. A configuration is feasible when it fits in memory and meets the
targets at the stated percentile of the draws. The answer (:class:`Plan`): the best
configuration per objective, one ranked row per GPU x setting (its best batch), every feasible
point for the plot, and per GPU the trap test of :mod:`qtsim.model.verdicts` applied to plans:
the best quantized plan against the best 16-bit plan on the same GPU, in kWh and in $ per month.
Formatting and the figure live in :mod:`qtsim.report.plan_output`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from qtsim.errors import QtsimError
from qtsim.model import timeline, verdicts
from qtsim.model.architecture import Architecture, check_context
from qtsim.model.stats import BAND, GIB, nan_percentiles
from qtsim.model.workload import BnbSettings, Workload, parse_setting
from qtsim.profiles.profile import HardwareProfile
from qtsim.report import budget, serving
from qtsim.simulate.simulator import Simulator

#: objective -> (figure, unit, what it needs)
OBJECTIVES = {"usd": ("usd_per_month", "$/month", "--usd-per-hour"),
              "kwh": ("kwh_per_month", "kWh/month", None),
              "co2": ("tco2e_per_month", "tCO2e/month", "--grid-gco2-per-kwh")}
DEFAULT_SETTINGS = "fp16,int8,int8+t0,nf4,nf4+dq"
#: batch sizes one plan searches at most (its draws arrays are draws x settings x batches)
MAX_BATCHES = 4096
DEMAND_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "day": 86400.0}
#: figures of :func:`serve` summarised with a 68% band
BANDED = ("replicas", "usd_per_month", "kwh_per_month", "tco2e_per_month")


# ---- inputs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Demand:
    """Mean demand in queries/s and the peak factor replicas are sized for (peak = mean x it)."""

    queries_per_s: float
    peak_factor: float = 1.0
    text: str = ""

    def __post_init__(self):
        if not (math.isfinite(self.queries_per_s) and self.queries_per_s > 0):
            raise QtsimError(f"--demand {self.text or self.queries_per_s!r}: must be a positive rate")
        if not (math.isfinite(self.peak_factor) and self.peak_factor >= 1):
            raise QtsimError(f"--peak-factor {self.peak_factor!r}: must be a number >= 1 "
                             "(peak rate / mean rate)")

    @property
    def peak_queries_per_s(self) -> float:
        return self.queries_per_s * self.peak_factor

    def describe(self) -> str:
        given = f"{self.text} = " if self.text else ""
        return (f"{given}{self.queries_per_s:.3g} queries/s mean, x peak factor "
                f"{self.peak_factor:g} = {self.peak_queries_per_s:.3g} queries/s to provision for")


def parse_demand(text: str, peak_factor: float = 1.0) -> Demand:
    """``2e6/day``, ``25/s``, ``1500/min``, ``9e4/h`` -> :class:`Demand` (queries per unit)."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(?:q|queries)?\s*/\s*(s|sec|min|h|hour|d|day)\s*",
                     str(text))
    unit = {"sec": "s", "hour": "h", "d": "day"}.get(m.group(2), m.group(2)) if m else None
    try:
        n = float(m.group(1)) if m else math.nan
    except ValueError:
        n = math.nan
    if not m or not math.isfinite(n) or n <= 0:
        raise QtsimError(f"--demand {text!r}: give a positive rate with its unit, e.g. 2e6/day, "
                         "25/s, 1500/min, 9e4/h")
    return Demand(n / DEMAND_UNITS[unit], peak_factor, str(text).strip())


@dataclass(frozen=True)
class Targets:
    """Latency targets, met at ``percentile`` of the draws: the decode step (s) and the time per
    query from arrival to last token (s); None = no target."""

    step_s: float | None = None
    query_s: float | None = None
    percentile: float = BAND[1]

    def __post_init__(self):
        for name, v in (("--max-step-ms", self.step_s), ("--max-query-s", self.query_s)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise QtsimError(f"{name}: must be a positive number")
        if not (50.0 <= self.percentile < 100.0):
            raise QtsimError(f"--percentile {self.percentile:g}: must be in [50, 100)")

    def short(self) -> str:
        """'step <= 80 ms, time per query <= 60 s (p84)' or 'no latency target'."""
        parts = self._parts()
        return f"{', '.join(parts)} (p{self.percentile:g})" if parts else "no latency target"

    def _parts(self) -> list[str]:
        return ([f"step <= {self.step_s * 1e3:g} ms"] if self.step_s else []) + \
               ([f"time per query <= {self.query_s:g} s"] if self.query_s else [])

    def describe(self) -> str:
        parts = self._parts()
        if not parts:
            return ("no latency target (throughput only: a batch may wait long to fill, see the "
                    "time per query; --max-query-s bounds it)")
        text = " and ".join(parts) + f", at the {self.percentile:g}th percentile of the draws"
        if self.query_s is None:
            text += " (no time-per-query target: --max-query-s bounds the wait to fill a batch)"
        return text


@dataclass(frozen=True)
class Setting:
    """A precision with its bitsandbytes settings, as ``--precision`` names it."""

    precision: str
    bnb: BnbSettings = field(default_factory=BnbSettings)

    @property
    def label(self) -> str:
        return self.bnb.label(self.precision)

    @property
    def quantized(self) -> bool:
        return Workload(self.precision).quantized


def parse_settings(text: str | Sequence[str]) -> list[Setting]:
    """``fp16,int8,int8+t0,nf4,nf4+dq`` -> settings (:func:`qtsim.model.workload.parse_setting`);
    a setting listed twice is refused."""
    items = [x.strip() for x in (text.split(",") if isinstance(text, str) else text) if x.strip()]
    out = [Setting(*parse_setting(x)) for x in items]
    labels = [s.label for s in out]
    if not out or len(set(labels)) != len(labels):
        raise QtsimError(f"--precision {text!r}: give each setting once ({', '.join(labels)})")
    return out


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan answers for, besides the GPUs."""

    arch: Architecture
    demand: Demand
    targets: Targets = field(default_factory=Targets)
    settings: tuple = ()
    batches: tuple = tuple(range(1, 257))
    new_tokens: int = 256
    prompt_tokens: int = 128
    assumptions: budget.BudgetAssumptions = field(default_factory=budget.BudgetAssumptions)
    minimize: str | None = None
    n_draws: int = 200
    seed: int = 0

    def validate(self, prices: dict | None) -> str:
        """The objective: the one asked for (refused when its assumption is missing), else $
        when the GPUs are priced, else kWh. Refuses a request that cannot be planned."""
        if self.minimize is not None and self.minimize not in OBJECTIVES:
            raise QtsimError(f"--minimize {self.minimize!r}: choose from {', '.join(OBJECTIVES)}")
        objective = self.minimize or ("usd" if prices else "kwh")
        have = {"--usd-per-hour": bool(prices), "--grid-gco2-per-kwh":
                self.assumptions.grid_gco2_per_kwh is not None}
        need = OBJECTIVES[objective][2]
        if need and not have[need]:
            raise QtsimError(f"--minimize {objective} needs {need}")
        if not self.batches or min(self.batches) < 1:
            raise QtsimError("--batch: batches must be >= 1")
        if len(self.batches) > MAX_BATCHES:
            raise QtsimError(f"--batch: {len(self.batches)} batch sizes; plan searches at most "
                             f"{MAX_BATCHES} (give LO:HI:N for a geometric grid)")
        if not self.settings:
            raise QtsimError("--precision: no settings to plan with")
        return objective


# ---- the serving arithmetic on whole grids ----------------------------------------------------------
def serve(latency_s, j_per_query, idle_w, batch, demand: Demand,
          a: budget.BudgetAssumptions, usd_per_hour: float | None, totals: bool = True) -> dict:
    """A plan's figures for configurations of one GPU, any shape that broadcasts (settings x
    batches, or draws x settings x batches with the idle power per draw).

    ``latency_s`` and ``j_per_query`` (one batch call, from :meth:`Simulator.evaluate`),
    ``idle_w`` (:meth:`Simulator.idle_power_w`). Returns ``replicas``, ``time_per_query_s``,
    ``utilisation`` (busy share of the replicas' hours at the mean demand), ``kwh_per_month``
    (served queries x J/query + the replicas' idle time x idle power, x PUE),
    ``usd_per_month`` and ``tco2e_per_month`` (NaN where their assumption is missing; with
    ``totals=False`` neither, nor the utilisation: per draw they follow from replicas and kWh).
    """
    mu = serving.replica_queries_per_s(batch, latency_s)
    r = serving.replicas_needed(demand.peak_queries_per_s, mu)
    queries = demand.queries_per_s * budget.SECONDS_PER_MONTH
    held_s = r * budget.SECONDS_PER_MONTH
    busy_s = queries / mu
    kwh = budget.kwh(queries * j_per_query + (held_s - busy_s) * idle_w, a.pue)
    out = {"replicas": r, "kwh_per_month": kwh,
           "time_per_query_s": serving.time_per_query_s(batch, latency_s, r, demand.queries_per_s)}
    if not totals:
        return out
    nan = np.full(np.shape(kwh), np.nan)
    return {**out, "utilisation": busy_s / held_s,
            "usd_per_month": (budget.usd_per_month(r, usd_per_hour) if usd_per_hour is not None
                              else nan),
            "tco2e_per_month": (budget.tco2e(kwh, a.grid_gco2_per_kwh)
                                if a.grid_gco2_per_kwh is not None else nan)}


#: what the plan keeps of each evaluation, central (settings x batches)
CENTRAL = ("latency_s", "step_s", "j_per_query", "host_s", "device_s", "avg_power_w", "peak_bytes",
           "fits")
#: ... and with draws (draws x settings x batches)
DRAWN = ("latency_s", "step_s", "j_per_query")


def evaluate_settings(sim: Simulator, arch: Architecture, req: PlanRequest):
    """One GPU's settings over the batch axis: (central, draws, unmodelled).

    ``central``: arrays (S, B) of :data:`CENTRAL`; ``draws``: (n, S, B) of :data:`DRAWN`;
    ``unmodelled``: per setting, why the profile cannot predict it (None where it can; its
    figures are NaN and it never fits). One vectorised evaluation per setting, over the batches
    that fit in memory (the others keep NaN figures).
    """
    counts = arch.counts()
    b = np.asarray(req.batches, float)
    central = {k: np.full((len(req.settings), b.size), np.nan) for k in CENTRAL}
    central["fits"] = np.zeros((len(req.settings), b.size), bool)
    draws = {k: np.full((sim.n_draws, len(req.settings), b.size), np.nan) for k in DRAWN}
    unmodelled = []
    for i, s in enumerate(req.settings):
        try:
            s.bnb.check([s.precision], sim.profile)
        except QtsimError as e:
            unmodelled.append(str(e))
            continue
        unmodelled.append(None)
        w = Workload(s.precision, b, req.new_tokens, req.prompt_tokens, s.bnb)
        central["peak_bytes"][i], central["fits"][i] = sim.memory(counts, w)
        fit = central["fits"][i]
        if not fit.any():
            continue
        w = w.replace(batch=b[fit])
        c, d = sim.evaluate(counts, w), sim.evaluate(counts, w, draws=True)
        for k in CENTRAL:
            central[k][i, fit] = np.broadcast_to(c[k], (fit.sum(),))
        for k in DRAWN:
            draws[k][:, i, fit] = np.broadcast_to(d[k], (sim.n_draws, fit.sum()))
    return central, draws, unmodelled


@dataclass
class GpuGrid:
    """One GPU's configurations (settings x batches): figures, bands, feasibility, trap test.

    ``fig``: central arrays (S, B) of :data:`CENTRAL` and :func:`serve`'s figures, plus
    ``step_p_s`` and ``time_per_query_p_s`` (the targets' percentile of the draws);
    ``low``/``high``: 16th/84th percentiles of :data:`BANDED` (replicas rounded outwards);
    ``feasible`` (S, B); ``unmodelled`` per setting; ``trap``: :func:`trap_test`'s answer.
    """

    profile: HardwareProfile
    price: float | None
    fig: dict
    low: dict
    high: dict
    feasible: np.ndarray
    unmodelled: list
    trap: dict | None = None


def evaluate_gpu(sim: Simulator, req: PlanRequest, price: float | None,
                 objective: str) -> GpuGrid:
    """Every setting x batch of one GPU: :func:`evaluate_settings`, then :func:`serve`
    central and per draw, the targets checked at their percentile, bands, and the trap test."""
    c, d, unmodelled = evaluate_settings(sim, req.arch, req)
    b = np.asarray(req.batches, float)
    a, t = req.assumptions, req.targets
    fig = {**c, **serve(c["latency_s"], c["j_per_query"], sim.idle_power_w(), b, req.demand, a,
                        price)}
    fd = serve(d["latency_s"], d["j_per_query"], np.reshape(sim.idle_power_w(True), (-1, 1, 1)),
               b, req.demand, a, price, totals=False)
    fig["step_p_s"] = nan_percentiles(d["step_s"], (t.percentile,))[0]
    fig["time_per_query_p_s"] = nan_percentiles(fd["time_per_query_s"], (t.percentile,))[0]
    ok = c["fits"] & np.isfinite(c["latency_s"])
    if t.step_s is not None:
        ok &= fig["step_p_s"] <= t.step_s
    if t.query_s is not None:
        ok &= fig["time_per_query_p_s"] <= t.query_s
    low, high = _bands(fd, a, price)
    g = GpuGrid(sim.profile, price, fig, low, high, ok, unmodelled)
    g.trap = trap_test(g, req, objective, fd)
    return g


def _bands(fd: dict, a: budget.BudgetAssumptions, price: float | None) -> tuple[dict, dict]:
    """16th/84th percentiles of :data:`BANDED` over the draws ``fd`` (settings x batches):
    replicas rounded outwards, $ from them, tCO2e from kWh (a percentile commutes with a
    positive scale, so two sorts serve four figures)."""
    low, high = {}, {}
    for k in ("replicas", "kwh_per_month"):
        low[k], high[k] = nan_percentiles(fd[k], BAND)
    low["replicas"], high["replicas"] = np.floor(low["replicas"]), np.ceil(high["replicas"])
    for out in (low, high):
        nan = np.full(out["kwh_per_month"].shape, np.nan)
        out["usd_per_month"] = (budget.usd_per_month(out["replicas"], price) if price is not None
                                else nan)
        out["tco2e_per_month"] = (budget.tco2e(out["kwh_per_month"], a.grid_gco2_per_kwh)
                                  if a.grid_gco2_per_kwh is not None else nan)
    return low, high


def ranked(fig: dict, objective: str, mask: np.ndarray) -> np.ndarray:
    """Flat indices of ``mask``'s True entries, best first: by the objective, ties by the other
    cost ($ or kWh), then by the shorter time per query."""
    primary = fig[OBJECTIVES[objective][0]]
    second = fig["kwh_per_month"] if objective == "usd" else fig["usd_per_month"]
    keys = [np.nan_to_num(np.asarray(x, float), nan=0.0).ravel()
            for x in (fig["time_per_query_p_s"], second, primary)]
    order = np.lexsort(keys)
    return order[np.asarray(mask).ravel()[order]]


def _best(g: GpuGrid, objective: str, settings_mask) -> tuple | None:
    """(setting, batch) index of the best feasible configuration among the settings marked."""
    mask = g.feasible & np.asarray(settings_mask, bool)[:, None]
    order = ranked(g.fig, objective, mask)
    return np.unravel_index(order[0], mask.shape) if order.size else None


def trap_test(g: GpuGrid, req: PlanRequest, objective: str, fd: dict) -> dict:
    """Prop. 3.2 applied to plans on one GPU: its best quantized plan against its best 16-bit
    plan (best by ``objective``), in kWh and $ per month, each with the ratio's 68% band and
    the verdict of :func:`qtsim.model.verdicts.verdict` over the draws (``fd``: :func:`serve`
    per draw)."""
    quant = np.array([s.quantized for s in req.settings])
    bq, bn = _best(g, objective, quant), _best(g, objective, ~quant)
    out = {"gpu": g.profile.name, "quantized": None if bq is None else row(g, req, *bq),
           "native": None if bn is None else row(g, req, *bn)}
    if bq is None:
        out["verdict"] = "no feasible quantized plan"
    elif not (~quant).any():
        out["verdict"] = "no 16-bit setting asked for (add fp16 to --precision)"
    elif bn is None:
        why = "; ".join(reason(g, req, i) for i in np.flatnonzero(~quant))
        out["verdict"] = f"only option: no feasible 16-bit plan ({why})"
    else:
        out["verdict"] = "compared"
        for key in ("kwh_per_month", "usd_per_month"):
            q, n = g.fig[key][bq], g.fig[key][bn]
            if np.isnan(q):
                continue
            per_draw = fd["kwh_per_month"] if key == "kwh_per_month" else fd["replicas"]
            qd, nd = per_draw[(slice(None), *bq)], per_draw[(slice(None), *bn)]  # $ = replicas x price
            share = float(np.mean(verdicts.costs_more(qd, nd)))
            lo, hi = nan_percentiles(qd / nd, BAND)
            out[key] = {"ratio": float(q / n), "low": float(lo), "high": float(hi),
                        "p_trapped": share,
                        "verdict": verdicts.verdict(bool(verdicts.costs_more(q, n)), share)}
    return out


def _f(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def row(g: GpuGrid, req: PlanRequest, s: int, b: int) -> dict:
    """One configuration (setting ``s``, batch index ``b``) of a GPU as the answer reports it."""
    f, st, t = g.fig, req.settings[s], req.targets
    head = {}
    if t.step_s is not None:
        head["step"] = 1.0 - float(f["step_p_s"][s, b]) / t.step_s
    if t.query_s is not None:
        head["time_per_query"] = 1.0 - float(f["time_per_query_p_s"][s, b]) / t.query_s
    out = {"gpu": g.profile.name, "setting": st.label, "precision": st.precision,
           "quantized": st.quantized, "batch": int(req.batches[b]),
           "feasible": bool(g.feasible[s, b])}
    for k in BANDED:
        out[k], out[f"{k}_low"], out[f"{k}_high"] = (_f(g.fig[k][s, b]), _f(g.low[k][s, b]),
                                                     _f(g.high[k][s, b]))
    for k in ("replicas", "replicas_low", "replicas_high"):
        out[k] = None if out[k] is None else int(out[k])
    out.update({
        "time_per_query_s": _f(f["time_per_query_s"][s, b]),
        "time_per_query_p_s": _f(f["time_per_query_p_s"][s, b]),
        "step_s": _f(f["step_s"][s, b]), "step_p_s": _f(f["step_p_s"][s, b]),
        "latency_s": _f(f["latency_s"][s, b]),
        "host_s": _f(f["host_s"][s, b]), "device_s": _f(f["device_s"][s, b]),
        "binding": str(timeline.binding(f["host_s"][s, b], f["device_s"][s, b])),
        "headroom": min(head.values()) if head else None, "headroom_by_target": head,
        "utilisation": _f(f["utilisation"][s, b]), "j_per_query": _f(f["j_per_query"][s, b]),
        "avg_power_w": _f(f["avg_power_w"][s, b]),
        "peak_memory_gib": _f(f["peak_bytes"][s, b] / GIB),
        "device_memory_gib": g.profile.memory_bytes / GIB, "usd_per_hour": g.price,
        "bitsandbytes": st.bnb.bnb_config(st.precision, g.profile),
        "profile_source": g.profile.source})
    return out


def reason(g: GpuGrid, req: PlanRequest, s: int) -> str:
    """Why no batch of setting ``s`` is feasible on this GPU, in one clause."""
    f, t, st = g.fig, req.targets, req.settings[s]
    name = f"{g.profile.name} {st.label}"
    if g.unmodelled[s]:
        return f"{name}: not modelled ({g.unmodelled[s]})"
    fits = f["fits"][s]
    if not fits.any():
        return (f"{name}: does not fit (needs {f['peak_bytes'][s, 0] / GIB:.1f} GiB at batch "
                f"{req.batches[0]}, has {g.profile.memory_bytes / GIB:.1f} GiB)")
    pct, checks = f"p{t.percentile:g}", target_checks(t)
    for key, target, what, unit, scale, _ in checks:
        i = int(np.argmin(np.where(fits, f[key][s], np.inf)))
        if f[key][s, i] > target:
            bound = f", {_bound(f, s, i)}" if key == "step_p_s" else ""
            return (f"{name}: {what} {f[key][s, i] * scale:.3g} {unit} at best ({pct}, batch "
                    f"{req.batches[i]}) > {target * scale:g} {unit}{bound}")
    return f"{name}: no batch meets the {' and '.join(c[2] for c in checks)} targets together"


def target_checks(t: Targets) -> list[tuple]:
    """(figure at the percentile, target, name, unit, scale to the unit, option) per target given."""
    return ([("step_p_s", t.step_s, "step", "ms", 1e3, "--max-step-ms")] if t.step_s is not None
            else []) + ([("time_per_query_p_s", t.query_s, "time per query", "s", 1.0,
                          "--max-query-s")] if t.query_s is not None else [])


def _bound(f: dict, s: int, i: int) -> str:
    """'host-bound (host 13.3 ms, device 8.71 ms)' for configuration (s, i)."""
    h, d = f["host_s"][s, i], f["device_s"][s, i]
    return f"{timeline.binding(h, d)} (host {h * 1e3:.3g} ms, device {d * 1e3:.3g} ms)"


# ---- the answer ---------------------------------------------------------------------------------
UNITS = {"usd_per_month": "USD per month (730.5 h)", "usd_per_hour": "USD per GPU-hour",
         "kwh_per_month": "kWh per month (GPU boards x PUE)", "tco2e_per_month": "t CO2e per month",
         "time_per_query_s": "s", "time_per_query_p_s": "s", "step_s": "s", "step_p_s": "s",
         "latency_s": "s", "host_s": "s", "device_s": "s", "utilisation": "1",
         "j_per_query": "J", "avg_power_w": "W", "peak_memory_gib": "GiB",
         "device_memory_gib": "GiB", "headroom": "1 (share of the target left)"}


@dataclass
class Plan:
    """The answer of :func:`plan`: rows (one per GPU x setting, its best batch; feasible ones
    ranked best first), the best configuration per objective, the trap test per GPU, and the
    grids behind them (for :meth:`points` and the figure)."""

    request: PlanRequest
    objective: str
    grids: list[GpuGrid]
    rows: list[dict]
    best: dict
    prices: dict | None
    serving_model: list[str]

    @property
    def trap(self) -> dict:
        """The trap test on the GPU of the best plan for the objective."""
        gpu = self.best[self.objective]["gpu"]
        return next(g.trap for g in self.grids if g.profile.name == gpu)

    def points(self) -> dict:
        """Every feasible configuration: ``gpu``, ``setting``, ``batch`` (lists), ``kwh``,
        ``cost`` ($/month, or replicas when unpriced) and ``frontier`` (no other point is
        cheaper and uses less energy) as arrays."""
        cols = {k: [] for k in ("gpu", "setting", "batch", "kwh", "cost")}
        for g in self.grids:
            s_i, b_i = np.nonzero(g.feasible)
            cost = g.fig["usd_per_month" if self.prices else "replicas"]
            cols["gpu"] += [g.profile.name] * s_i.size
            cols["setting"] += [self.request.settings[s].label for s in s_i]
            cols["batch"] += [int(self.request.batches[b]) for b in b_i]
            cols["kwh"].append(g.fig["kwh_per_month"][s_i, b_i])
            cols["cost"].append(cost[s_i, b_i])
        cols["kwh"], cols["cost"] = np.concatenate(cols["kwh"]), np.concatenate(cols["cost"])
        cols["frontier"] = pareto_front(cols["cost"], cols["kwh"])
        return cols

    def frontier(self) -> list[dict]:
        """The configurations on the cost-energy frontier, cheapest first."""
        p = self.points()
        out = [(p["cost"][i], p["gpu"][i], p["setting"][i], p["batch"][i])
               for i in np.flatnonzero(p["frontier"])]
        grid = {g.profile.name: g for g in self.grids}
        labels = [s.label for s in self.request.settings]
        return [row(grid[gpu], self.request, labels.index(st), self.request.batches.index(b))
                for _, gpu, st, b in sorted(out)]

    def to_dict(self) -> dict:
        return {"query": query_dict(self), "assumptions": assumptions_dict(self),
                "serving": {"arithmetic": serving.static_batching_statement(
                    self.request.demand.peak_factor, self.request.targets.percentile),
                    "model": self.serving_model},
                "minimize": self.objective, "best": self.best,
                "trap": {"plan": self.trap, "per_gpu": [g.trap for g in self.grids]},
                "rows": self.rows, "frontier": self.frontier(), "units": UNITS,
                "note": ("predictions from hardware profiles, not measurements; [low, high] = "
                         "16th-84th percentiles over Monte-Carlo draws of each profile's "
                         "constants and the model's own error")}


def query_dict(p: Plan) -> dict:
    r, d, t = p.request, p.request.demand, p.request.targets
    return {"model": r.arch.name, "model_params": r.arch.n_params,
            "demand": {"given": d.text, "queries_per_s": d.queries_per_s,
                       "peak_factor": d.peak_factor, "peak_queries_per_s": d.peak_queries_per_s,
                       "queries_per_month": d.queries_per_s * budget.SECONDS_PER_MONTH},
            "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
            "targets": {"step_s": t.step_s, "time_per_query_s": t.query_s,
                        "percentile": t.percentile},
            "settings": [s.label for s in r.settings],
            "batches": {"min": min(r.batches), "max": max(r.batches), "count": len(r.batches)},
            "gpus": [g.profile.name for g in p.grids], "n_draws": r.n_draws}


def assumptions_dict(p: Plan) -> dict:
    a = p.request.assumptions.to_dict()
    a["usd_per_hour"] = dict(p.prices) if p.prices else None
    a["hours_per_month"] = budget.HOURS_PER_MONTH
    return a


def pareto_front(cost, energy) -> np.ndarray:
    """True where no other point is at most as costly and uses strictly less energy (or is
    cheaper at the same energy): the lower-left frontier of cost against energy."""
    cost, energy = np.asarray(cost, float), np.asarray(energy, float)
    order = np.lexsort((energy, cost))
    best = np.minimum.accumulate(energy[order])
    keep = np.r_[True, energy[order][1:] < best[:-1]]
    out = np.zeros(cost.size, bool)
    out[order[keep]] = True
    return out


def plan(profiles: Sequence[HardwareProfile], req: PlanRequest, prices: dict | None = None,
         host=None, progress: Callable[[int], None] | None = None) -> Plan:
    """Plan ``req`` on ``profiles``: every GPU x setting x batch evaluated (one vectorised pass
    per GPU and setting), feasible configurations ranked by the objective.

    ``prices``: GPU name -> USD per GPU-hour (every GPU, or None); ``host``: the host/software
    part combined with every device profile (:mod:`qtsim.profiles.hosts`). An infeasible demand
    (no configuration fits and meets the targets) is refused with the reason
    (:class:`QtsimError`: one line, exit 2).
    """
    objective = req.validate(prices)
    if not profiles:
        raise QtsimError("no GPUs to plan with")
    check_context(req.arch, req.prompt_tokens, req.new_tokens)
    grids, models = [], []
    for p in profiles:
        sim = Simulator(p, n_draws=req.n_draws, seed=req.seed, host=host)
        models.append(serving.serving_assumption(sim.profile))
        grids.append(evaluate_gpu(sim, req, prices[p.name] if prices else None, objective))
        if progress:
            progress(1)
    if not any(g.feasible.any() for g in grids):
        raise QtsimError(refusal(grids, req))
    best = {o: best_overall(grids, req, o) for o in OBJECTIVES
            if o == "kwh" or (o == "usd" and prices)
            or (o == "co2" and req.assumptions.grid_gco2_per_kwh is not None)}
    return Plan(req, objective, grids, rank_rows(grids, req, objective), best, prices,
                list(dict.fromkeys(models)))


def _stacked(grids: list[GpuGrid]) -> tuple[dict, np.ndarray]:
    keys = ("usd_per_month", "kwh_per_month", "tco2e_per_month", "time_per_query_p_s")
    return ({k: np.stack([g.fig[k] for g in grids]) for k in keys},
            np.stack([g.feasible for g in grids]))


def best_overall(grids: list[GpuGrid], req: PlanRequest, objective: str) -> dict:
    """The best feasible configuration over every GPU, setting and batch for ``objective``."""
    fig, ok = _stacked(grids)
    g, s, b = np.unravel_index(ranked(fig, objective, ok)[0], ok.shape)
    return row(grids[g], req, s, b)


def rank_rows(grids: list[GpuGrid], req: PlanRequest, objective: str) -> list[dict]:
    """One row per GPU x setting: its best batch, feasible rows best first; then the settings
    with no feasible batch, each with its reason."""
    good, bad = [], []
    for g in grids:
        for s in range(len(req.settings)):
            order = ranked({k: v[s] for k, v in g.fig.items()}, objective, g.feasible[s])
            if order.size:
                good.append(row(g, req, s, int(order[0])))
            else:
                st = req.settings[s]
                bad.append({"gpu": g.profile.name, "setting": st.label, "precision": st.precision,
                            "quantized": st.quantized, "feasible": False,
                            "reason": reason(g, req, s)})
    second = "kwh_per_month" if objective == "usd" else "usd_per_month"
    good.sort(key=lambda r: (r[OBJECTIVES[objective][0]] or 0.0, r[second] or 0.0,
                             r["time_per_query_p_s"]))
    return good + bad


def refusal(grids: list[GpuGrid], req: PlanRequest) -> str:
    """Why no configuration is feasible anywhere, in one line: the model fits no GPU, a
    target lies below every configuration's floor (the host's, where the step is host-bound),
    or no configuration meets the targets together."""
    fits = np.stack([g.fig["fits"] for g in grids])
    name = req.arch.name
    if not fits.any():
        peak = np.stack([g.fig["peak_bytes"][:, 0] for g in grids])
        if np.isnan(peak).all():
            why = next(u for g in grids for u in g.unmodelled if u)
            return f"no plan: no setting asked for is modelled on these GPUs ({why})"
        gi, si = np.unravel_index(np.nanargmin(peak), peak.shape)
        big = max(grids, key=lambda g: g.profile.memory_bytes).profile
        return (f"no plan: {name} fits on none of the {len(grids)} GPUs at any setting: it needs "
                f"at least {peak[gi, si] / GIB:.1f} GiB ({req.settings[si].label}, batch "
                f"{req.batches[0]}) and the largest GPU, {big.name}, has "
                f"{big.memory_bytes / GIB:.1f} GiB; a model sharded over several GPUs is outside "
                "qtsim plan")
    pct = f"p{req.targets.percentile:g}"
    for key, target, what, unit, scale, option in target_checks(req.targets):
        v = np.where(fits, np.stack([g.fig[key] for g in grids]), np.inf)
        gi, si, bi = np.unravel_index(np.argmin(v), v.shape)
        if v[gi, si, bi] > target:
            g = grids[gi]
            where = (f"{g.profile.name} {req.settings[si].label}, batch {req.batches[bi]}, "
                     f"{pct}")
            return (f"no plan: {option} {target * scale:g} is below every configuration's "
                    f"{'decode step' if what == 'step' else what}: the fastest is "
                    f"{v[gi, si, bi] * scale:.3g} {unit} ({where}), {_floor(g, req, si, bi)}")
    why = [reason(g, req, s) for g in grids for s in range(len(req.settings))]
    return f"no plan: no configuration meets the targets together ({'; '.join(why[:3])})"


def _floor(g: GpuGrid, req: PlanRequest, s: int, b: int) -> str:
    """What bounds the fastest configuration: the host's floor or the device's."""
    f = g.fig
    h, d = f["host_s"][s, b], f["device_s"][s, b]
    host = getattr(g.profile.host, "name", None) or "this host"
    if str(timeline.binding(h, d)) == "host-bound":
        return (f"host-bound: below the host floor, the host ({host}) alone takes "
                f"{h * 1e3:.3g} ms to issue a step's kernels whatever the GPU (device "
                f"{d * 1e3:.3g} ms; name a faster host part with --host)")
    return f"device-bound (host {h * 1e3:.3g} ms, device {d * 1e3:.3g} ms)"
