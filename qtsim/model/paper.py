"""The paper's model, implemented exactly as published ("paper" mode).

Han, Liu, Wang, Han, Li, *The Quantization Trap: Breaking Linear Scaling Laws in Multi-Hop
Reasoning* (``shared/seeds/quantization-trap-paper.md``). Equation numbers are the paper's; where
the body and the appendix number the same equation differently both are given (body/appendix).

All functions are pure and broadcast over numpy arrays. The paper's symbols map as:
``k`` = K atomic hops (tokens), ``bits`` = p, ``native_bits`` = pi, ``alpha_j_per_bit`` = alpha,
``gamma_j`` = gamma, ``phi_j`` = phi(h, p).

Known inconsistency, kept on purpose for reproduction: eq. 19 amortises only the weight-movement
term over the batch, eq. 23 amortises the casting term instead. ``qtsim.model.physical`` resolves this
from measurement rather than choosing.
"""

from __future__ import annotations

import numpy as np

NATIVE_BITS = 16


def energy_functional_j(k, gamma_j, alpha_j_per_bit, bits, batch, phi_j):
    """Energy per query, eq. 19: E(p, B) = K [gamma + alpha p / B + phi(h, p)].

    Parameters
    ----------
    k : atomic hops (generated tokens) per query, dimensionless
    gamma_j : precision-independent energy per hop, J
    alpha_j_per_bit : weight-movement energy per hop per bit of precision, J/bit
    bits : weight precision p, bits
    batch : batch size B, sequences
    phi_j : casting (dequantisation) energy per hop, J (0 at native precision)

    Returns
    -------
    energy per query, J
    """
    return k * (gamma_j + alpha_j_per_bit * bits / batch + phi_j)


def energy_gradient_bits(k, alpha_j_per_bit, batch, dphi_dbits):
    """dE/dp, eq. 20 (appendix): K [alpha / B + d phi / d p], J/bit. Negative means trapped."""
    return k * (alpha_j_per_bit / batch + dphi_dbits)


def b_star(alpha_j_per_bit, phi_j, bits, native_bits=NATIVE_BITS):
    """Critical batch threshold, eq. 10 (body) / eq. 18 (appendix): B* = alpha (pi - p) / phi.

    Where the quantized and native curves of eq. 19 meet. Note the direction: under eq. 19,
    E_p - E_pi = K [phi - alpha (pi - p) / B] grows with B, so the quantized configuration costs
    *more* energy per query *above* B* and less below it, the opposite of what Thm. 4.3 / A.4
    states (``qtsim reproduce`` reports this as check C15). Returns 0 where phi <= 0 (no
    casting cost: quantized is never more expensive under eq. 19).
    """
    alpha = np.asarray(alpha_j_per_bit, dtype=float)
    phi = np.asarray(phi_j, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = alpha * (native_bits - np.asarray(bits, dtype=float)) / phi
    return np.where(phi > 0, out, 0.0)


def cor_from_latency(tau_p_s, tau_ref_s):
    """Casting Overhead Ratio from per-hop latencies, eq. 8 with eq. 13-14: tau_p / tau_ref - 1."""
    return np.asarray(tau_p_s, dtype=float) / np.asarray(tau_ref_s, dtype=float) - 1.0


def cor_from_tps(tps_ref, tps_p):
    """Casting Overhead Ratio from throughputs, eq. 9 (body) / eq. 12 (appendix): TPS_ref/TPS_p - 1."""
    return np.asarray(tps_ref, dtype=float) / np.asarray(tps_p, dtype=float) - 1.0


def hop_latency_s(tps):
    """Average latency per hop, Lemma 4.1 / A.2: tau = 1 / TPS, s."""
    return 1.0 / np.asarray(tps, dtype=float)


def cor_batch(a_cast_s, a_comp_s, batch):
    """Batch form of COR, eq. 22: a_cast(p) / (a_comp(p) B)."""
    return np.asarray(a_cast_s, dtype=float) / (np.asarray(a_comp_s, dtype=float) * batch)


def energy_amortised_j(k, e_comp_j, e_cast_j, batch):
    """Amortised energy per query, eq. 23: E(p, B) = K (e_comp + e_cast / B), J."""
    return k * (np.asarray(e_comp_j, dtype=float) + np.asarray(e_cast_j, dtype=float) / batch)


def hli_energy_j(tdp_w, duration_s, n=1):
    """Hardware-Latency Integration, sec. 3.1: E_q = P_TDP * D / N, J per query.

    Not a measurement: it charges the board's TDP for the whole duration. It scales exactly with
    latency, so HLI energy ratios between configurations are latency ratios.
    """
    return np.asarray(tdp_w, dtype=float) * np.asarray(duration_s, dtype=float) / n


def integrated_energy_j(power_w, t_s, n=1):
    """Energy per query from power telemetry, eq. 4: (1/N) integral of P dt (trapezoid), J."""
    return float(np.trapezoid(np.asarray(power_w, float), np.asarray(t_s, float))) / n
