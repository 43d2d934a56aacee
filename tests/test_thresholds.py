"""B* and N* of the Monte-Carlo draws: bracketed and refined, checked against every grid point.

``refined_crossings`` evaluates every COARSE-th grid point of every draw, then the points inside
the coarse intervals where a draw changes sign or comes near zero. The oracle here is the
whole grid evaluated for every draw (``coarse=1``) and ``crossing`` / ``n_sign_changes`` on it.
"""

import numpy as np
import pytest

from qtsim.model.architecture import load_architecture
from qtsim.model.workload import BnbSettings, Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate import thresholds as T
from qtsim.simulate.simulator import Simulator

DRAW_FIELDS = ("low", "high", "median", "p_no_crossing", "p_trapped_everywhere",
               "p_never_trapped", "p_multiple_crossings")

# a kernel-switch crossing (nf4 on L4), curves that graze zero (int8 on the Blackwell board,
# LLM.int8() without outliers on the H200: draws whose curve dips across zero and back)
CASES = [("l4", "mistral-7b", "nf4", BnbSettings()),
         ("rtx-pro-6000-blackwell", "qwen2.5-14b", "int8", BnbSettings()),
         ("h200", "mistral-7b", "int8", BnbSettings(int8_threshold=0.0)),
         ("rtx-pro-6000-blackwell", "qwen2.5-14b", "nf4", BnbSettings(double_quant=True))]


@pytest.mark.parametrize("gpu,model,prec,bnb", CASES)
def test_refined_draws_equal_the_whole_grid(gpu, model, prec, bnb):
    sim = Simulator(load_profile(gpu), n_draws=400)
    arch = load_architecture(model)
    w = Workload(prec, np.array([1.0, 8.0, 64.0]), 256, 128, bnb)
    one = T.map_counts(arch.counts(), np.atleast_1d)
    for rows, prefix in ((lambda c: T.b_star_rows(sim, one, w, draws=True, details=True, coarse=c),
                          "b_star"),
                         (lambda c: T.n_star_rows(sim, arch, w, draws=True, details=True, coarse=c),
                          "n_star")):
        full, refined = rows(1), rows(T.COARSE)
        for f in DRAW_FIELDS:
            np.testing.assert_array_equal(refined[f"{prefix}_{f}"], full[f"{prefix}_{f}"],
                                          err_msg=f"{gpu} {model} {prec} {prefix}_{f}")


def test_refined_crossings_on_curves_that_dip_across_zero():
    """Synthetic draws: curves smooth on the scale of a coarse interval (as the model's are
    away from kernel switches, which are always evaluated), some crossing once, some dipping
    across zero and back between two coarse points (caught by the near-zero rule), some
    never crossing. (A bump narrower than a coarse interval, far from zero at both its ends,
    would hide: the limit the docstring of ``refined_crossings`` states.)"""
    x = np.geomspace(1.0, 1e3, 120)
    lx = np.log(x)[None, None, :]
    rng = np.random.default_rng(1)
    n = 300
    root = rng.uniform(0.5, 6.5, (n, 1, 1))
    width = rng.uniform(0.25, 1.0, (n, 1, 1))  # log x; a coarse interval is 0.23
    depth = rng.uniform(0.0, 2.0, (n, 1, 1))
    # a slope through a root, plus a narrow bump that may push the curve back across zero
    curve = (root - lx) + depth * np.exp(-0.5 * ((lx - rng.uniform(0, 7, (n, 1, 1))) / width) ** 2)
    curve[: n // 10] = np.abs(curve[: n // 10]) + 0.1  # never crosses
    # grazing curves: negative only on a stretch narrower than a coarse interval (0.23 in log x)
    c, r = rng.uniform(0.5, 6.5, (n // 3, 1, 1)), rng.uniform(0.02, 0.1, (n // 3, 1, 1))
    curve[-(n // 3):] = (lx - c) ** 2 - r ** 2
    calls = []

    def at(idx):
        calls.append(np.size(idx) * n)
        return curve[..., idx]

    def picked(draw, row, idx):
        calls.append(np.size(idx))
        return curve[draw[:, None], row[:, None], idx]

    val, kind, ncross = T.refined_crossings(x, at, picked)
    v_full, k_full = T.crossing(x, curve)
    np.testing.assert_array_equal(val, v_full)
    np.testing.assert_array_equal(kind, k_full)
    np.testing.assert_array_equal(ncross, T.n_sign_changes(curve))
    assert (ncross > 1).any() and (kind == 2).any()  # the cases the test is about occur
    assert sum(calls) < 0.6 * curve.size  # and most grid points were not evaluated
