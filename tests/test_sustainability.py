from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtsim.model import sustainability as si

unit = st.floats(min_value=1e-3, max_value=1.0)


def test_worked_examples_sec31():
    assert si.t_si(0.3942, 0.4314) == pytest.approx(0.914, abs=5e-4)
    assert si.s_si_ratio(519.79, 1110.56) == pytest.approx(0.468, abs=5e-4)


def test_e_si_harmonic_mean_eq3():
    assert si.e_si(1.0, 1.0) == pytest.approx(1.0)
    assert si.e_si(0.5, 2.0) == pytest.approx(1 / (0.5 / 0.5 + 0.5 / 2.0))
    assert si.e_si(0.25, 4.0, alpha=1.0) == pytest.approx(0.25)


@given(t=unit, e=unit, s=unit)
def test_si_in_unit_interval_when_pillars_are(t, e, s):
    for policy in ("linear", "geometric"):
        v = float(si.sustainability_index(t, e, s, policy=policy))
        assert 0.0 <= v <= 1.0 + 1e-12


@given(t=unit, e=unit, s=unit)
def test_geometric_never_exceeds_linear(t, e, s):
    # weighted AM-GM: Remark 3.1's policy is the stricter one
    assert si.si_geometric(t, e, s) <= si.si_linear(t, e, s) + 1e-12


def test_anchor_scores_one():
    assert si.si_linear(1, 1, 1) == pytest.approx(1.0)
    assert si.si_geometric(1, 1, 1) == pytest.approx(1.0)


def test_log_form_eq5_is_capped_and_monotone():
    chi_ref = si.caes_kg(500, 0.4)
    assert si.s_si_log(chi_ref, si.caes_kg(400, 0.4)) == 1.0
    worse = si.s_si_log(chi_ref, si.caes_kg(np.array([600, 1200]), 0.4))
    assert worse[0] > worse[1]


def test_trap_prop32_discrete_grid():
    assert si.is_trap({16: 1.0, 8: 0.55, 4: 0.69})
    assert not si.is_trap({16: 1.0, 8: 1.2, 4: 0.9})
    assert si.si_gradient(1.0, 0.69, 16, 4) > 0


def test_bad_weights_rejected():
    with pytest.raises(ValueError):
        si.si_linear(1, 1, 1, weights=(0.5, 0.5, 0.5))


def test_eq5_depends_on_units():
    v = si.s_si_log_by_unit(500.0, 1000.0)
    assert v["kgCO2e"] == pytest.approx(0.5, rel=1e-3)  # tiny chi: log(1 + x) ~ x
    assert v["J"] > 0.85  # joules: the log compresses a 2x deficit
    assert v["ratio"] == 0.5
    assert si.capped_si(1.0, 2.0, 2.0) == pytest.approx(1.0)
