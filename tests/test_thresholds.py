"""B* and N* (qtsim/simulate/thresholds.py): the settings reach them, crossings are found, bands are
censored honestly, and an independent brute-force oracle agrees."""

from __future__ import annotations

import numpy as np
import pytest

from qtsim.model import physical
from qtsim.model.architecture import load_architecture
from qtsim.model.workload import BnbSettings, Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate import thresholds
from qtsim.simulate.simulator import Simulator
from qtsim.simulate.thresholds import all_crossings, censored_band

from .conftest import CPU_PROFILE


@pytest.mark.parametrize("bnb,precision", [(BnbSettings(double_quant=True), "nf4"),
                                           (BnbSettings(int8_threshold=0), "int8"),
                                           (BnbSettings(compute_dtype="fp16"), "nf4")])
def test_settings_reach_threshold_grids(bnb, precision):
    """The B*/N* grids evaluate through the simulator's settings (double_quant was dropped)."""
    prof = load_profile(path=CPU_PROFILE)  # calibrated: nf4dq, int8_t0, fp16 and bf16 paths
    arch = load_architecture("qwen3-0.6b")
    counts = thresholds.map_counts(arch.counts(), np.atleast_1d)
    w = Workload(precision, [1.0, 8.0], 64, 16)
    base = thresholds.grid_eval(Simulator(prof), counts, w)
    other = thresholds.grid_eval(Simulator(prof), counts, w.replace(bnb=bnb))
    assert not np.allclose(base["j_per_query"], other["j_per_query"])


def test_b_star_and_n_star_use_every_setting(monkeypatch):
    seen = []
    real = physical.query

    def spy(counts, workload, *a, **kw):
        seen.append((workload.precision, workload.bnb.double_quant, workload.bnb.int8_threshold))
        return real(counts, workload, *a, **kw)

    monkeypatch.setattr(physical, "query", spy)
    sim = Simulator(load_profile("l4"))
    bnb = BnbSettings(double_quant=True, int8_threshold=0)
    arch = load_architecture("mistral-7b")
    sim.b_star(arch.counts(), Workload("nf4", 1, 64, 16, bnb))
    sim.n_star(arch, Workload("int8", 4, 64, 16, bnb))
    quant = [s for s in seen if s[0] in ("nf4", "int8")]
    assert quant and all(dq is True and t == 0.0 for _, dq, t in quant)


def test_double_quant_moves_b_star_and_n_star():
    """Double quantisation reaches B* and N* through the Simulator (issue 14: it was dropped)."""
    prof = load_profile(path=CPU_PROFILE)  # calibrated: its own nf4dq kernel paths
    sim = Simulator(prof, n_draws=20)
    arch = load_architecture("qwen3-0.6b")
    plain = Workload("nf4", 1, 64, 16)
    dq = plain.replace(bnb=BnbSettings(double_quant=True))
    b_plain, b_dq = sim.b_star(arch.counts(), plain), sim.b_star(arch.counts(), dq)
    n_plain, n_dq = sim.n_star(arch, plain), sim.n_star(arch, dq)
    r_plain = thresholds.b_star_rows(sim, thresholds.map_counts(arch.counts(), np.atleast_1d),
                                     plain, details=True)
    r_dq = thresholds.b_star_rows(sim, thresholds.map_counts(arch.counts(), np.atleast_1d), dq,
                                  details=True)
    assert not np.allclose(r_plain["b_star_delta"], r_dq["b_star_delta"])
    assert (b_plain.value, b_plain.kind, n_plain.value, n_plain.kind) != (
        b_dq.value, b_dq.kind, n_dq.value, n_dq.kind)
    assert n_dq.memory["largest_fitting_quantized_params"] >= \
        n_plain.memory["largest_fitting_quantized_params"]


def test_censored_band_counts_no_crossing_draws():
    vals = np.array([10.0, 20.0, 30.0, np.inf, np.inf, np.inf, np.inf, np.inf, 0.0, 40.0])
    kinds = np.array([0, 0, 0, 2, 2, 2, 2, 2, 3, 0])
    lo, med, hi = censored_band(vals, kinds, 0)
    assert np.isinf(hi) and med == 40.0 and lo == 10.0  # sorted: 0 10 20 30 40 inf x5
    lo_r, _, hi_r = censored_band(vals, kinds, 1)  # reverse: trapped everywhere lies below
    assert lo_r == 0.0


def test_all_crossings_finds_every_sign_change():
    x = np.arange(1.0, 11.0)
    d = np.array([1, 1, -1, -1, 1, 1, 1, -1, -1, -1], float)
    c = all_crossings(x, d)
    assert [side for _, side in c] == ["trapped below", "trapped above", "trapped below"]
    assert 2 < c[0][0] < 3 and 4 < c[1][0] < 5 and 7 < c[2][0] < 8


def test_threshold_reports_shares_and_memory():
    from qtsim.profiles.hardware import load_profile
    from qtsim.report.trap import assess_trap

    r = assess_trap(load_profile("h100"), load_architecture("qwen3-0.6b"), Workload("int8"),
                    n_draws=200)
    ns, bs = r["n_star"], r["b_star"]
    for t in (ns, bs):
        d = t["draws"]
        assert 0.0 <= d["p_no_crossing"] <= 1.0
        assert d["p_no_crossing"] == pytest.approx(d["p_trapped_everywhere"] + d["p_never_trapped"])
        assert isinstance(t["crossings"], list)
    assert ns["memory"]["fits_quantized"] is False  # an N* of hundreds of billions: no H100 holds it
    assert ns["memory"]["largest_fitting_quantized_params"] < 2e11
    assert r["si"]["capped"] is False and r["si"]["si_capped"] <= 1.0
