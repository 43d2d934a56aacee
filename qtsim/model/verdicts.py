"""The trap test and the quantized-against-native ratios: one home for each rule.

Prop. 3.2 of the paper: a quantized configuration is *trapped* on a criterion when it does worse
than its native 16-bit reference on that criterion: more energy per query, fewer tokens per
second, or a lower Sustainability Index (SI(p) < SI(16) = 1). Every command (trap, compare,
simulate surfaces, validation) asks these functions, never its own copy.
"""

from __future__ import annotations

import math

import numpy as np

from qtsim.model import paper

#: a verdict is stated without "likely" only when at least this share of the draws agree
SURE = 0.84
#: SI is compared with 1 with this tolerance (SI(native) = 1 up to rounding)
SI_TOL = 1e-12


def ratios(q: dict, n: dict) -> dict:
    """Quantized (``q``) against native (``n``) predictions on the same workload.

    ``cor``: eq. 9 from step times; ``energy_ratio``: J/query (power model), quantized /
    native; ``energy_ratio_hli``: the same with the paper's HLI energy; ``speed_ratio``: tok/s,
    quantized / native; ``delta_j``: quantized minus native J/query (> 0: trapped on energy).
    """
    return {
        "cor": paper.cor_from_latency(q["step_s"], n["step_s"]),
        "energy_ratio": q["j_per_query"] / n["j_per_query"],
        "energy_ratio_hli": q["j_per_query_hli"] / n["j_per_query_hli"],
        "speed_ratio": q["tok_per_s"] / n["tok_per_s"],
        "delta_j": q["j_per_query"] - n["j_per_query"],
    }


def costs_more(quantized, native):
    """Trapped on energy (Prop. 3.2): quantized costs more per query than native."""
    return np.asarray(quantized) > np.asarray(native)


def slower(speed_ratio):
    """Trapped on time: quantized tok/s below native (speed ratio < 1)."""
    return np.asarray(speed_ratio) < 1.0


def si_trapped(si):
    """Trapped on the Sustainability Index: SI(p) < SI(native) = 1 (Prop. 3.2)."""
    return np.asarray(si) < 1.0 - SI_TOL


def verdict(central_trapped: bool, share_trapped: float) -> str:
    """'trapped' / 'not trapped' where the central prediction and at least :data:`SURE` of the
    draws agree, else 'likely (not) trapped (uncertain)' after the central prediction."""
    if central_trapped and share_trapped >= SURE:
        return "trapped"
    if not central_trapped and share_trapped <= 1 - SURE:
        return "not trapped"
    return "likely trapped (uncertain)" if central_trapped else "likely not trapped (uncertain)"


def json_number(x):
    """A float for JSON: NaN -> None, +-inf -> "inf" / "-inf"."""
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x
