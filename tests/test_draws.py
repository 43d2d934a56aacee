"""Monte-Carlo draws of a profile's constants (qtsim/profiles/profile.py): physically ordered (no
draw makes a quantized path cheaper than its reference), mean and spread kept, and the model's
own error added to every band."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import parse_profile, read_profile
from qtsim.profiles.profile import (
    HardwareProfile,
    model_error_deviates,
    ordered_pairs,
    reference_name,
)
from qtsim.simulate.simulator import Simulator

from .conftest import CPU_PROFILE


def _all_profiles() -> dict[str, HardwareProfile]:
    out = {}
    for f in sorted(resources.files("qtsim.hardware_profiles").iterdir(), key=lambda x: x.name):
        if f.name.endswith(".toml"):
            out[f.name] = parse_profile(f.read_text(), f.name)
    out["cpu-xeon-2c"] = read_profile(CPU_PROFILE)
    return out


PROFILES = _all_profiles()


def _call_pairs(prof: HardwareProfile):
    """(quantized t_call, its 16-bit reference) for every quantized t_call in the profile."""
    for k in prof.physical:
        r = reference_name(k, prof.physical, prof.native)
        if k.startswith("t_call_") and r is not None:
            yield k, r


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PROFILES)), seed=st.integers(0, 2**32 - 1),
       n=st.integers(1, 300))
def test_no_draw_makes_a_quantized_path_cheaper_than_its_reference(name, seed, n):
    prof = PROFILES[name]
    d = prof.draws(n, seed=seed)
    pairs = list(_call_pairs(prof))
    assert pairs, f"{name}: no quantized t_call constants found"
    for q, r in pairs:  # per call: always (the central values must be ordered too)
        assert prof.physical[q].value >= prof.physical[r].value, f"{name}: {q} central below {r}"
        assert np.all(d[q] >= d[r]), f"{name}: a draw of {q} is cheaper than {r}"
    for q, r in ordered_pairs(prof.physical, prof.native):  # t_weight etc. where ordered
        assert np.all(d[q] >= d[r]), f"{name}: a draw of {q} is cheaper than {r}"
    for k, v in d.items():
        assert v.shape == (n, 1) and np.all(v >= 0) and np.all(np.isfinite(v)), k


def test_ordered_draws_keep_mean_and_spread():
    prof = PROFILES["l4.toml"]
    d = prof.draws(20000, seed=3)
    for q, r in ordered_pairs(prof.physical, prof.native):
        extra = (d[q] - d[r]).ravel()
        m = prof.physical[q].value - prof.physical[r].value
        assert np.mean(extra) == pytest.approx(m, rel=0.05)
        assert np.std(d[q]) == pytest.approx(prof.physical[q].stderr, rel=0.35)


def test_unknown_names_drawn_as_before():
    prof = PROFILES["l4.toml"]
    assert reference_name("t_call_fp16_s", prof.physical) is None
    assert reference_name("h_op_s", prof.physical) is None
    assert reference_name("t_call_nf4_b1_s", prof.physical) == "t_call_fp16_s"
    cpu = PROFILES["cpu-xeon-2c"]
    assert reference_name("t_call_int8_bn_s", cpu.physical) == "t_call_fp16_bn_s"
    assert reference_name("h_call_int8_b1_s", cpu.physical) is None  # no 16-bit h_call: fixed 0


def test_model_error_deviates_hit_their_quantiles():
    z = np.random.default_rng(0).standard_normal(200000)
    e = np.abs(model_error_deviates(z, 0.10, 0.30))
    assert np.quantile(e, 0.68) == pytest.approx(0.10, rel=0.02)
    assert np.quantile(e, 0.95) == pytest.approx(0.30, rel=0.02)


def test_spec_profiles_carry_the_held_out_model_error():
    """Spec profiles carry the model error measured by the public folds (leave one GPU out for
    J/token, one latency group out for time), as public_fit.toml states it."""
    from qtsim.profiles.priors import public_fit

    me, rec = PROFILES["l4.toml"].model_error(), public_fit()["model_error"]
    assert me["source"] == "validated" and "leave-one-GPU-out" in me["basis"]
    assert me["q68"]["j_per_query"] == pytest.approx(rec["j_per_query"]["q68"])
    assert me["q68"]["latency_s"] == pytest.approx(rec["latency_s"]["q68"])
    assert 0.0 <= me["rho"] <= 0.95
    cpu = PROFILES["cpu-xeon-2c"].model_error()
    assert cpu["source"] == "validated" and "cpu-validation.h5" in cpu["basis"]


def test_bands_widen_with_model_error():
    prof = PROFILES["cpu-xeon-2c"]
    arch = load_architecture("qwen3-0.6b")
    c = arch.counts()
    widths = []
    for me in (False, True):
        sim = Simulator(prof, n_draws=400, model_error=me)
        d = np.log(sim.evaluate(c, Workload("nf4", 2.0, 16.0, 16.0), draws=True)["latency_s"])
        widths.append(np.subtract(*np.percentile(d, [84, 16])))
    assert widths[1] > widths[0] * 1.5
