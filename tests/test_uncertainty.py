"""Issue 10: physically ordered draws, calibrated bands, honest thresholds, SI capping."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qtsim.model import sustainability as si
from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import (
    HardwareProfile,
    model_error_deviates,
    ordered_pairs,
    parse_profile,
    read_profile,
    reference_name,
)
from qtsim.simulate.simulator import Simulator
from qtsim.simulate.thresholds import all_crossings, censored_band

ROOT = Path(__file__).resolve().parents[1]
CPU_PROFILE = ROOT / "data" / "profiles" / "cpu-xeon-2c.toml"
CPU_VALIDATION = ROOT / "data" / "raw" / "cpu-validation.h5"


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


def test_cpu_heldout_band_coverage(capsys):
    """Issue 10's CI figure: 68%/95% band coverage on the CPU held-out validation set."""
    pytest.importorskip("h5py")
    from qtsim.calibration.raw import RawStore
    from qtsim.validate.coverage import coverage_table
    from qtsim.validate.score import measured_frame

    df = measured_frame(RawStore(CPU_VALIDATION, readonly=True).summary_frame("decode"))
    table, _ = coverage_table(read_profile(CPU_PROFILE), df)
    with capsys.disabled():
        print("\nCPU held-out band coverage (data/raw/cpu-validation.h5, "
              f"{len(df)} points; model error estimated leaving each architecture out):")
        for _, r in table.iterrows():
            print(f"  {r['quantity']:12s} {r['scheme']:22s} 68% band {r['coverage_68_pct']:5.1f}%  "
                  f"95% band {r['coverage_95_pct']:5.1f}%  (half-width 68% {r['halfwidth_68_pct']:.1f}%)")
    honest = table[table["scheme"] == "leave-one-model-out"].set_index("quantity")
    assert 55.0 <= honest.loc["latency_s", "coverage_68_pct"] <= 80.0
    assert 55.0 <= honest.loc["j_per_query", "coverage_68_pct"] <= 80.0
    before = table[table["scheme"] == "parameters only"].set_index("quantity")
    assert before.loc["latency_s", "coverage_68_pct"] < honest.loc["latency_s", "coverage_68_pct"]


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
                    n_draws=200).to_dict()
    ns, bs = r["n_star"], r["b_star"]
    for t in (ns, bs):
        d = t["draws"]
        assert 0.0 <= d["p_no_crossing"] <= 1.0
        assert d["p_no_crossing"] == pytest.approx(d["p_trapped_everywhere"] + d["p_never_trapped"])
        assert isinstance(t["crossings"], list)
    assert ns["memory"]["fits_quantized"] is False  # an N* of hundreds of billions: no H100 holds it
    assert ns["memory"]["largest_fitting_quantized_params"] < 2e11
    assert r["si"]["capped"] is False and r["si"]["si_capped"] <= 1.0


def test_eq5_depends_on_units():
    v = si.s_si_log_by_unit(500.0, 1000.0)
    assert v["kgCO2e"] == pytest.approx(0.5, rel=1e-3)  # tiny chi: log(1 + x) ~ x
    assert v["J"] > 0.85  # joules: the log compresses a 2x deficit
    assert v["ratio"] == 0.5
    assert si.capped_si(1.0, 2.0, 2.0) == pytest.approx(1.0)
