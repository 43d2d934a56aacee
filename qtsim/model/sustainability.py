"""The Sustainability Index (SI) and its pillars, paper sec. 3 (eq. 1-6, Remark 3.1, Prop. 3.2).

Pillars are normalised against a reference configuration (the native 16-bit anchor), so the
anchor's own pillars are all 1 and its SI is 1. A quantized configuration's E_SI and the ratio
form of S_SI exceed 1 when it beats the anchor; the paper's [0, 1] range holds only for
configurations no better than the anchor.

Capping (:data:`CAPPING`): the paper declares the sustainability vector in [0, 1]^3 (sec. 3)
and T_SI in [0, 1] (eq. 2), but only eq. 5 caps anything (min(1, ...)); eq. 3 and the
same-grid ratio E_ref/E (which the paper's own worked example uses) have no cap. qtsim
implements the equations as written, uncapped, and reports the capped variant
(:func:`capped_si`) beside it.

Units (:func:`s_si_log_by_unit`): eq. 5's log(1 + chi_ref) / log(1 + chi) is not
scale-invariant. With chi in kgCO2e per query (about 1e-4) log(1 + x) ~ x and it equals
E_ref/E; in gCO2e or in joules the log compresses the ratio towards 1.
"""

from __future__ import annotations

import numpy as np

DEFAULT_WEIGHTS = (0.34, 0.33, 0.33)  # (w_T, w_E, w_S), sec. 3.2
DEFAULT_ALPHA_E = 0.5  # eq. 3
J_PER_KWH = 3.6e6
#: grid intensity used where none is given, kgCO2e/kWh (an assumption: about the world average)
DEFAULT_CARBON_KG_PER_KWH = 0.4
CAPPING = ("uncapped as implemented: the paper declares every pillar in [0, 1] (sec. 3, eq. 2) "
           "but caps only eq. 5's log form (min(1, ...)); E_SI (eq. 3) and the same-grid S_SI "
           "ratio exceed 1 where quantized beats the anchor. si_capped = w . min(v, 1).")


def t_si(accuracy, accuracy_ref):
    """Trust pillar, eq. 2: preservation ratio of the task metric, G(m) / G(m_ref)."""
    return np.asarray(accuracy, dtype=float) / np.asarray(accuracy_ref, dtype=float)


def throughput_gain(tps, tps_ref):
    """eta = TPS / TPS_ref (sec. 3.1 II)."""
    return np.asarray(tps, dtype=float) / np.asarray(tps_ref, dtype=float)


def residency_gain(vram_ref_bytes, vram_peak_bytes):
    """rho = V_ref / V_peak (sec. 3.1 II)."""
    return np.asarray(vram_ref_bytes, dtype=float) / np.asarray(vram_peak_bytes, dtype=float)


def e_si(eta, rho, alpha=DEFAULT_ALPHA_E):
    """Economic pillar, eq. 3: weighted harmonic mean (alpha / eta + (1 - alpha) / rho)^-1."""
    eta = np.asarray(eta, dtype=float)
    rho = np.asarray(rho, dtype=float)
    return 1.0 / (alpha / eta + (1.0 - alpha) / rho)


def s_si_ratio(energy_ref_j, energy_j):
    """Energy pillar, same grid (sec. 3.1 III): E_ref / E. Worked example: 519.79/1110.56 = 0.468."""
    return np.asarray(energy_ref_j, dtype=float) / np.asarray(energy_j, dtype=float)


def caes_kg(energy_j, carbon_kg_per_kwh):
    """Carbon-Adjusted Energy Score chi = E_q x grid intensity (sec. 3.1 III), kgCO2e per query."""
    return np.asarray(energy_j, dtype=float) / J_PER_KWH * carbon_kg_per_kwh


def s_si_log(chi_ref, chi):
    """Energy pillar, log/carbon form, eq. 5: min(1, log(1 + chi_ref) / log(1 + chi))."""
    return np.minimum(1.0, np.log1p(np.asarray(chi_ref, float)) / np.log1p(np.asarray(chi, float)))


