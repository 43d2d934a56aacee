"""Budget units planners work in, from qtsim's per-query predictions. Pure arithmetic, no I/O.

Inputs are what the simulator predicts: energy per query in joules at the GPU board (the power
model: what an NVML energy counter reads; on a CPU profile the CPU package's, from RAPL or
estimated as TDP x time: :func:`energy_scope` says which) and throughput in generated tokens per
second for the whole batch. Every figure depends on stated assumptions
(:class:`BudgetAssumptions`), which the reports print beside it:

- ``pue``: power usage effectiveness of the facility (facility energy / IT energy, >= 1). With
  1.0 (the default) the figures are GPU-board energy only: no host CPU, memory, fans, cooling.
- ``scope``: what the energy covers (:func:`energy_scope`), the device's own label.
- ``grid_gco2_per_kwh``: carbon intensity of the electricity, gCO2e per kWh (location- and
  hour-dependent; none assumed by default).
- ``usd_per_hour``: what one GPU costs per hour (rental or amortised), USD; the $ figure assumes
  the GPU is kept busy at the predicted throughput the whole hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qtsim.errors import QtsimError

J_PER_KWH = 3.6e6
SECONDS_PER_HOUR = 3600.0
#: an average month: 365.25 days x 24 h / 12, hours
HOURS_PER_MONTH = 730.5
SECONDS_PER_MONTH = HOURS_PER_MONTH * SECONDS_PER_HOUR
G_PER_TONNE = 1e6

#: what an energy figure covers, by device and meter (:func:`energy_scope`)
GPU_BOARD = "GPU board energy"
GPU_NO_METER = "GPU board energy estimated as TDP x time (no NVML meter)"
CPU_RAPL = "CPU package energy (RAPL)"
CPU_NO_RAPL = "CPU package energy estimated as TDP x time (no RAPL)"


def energy_scope(device_type: str | None, meter: str | None) -> str:
    """What an energy figure covers, in words, from the device type (``cpu``, else a GPU) and
    the meter behind the profile's power model (``[fit] energy_method``: ``rapl``,
    ``nvml_counter``, ``nvml_poll``, ``hli``; None for a spec profile, whose power model is
    the GPU board's): the one place every report takes this label from."""
    if device_type == "cpu":
        return CPU_RAPL if meter == "rapl" else CPU_NO_RAPL
    return GPU_NO_METER if meter == "hli" else GPU_BOARD


def profile_energy_scope(profile) -> str:
    """:func:`energy_scope` of a hardware profile: its device type and its energy meter."""
    return energy_scope(profile.hardware.get("device_type"), profile.fit.get("energy_method"))


@dataclass(frozen=True)
class BudgetAssumptions:
    """The assumptions behind the budget figures (units in the field names' docs above)."""

    pue: float = 1.0
    grid_gco2_per_kwh: float | None = None
    usd_per_hour: float | None = None
    scope: str = GPU_BOARD  # what the energy covers (:func:`energy_scope`)

    def __post_init__(self):
        if not (isinstance(self.pue, (int, float)) and math.isfinite(self.pue) and self.pue >= 1.0):
            raise QtsimError(f"--pue {self.pue!r}: must be a number >= 1 (facility energy / IT energy)")
        for name, v in (("--grid-gco2-per-kwh", self.grid_gco2_per_kwh),
                        ("--usd-per-hour", self.usd_per_hour)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise QtsimError(f"{name} {v!r}: must be a finite number >= 0")

    def to_dict(self) -> dict:
        return {"pue": self.pue, "grid_gco2_per_kwh": self.grid_gco2_per_kwh,
                "usd_per_hour": self.usd_per_hour, "energy_scope": self.scope,
                "energy_boundary": self.scope if self.pue == 1.0 else
                f"{self.scope} x PUE {self.pue:g} (facility overhead)"}

    def describe(self) -> str:
        """One line naming every assumption, printed beside the figures."""
        parts = [f"PUE {self.pue:g}" + (f" ({self.scope} only)" if self.pue == 1.0 else
                                        f" (facility energy = {self.pue:g} x {self.scope})")]
        parts.append(f"grid {self.grid_gco2_per_kwh:g} gCO2e/kWh" if self.grid_gco2_per_kwh
                     is not None else "no grid intensity given (--grid-gco2-per-kwh)")
        parts.append(f"${self.usd_per_hour:g}/GPU-hour, busy the whole hour" if self.usd_per_hour
                     is not None else "no GPU price given (--usd-per-hour)")
        return "; ".join(parts)


def kwh(energy_j, pue: float = 1.0):
    """Facility energy of ``energy_j`` joules at the GPU board, kWh: J x PUE / 3.6e6 J/kWh."""
    return energy_j * pue / J_PER_KWH


def kwh_per_million_queries(j_per_query, pue: float = 1.0):
    """Energy of one million queries, kWh: J/query x PUE x 1e6 / 3.6e6 J/kWh."""
    return kwh(j_per_query * 1e6, pue)


def tco2e(kwh_, grid_gco2_per_kwh: float):
    """Emissions of ``kwh_`` kWh of facility energy, tonnes CO2e: kWh x gCO2e/kWh / 1e6 g/t."""
    return kwh_ * grid_gco2_per_kwh / G_PER_TONNE


def usd_per_month(gpus, usd_per_hour: float):
    """What ``gpus`` GPUs cost in a month (:data:`HOURS_PER_MONTH`), USD: GPUs x $/h x 730.5 h,
    whether they are busy or not (a rented or reserved GPU is paid for by the hour)."""
    return gpus * usd_per_hour * HOURS_PER_MONTH


def gco2e_per_query(j_per_query, grid_gco2_per_kwh: float, pue: float = 1.0):
    """Emissions of one query, gCO2e: J/query x PUE / 3.6e6 J/kWh x gCO2e/kWh."""
    return kwh(j_per_query, pue) * grid_gco2_per_kwh


def usd_per_million_tokens(tok_per_s, usd_per_hour: float):
    """GPU cost of one million generated tokens, USD: $/h / (tok/s x 3600 s/h) x 1e6."""
    return usd_per_hour / (tok_per_s * SECONDS_PER_HOUR) * 1e6


def figures(j_per_query, tok_per_s, a: BudgetAssumptions) -> dict:
    """Every budget figure the assumptions allow (``None`` where an assumption is missing)."""
    return {
        "kwh_per_million_queries": float(kwh_per_million_queries(j_per_query, a.pue)),
        "gco2e_per_query": (float(gco2e_per_query(j_per_query, a.grid_gco2_per_kwh, a.pue))
                            if a.grid_gco2_per_kwh is not None else None),
        "usd_per_million_tokens": (float(usd_per_million_tokens(tok_per_s, a.usd_per_hour))
                                   if a.usd_per_hour is not None else None),
    }
