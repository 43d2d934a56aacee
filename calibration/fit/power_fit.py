"""Power-state constants from measured windows, in closed form (no torch, no lmfit).

The windows (:mod:`qtsim.calibration.probes.power_states`; on a CPU the bandwidth and GEMM probes
stand in for streaming and GEMM) each hold the device in one state, so the power model
(:mod:`qtsim.model.power`, eq. P.1-P.2: busy power = p_awake + E_dyn / D, the device busy the
whole window) solves directly:

    p_idle_w  = P(deep idle)
    p_awake_w = P(awake)
    e_byte_j  = (P(stream) - p_awake) / (bytes/s)(stream)
    e_flop_j  = (P(gemm) - p_awake - e_byte (bytes/s)(gemm)) / (FLOP/s)(gemm)
    p_cap_w   = the enforced power limit: NVML's on a GPU, RAPL's PL1 on a CPU

P is the mean over a point's windows of E_i / d_i from the best real meter it has (NVML counter,
RAPL, then NVML polling; never the HLI estimate). Its standard error is the windows' standard
error of the mean, floored by the counter's resolution (update period tau: P tau / sqrt(6) per
window, from the two window edges), and is propagated through the formulas above. A derived
constant significantly below 0 is physically impossible: it is left out with the reason (the
energy stage then fits it on the linear probes); within 2 sigma of 0 it is held at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qtsim.calibration.measure.nvml import POWER_CAP_REASONS
from qtsim.calibration.probes.power_states import gemm_traffic_bytes

#: real meters in order of preference (the HLI estimate never measures a power state)
METER_ORDER = ("nvml_counter", "rapl", "nvml_poll")
NVML_COUNTER_PERIOD_S = 0.1  # assumed where the update period was not measured (NVML docs)
CAPPED_FRACTION = 0.97  # a window within 3% of the enforced limit is power-capped
UNITS = {"p_idle_w": "W", "p_awake_w": "W", "e_byte_j": "J/byte", "e_flop_j": "J/FLOP",
         "p_cap_w": "W"}


@dataclass(frozen=True)
class StatePower:
    """One state's measured power: ``power_w`` ± ``sem_w`` from ``meter`` over ``n_windows``
    windows of point ``point_id``, with the work rates the device ran at meanwhile."""

    state: str
    meter: str
    power_w: float
    sem_w: float
    bytes_per_s: float
    flops_per_s: float
    point_id: str
    n_windows: int
    window_s: float
    row: dict

    def describe(self) -> str:
        return (f"{self.point_id}: {self.n_windows} x {self.window_s:.3g} s windows, "
                f"{self.meter}, {self.power_w:.4g} ± {self.sem_w:.2g} W")


@dataclass(frozen=True)
class PowerConstant:
    """A power-model constant derived from the windows, with the basis naming them."""

    value: float
    stderr: float
    unit: str
    basis: str
    meter: str


def _num(row, key, default=math.nan) -> float:
    v = row.get(key, default)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _meter(row) -> str | None:
    return next((m for m in METER_ORDER if math.isfinite(_num(row, f"p_mean_w_{m}"))), None)


def _resolution_w(row, meter: str, power_w: float, n: int) -> float:
    """Standard error of a mean over ``n`` windows from the counter's update period alone."""
    if meter != "nvml_counter":
        return 0.0
    tau = _num(row, "counter_period_s", NVML_COUNTER_PERIOD_S)
    d = _num(row, "t_median_s", 0.0)
    return power_w * tau / math.sqrt(6.0) / d / math.sqrt(n) if d > 0 else 0.0