def s_si_log_by_unit(energy_ref_j, energy_j, carbon_kg_per_kwh=DEFAULT_CARBON_KG_PER_KWH) -> dict:
    """Eq. 5's S_SI with chi expressed in different units, to show its unit dependence.

    Keys: ``kgCO2e`` (the paper's unit), ``gCO2e``, ``J`` (chi = energy in joules, no carbon
    factor), and ``ratio`` (E_ref/E, the same-grid form the log form approaches as chi -> 0).
    """
    e_ref, e = float(energy_ref_j), float(energy_j)
    kg_ref, kg = float(caes_kg(e_ref, carbon_kg_per_kwh)), float(caes_kg(e, carbon_kg_per_kwh))
    return {"kgCO2e": float(s_si_log(kg_ref, kg)), "gCO2e": float(s_si_log(1e3 * kg_ref, 1e3 * kg)),
            "J": float(s_si_log(e_ref, e)), "ratio": e_ref / e}


def capped_si(t, e, s, weights=DEFAULT_WEIGHTS, policy="linear"):
    """SI with every pillar capped at 1, as the paper's [0, 1]^3 sustainability vector implies."""
    return sustainability_index(np.minimum(t, 1.0), np.minimum(e, 1.0), np.minimum(s, 1.0),
                                weights, policy)


def si_linear(t, e, s, weights=DEFAULT_WEIGHTS):
    """Compensatory (linear) policy, eq. 6: SI = w . v, sum(w) = 1."""
    w_t, w_e, w_s = _check_weights(weights)
    return w_t * np.asarray(t, float) + w_e * np.asarray(e, float) + w_s * np.asarray(s, float)


def si_geometric(t, e, s, weights=DEFAULT_WEIGHTS):
    """Bottleneck-intolerant (geometric) policy, Remark 3.1: SI = prod v_i^w_i."""
    w_t, w_e, w_s = _check_weights(weights)
    return (np.asarray(t, float) ** w_t) * (np.asarray(e, float) ** w_e) * (np.asarray(s, float) ** w_s)


def sustainability_index(t, e, s, weights=DEFAULT_WEIGHTS, policy="linear"):
    """SI under the named policy ("linear", eq. 6, or "geometric", Remark 3.1)."""
    if policy == "linear":
        return si_linear(t, e, s, weights)
    if policy == "geometric":
        return si_geometric(t, e, s, weights)
    raise ValueError(f"unknown SI policy {policy!r} (linear or geometric)")


def is_trap(si_by_bits: dict[int, float]) -> bool:
    """Prop. 3.2 on a discrete precision grid: trapped when SI rises with precision.

    ``si_by_bits`` maps bits (e.g. {16: 1.0, 8: 0.55, 4: 0.69}) to SI. The discrete gradient
    dSI/dp > 0 between the highest precision and every lower one means restoring precision
    improves sustainability: SI(16) > SI(p) for each p < 16.
    """
    top = max(si_by_bits)
    return all(si_by_bits[top] > v for b, v in si_by_bits.items() if b < top)


def si_gradient(si_hi, si_lo, bits_hi, bits_lo):
    """Finite-difference dSI/dp between two precisions (Prop. 3.2 / A.1), per bit."""
    return (np.asarray(si_hi, float) - np.asarray(si_lo, float)) / (bits_hi - bits_lo)


def _check_weights(weights):
    w = tuple(float(x) for x in weights)
    if len(w) != 3 or any(x < 0 for x in w) or not np.isclose(sum(w), 1.0, atol=1e-6):
        raise ValueError(f"SI weights must be three non-negative numbers summing to 1, got {weights}")
    return w


def pillars(q: dict, n: dict, t_si, policy: str = "linear", weights=DEFAULT_WEIGHTS) -> dict:
    """E_SI (eq. 3), S_SI (power model and HLI) and SI (eq. 6 / Remark 3.1) against native."""
    eta = throughput_gain(q["tok_per_s"], n["tok_per_s"])
    rho = residency_gain(n["peak_bytes"], q["peak_bytes"])
    e = e_si(eta, rho)
    s = s_si_ratio(n["j_per_query"], q["j_per_query"])
    s_hli = s_si_ratio(n["j_per_query_hli"], q["j_per_query_hli"])
    return {"t_si": np.broadcast_to(t_si, np.shape(e)), "e_si": e, "s_si": s, "s_si_hli": s_hli,
            "si": sustainability_index(t_si, e, s, weights, policy),
            "si_hli": sustainability_index(t_si, e, s_hli, weights, policy)}
