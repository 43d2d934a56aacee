"""How much the machine disturbed a measurement run, measured alongside it.

A calibration on a shared machine measures the machine's mood as well as its speed: on a
2-core VM that other processes shared, a quick calibration once ran four times its quiet length
and fitted a bandwidth of 25 ± 53 GB/s. Three things are measured here, none of them assumed:

- **load**: the 1- and 5-minute load averages at every point's start
  (:func:`qtsim.calibration.measure.conditions.load_attrs`, recorded with every point), less the
  run's own threads: what other processes asked of the cores;
- **run-to-run spread**: the coefficient of variation of every point's repetitions;
- **drift**: a few *reference points* re-measured at regular places through the run
  (:class:`DriftSpec`, :func:`with_drift_probes`, stored with ``purpose = "drift"`` and never
  fitted): if the machine ran faster or slower from one part of the run to the next, the same
  point measures differently.

:func:`contention_report` turns them into a verdict (``quiet`` or ``disturbed``, with the
numbers) that the profile records in ``[fit.contention]`` and the calibration prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from qtsim.calibration.probes.plan import DecodeSpec, LinearSpec

#: a run whose reference points moved by more than this (max / min - 1 of one point's repeated
#: measurements) was disturbed: constants fitted early and late describe different machines
DRIFT_TOLERANCE = 0.10
#: median coefficient of variation of repetitions above which the points are noisy
SPREAD_TOLERANCE = 0.05
#: other processes' load per logical core above which the machine was shared
LOAD_TOLERANCE = 0.5
#: places in a run where its reference points are measured again: its start, its end and
#: between (3: start, middle, end; 5 before issue 21, which localised a drift more finely)
DRIFT_PROBES = 3


@dataclass
class DriftSpec:
    """A reference point of the plan measured once more (``index`` counts the repeats), stored
    under its own id with ``purpose = "drift"``: the fit never sees it, :func:`drift_table`
    compares its repeats. ``reference`` holds attributes written beside it (e.g. what the
    calibration measured at the same point, for validation)."""

    inner: Any
    index: int
    reference: dict | None = None

    def point_id(self) -> str:
        return f"{self.inner.point_id()}__drift{self.index}"

    def base_attrs(self, ctx) -> dict[str, Any]:
        return {**self.inner.base_attrs(ctx), **self._attrs()}

    def _attrs(self) -> dict[str, Any]:
        return {"purpose": "drift", "drift_of": self.inner.point_id(),
                "drift_index": self.index, **(self.reference or {})}

    def estimate_s(self, device) -> float:
        return self.inner.estimate_s(device)

    def run(self, ctx):
        result = self.inner.run(ctx)
        result.attrs.update(self._attrs())
        return result


def reference_points(plan: list) -> list:
    """The plan's cheapest representative points to repeat: its first 16-bit linear layer at
    batch 1 and its first 16-bit decode at batch 1 (either may be absent)."""
    lin = next((p for p in plan if isinstance(p, LinearSpec) and p.batch == 1
                and p.path.startswith(("fp16", "bf16"))), None)
    dec = next((p for p in plan if isinstance(p, DecodeSpec) and p.batch == 1
                and p.precision in ("fp16", "bf16")), None)
    return [p for p in (lin, dec) if p is not None]


def with_drift_probes(plan: list, probes: int = DRIFT_PROBES) -> list:
    """``plan`` with its :func:`reference_points` measured again at ``probes`` places spread
    evenly through it (the first before anything else, the last after everything), each place
    moved to the nearest boundary between decode models so no cached model is rebuilt twice."""
    refs = reference_points(plan)
    if not refs or probes < 2:
        return list(plan)

    def key(p):
        return p.model_key() if isinstance(p, DecodeSpec) else None

    bounds = [i for i in range(len(plan) + 1)
              if i in (0, len(plan)) or key(plan[i]) is None or key(plan[i]) != key(plan[i - 1])]
    targets = np.linspace(0, len(plan), probes)
    at = sorted({min(bounds, key=lambda b, t=t: abs(b - t)) for t in targets})
    out, k = [], 0
    for i in range(len(plan) + 1):
        if i in at:
            out += [DriftSpec(r, k) for r in refs]
            k += 1
        if i < len(plan):
            out.append(plan[i])
    return out


def drift_table(frame) -> list[dict]:
    """Per reference point, its repeated measurements: ``point``, ``n``, ``times_s`` (in run
    order) and ``range`` (max / min - 1) over the repeats after the first: the first, taken
    before anything else ran, also pays for lazy initialisation and cold caches (measured up
    to 2x on a 2-core VM), which is not the machine changing."""
    if frame is None or not len(frame) or "purpose" not in frame or "drift_of" not in frame:
        return []
    d = frame[frame["purpose"] == "drift"]
    out = []
    for ref, g in d.groupby("drift_of"):
        g = g.sort_values("drift_index")
        col = "t_generate_s" if g["kind"].iloc[0] == "decode" else "t_median_s"
        t = g[col].to_numpy(float)
        t = t[np.isfinite(t) & (t > 0)]
        if t.size < 2:
            continue
        judged = t[1:] if t.size >= 3 else t
        out.append({"point": str(ref), "n": int(judged.size),
                    "times_s": [float(f"{x:.6g}") for x in t],
                    "range": float(judged.max() / judged.min() - 1.0)})
    return out


def contention_report(frame) -> dict:
    """What disturbed a run, from its raw summary frame (every purpose): ``verdict`` (quiet |
    disturbed | not measured: an older raw file), ``reasons``, ``drift`` (:func:`drift_table`, and its largest range),
    ``rep_cv_median`` (the points' run-to-run spread), ``other_load_per_core`` (median and
    max of the load average less the run's own threads, per logical core) and ``lines`` to
    print."""
    rep: dict[str, Any] = {"drift_tolerance": DRIFT_TOLERANCE,
                           "spread_tolerance": SPREAD_TOLERANCE,
                           "load_tolerance": LOAD_TOLERANCE}
    drift = drift_table(frame)
    rep["drift"] = drift
    rep["drift_range_max"] = max((r["range"] for r in drift), default=math.nan)
    cal = frame[frame.get("purpose", "calibration") == "calibration"] if "purpose" in frame \
        else frame
    if "t_std_s" in cal and "t_median_s" in cal and len(cal):
        cv = (cal["t_std_s"] / cal["t_median_s"]).to_numpy(float)
        cv = cv[np.isfinite(cv)]
        rep["rep_cv_median"] = float(np.median(cv)) if cv.size else math.nan
    else:
        rep["rep_cv_median"] = math.nan
    rep["other_load_per_core"] = _other_load(frame)
    reasons = []
    if rep["drift_range_max"] > DRIFT_TOLERANCE:
        worst = max(drift, key=lambda r: r["range"])
        reasons.append(f"reference point {worst['point']} measured {100 * worst['range']:.0f}% "
                       f"apart across the run (tolerance {100 * DRIFT_TOLERANCE:.0f}%)")
    if rep["rep_cv_median"] > SPREAD_TOLERANCE:
        reasons.append(f"repetitions spread {100 * rep['rep_cv_median']:.1f}% (median CV; "
                       f"tolerance {100 * SPREAD_TOLERANCE:.0f}%)")
    load = rep["other_load_per_core"]
    if load and load.get("median", 0.0) > LOAD_TOLERANCE:
        reasons.append(f"other processes kept {load['median']:.2f} threads per core busy "
                       f"(median; max {load['max']:.2f}; tolerance {LOAD_TOLERANCE:g})")
    measured = bool(drift) or bool(load)
    rep["verdict"] = "disturbed" if reasons else ("quiet" if measured else "not measured")
    rep["reasons"] = reasons
    rep["lines"] = contention_lines(rep)
    return rep


def _other_load(frame) -> dict:
    """Median and max over points of (1-minute load - the run's own threads) per core."""
    if "load_1m" not in frame or not frame["load_1m"].notna().any():
        return {}
    load = frame["load_1m"].to_numpy(float)
    own = frame["torch_threads"].fillna(1).to_numpy(float) if "torch_threads" in frame else 1.0
    cores = frame["logical_cores"].fillna(1).to_numpy(float) if "logical_cores" in frame \
        else float(os.cpu_count() or 1)
    other = np.maximum(load - own, 0.0) / np.maximum(cores, 1.0)
    other = other[np.isfinite(other)]
    if not other.size:
        return {}
    return {"median": float(np.median(other)), "max": float(np.max(other))}


def contention_lines(rep: dict) -> list[str]:
    """The report in a few lines for the terminal."""
    drift = ", ".join(f"{r['point'].split('__')[0]} {100 * r['range']:.1f}% over {r['n']}"
                      for r in rep["drift"]) or "no reference points repeated"
    load = rep["other_load_per_core"]
    load_t = (f"other load {load['median']:.2f} per core (max {load['max']:.2f})" if load
              else "load not recorded")
    head = (f"machine {rep['verdict']}: reference drift {drift}; repetitions spread "
            f"{100 * rep['rep_cv_median']:.1f}% (median CV); {load_t}")
    if rep["verdict"] == "not measured":
        return [f"machine load not measured (these points record neither load nor repeated "
                f"reference points); repetitions spread {100 * rep['rep_cv_median']:.1f}% "
                "(median CV)"]
    if rep["verdict"] == "quiet":
        return [head]
    return [head, "WARNING: measured on a disturbed machine (" + "; ".join(rep["reasons"])
            + "): constants fitted from it mix faster and slower stretches; measure again when "
              "the machine is quiet (a new --out), and compare"]