def _state_power(state: str, row, notes: list[str]) -> StatePower | None:
    meter = _meter(row)
    pid = str(row.get("point_id", "?"))
    if meter is None:
        notes.append(f"power state {state} ({pid}): no real meter reading (the HLI estimate "
                     "cannot see a power state); not used")
        return None
    n = int(_num(row, "n_reps", 1))
    p, sem = _num(row, f"p_mean_w_{meter}"), _num(row, f"p_sem_w_{meter}")
    if n < 2 or not math.isfinite(sem):
        notes.append(f"power state {state} ({pid}): one window, no spread to take a stderr "
                     "from; not used")
        return None
    flops = _num(row, "flops_per_s", 0.0)
    bytes_ = _num(row, "bytes_per_s", math.nan)
    if row.get("kind") == "membw":
        bytes_ = _num(row, "bandwidth_bytes_per_s")
    elif row.get("kind") == "gemm":
        bytes_ = gemm_traffic_bytes(int(_num(row, "in_features"))) / _num(row, "t_call_s")
    sem = max(sem, _resolution_w(row, meter, p, n))
    window = _num(row, "t_median_s")
    return StatePower(state, meter, p, sem, 0.0 if math.isnan(bytes_) else bytes_, flops,
                      pid, n, window, dict(row))


def _rows(frame, kind: str):
    if "kind" not in frame:
        return []
    return [r for _, r in frame[frame["kind"] == kind].iterrows()]


def state_powers(frame, notes: list[str]) -> dict[str, StatePower]:
    """Every state's :class:`StatePower` the frame holds (a ``RawStore.summary_frame()``):
    ``power_state`` points first; streaming and GEMM fall back to the largest ``membw`` and
    the fastest ``gemm`` probe. A point whose premise failed (``state_exclusion``) is left
    out, its reason noted."""
    out: dict[str, StatePower] = {}
    for row in _rows(frame, "power_state"):
        state, why = str(row.get("state")), row.get("state_exclusion")
        if isinstance(why, str) and why:
            notes.append(f"power state {state} ({row.get('point_id')}) not used: {why}")
            continue
        if state in out:
            notes.append(f"power state {state}: {row.get('point_id')} ignored, "
                         f"{out[state].point_id} used")
            continue
        sp = _state_power(state, row, notes)
        if sp is not None:
            out[state] = sp
    idle, awake = out.get("deep_idle"), out.get("awake")
    uuids = [s.row.get("nvml_uuid") for s in (idle, awake) if s is not None]
    if len(uuids) == 2 and all(isinstance(u, str) and u for u in uuids) and uuids[0] != uuids[1]:
        notes.append(f"power state deep_idle ({idle.point_id}) not used: measured on {uuids[0]}, "
                     f"the other states on {uuids[1]} (NVML and CUDA number GPUs differently)")
        del out["deep_idle"]
    for state, kind, key in (("stream", "membw", "size_bytes"), ("gemm", "gemm", "flops_per_s")):
        rows = [r for r in _rows(frame, kind) if _meter(r)]
        if state not in out and rows:
            sp = _state_power(state, max(rows, key=lambda r: _num(r, key, 0.0)), notes)
            if sp is not None:
                out[state] = sp
    return out


def _held(name: str, value: float, se: float, basis: str, meter: str,
          notes: list[str]) -> PowerConstant | None:
    """The constant, or None when it is significantly negative (said in ``notes``)."""
    if value < -2 * se:
        notes.append(f"{name} from the power states is {value:.3g} ± {se:.2g}, significantly "
                     f"negative ({basis}): not used")
        return None
    if value < 0:
        notes.append(f"{name}: {value:.3g} ± {se:.2g} from the power states, consistent with 0: "
                     "held at 0")
        value = 0.0
    return PowerConstant(value, se, UNITS[name], basis, meter)


LIMIT_SOURCE = {"cuda": "NVML enforced power limit (nvmlDeviceGetEnforcedPowerLimit)",
                "cpu": "RAPL package power limit PL1 (constraint_0_power_limit_uw)"}


def _power_cap(states: dict[str, StatePower], notes: list[str]) -> PowerConstant | None:
    """``p_cap_w`` from the limit the device enforces (NVML's on a GPU, RAPL's PL1 on a CPU)
    where the power-state points recorded one; a GEMM window held at that limit is noted (its
    e_flop_j is then the capped clock's)."""
    pts = [s for s in states.values() if s.row.get("kind") == "power_state"]
    limits = sorted({x for x in (_num(s.row, "power_limit_w") for s in pts)
                     if math.isfinite(x) and x > 0})
    if not limits:
        if pts:
            notes.append("p_cap_w: the device recorded no enforced power limit; the profile's "
                         "TDP stands in for it (a busy power above it stretches device time)")
        return None
    if len(limits) > 1:
        notes.append(f"the enforced power limit changed during calibration ({limits} W): "
                     "p_cap_w is the lowest")
    cap = limits[0]
    g = states.get("gemm")
    if g is not None and g.row.get("kind") == "power_state":
        reasons = int(_num(g.row, "clock_event_reasons_any", -1))
        if g.power_w >= CAPPED_FRACTION * cap or (reasons > 0 and reasons & POWER_CAP_REASONS):
            notes.append(f"gemm windows ran at the power limit ({g.power_w:.4g} W of {cap:.4g} W"
                         f"; clock event reasons {reasons:#x}): e_flop_j is the energy per FLOP "
                         "at the capped clocks, which the model's capping (eq. P.3) assumes "
                         "clock-independent")
    src = LIMIT_SOURCE.get(str(pts[0].row.get("backend")), "enforced power limit")
    return PowerConstant(cap, 0.0, "W", f"{src} recorded with {pts[0].point_id}",
                         "nvml" if pts[0].row.get("backend") == "cuda" else "rapl")


def power_constants(frame, notes: list[str]) -> dict[str, PowerConstant]:
    """``p_idle_w``, ``p_awake_w``, ``e_byte_j``, ``e_flop_j`` and ``p_cap_w`` wherever the
    windows in ``frame`` determine them (module docstring); the others are absent."""
    s = state_powers(frame, notes)
    out: dict[str, PowerConstant] = {}

    def add(name, value, se, basis, meter):
        c = _held(name, value, se, basis, meter, notes)
        if c is not None:
            out[name] = c

    for name, state in (("p_idle_w", "deep_idle"), ("p_awake_w", "awake")):
        if state in s:
            add(name, s[state].power_w, s[state].sem_w, f"measured: {s[state].describe()}",
                s[state].meter)
    a, st, g = s.get("awake"), s.get("stream"), s.get("gemm")
    if a is not None and st is not None and st.bytes_per_s > 0:
        add("e_byte_j", (st.power_w - a.power_w) / st.bytes_per_s,
            math.hypot(st.sem_w, a.sem_w) / st.bytes_per_s,
            f"measured: (P(stream) - P(awake)) / ({st.bytes_per_s:.4g} bytes/s); "
            f"{st.describe()}; awake {a.point_id}", st.meter)
    if a is not None and g is not None and g.flops_per_s > 0 and "e_byte_j" in out:
        _add_e_flop(add, a, st, g, out["e_byte_j"])
    if "p_idle_w" in out and "p_awake_w" in out and \
            out["p_awake_w"].value < out["p_idle_w"].value - 2 * out["p_awake_w"].stderr:
        notes.append(f"awake power {out['p_awake_w'].value:.4g} W is below deep idle "
                     f"{out['p_idle_w'].value:.4g} W: the awake loop did not hold the clocks up")
    cap = _power_cap(s, notes)
    if cap is not None:
        out["p_cap_w"] = cap
    return out


def _add_e_flop(add, a: StatePower, st: StatePower, g: StatePower, e_byte: PowerConstant):
    """e_flop_j = (P_g - P_a - e_byte R_g) / F_g, with e_byte = (P_s - P_a) / R_s expanded so
    that P_a's error enters once: P_g - P_a (1 - R_g/R_s) - P_s R_g/R_s."""
    k = g.bytes_per_s / st.bytes_per_s
    value = (g.power_w - a.power_w - e_byte.value * g.bytes_per_s) / g.flops_per_s
    se = math.sqrt(g.sem_w**2 + (a.sem_w * (1 - k))**2 + (st.sem_w * k)**2) / g.flops_per_s
    add("e_flop_j", value, se,
        f"measured: (P(gemm) - P(awake) - e_byte x {g.bytes_per_s:.4g} bytes/s) / "
        f"({g.flops_per_s:.4g} FLOP/s); {g.describe()}", g.meter)
