import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qtsim.errors import ProfileError
from qtsim.model import paths
from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate.simulator import Simulator
from qtsim.simulate.thresholds import crossing

GPUS = ["l4", "a100-80gb", "h100-sxm", "b200"]
MODELS = ["qwen3-0.6b", "falcon3-3b", "mistral-7b", "qwen2.5-32b"]


@settings(max_examples=60, deadline=None)
@given(gpu=st.sampled_from(GPUS), model=st.sampled_from(MODELS),
       precision=st.sampled_from(["fp16", "int8", "nf4"]),
       b1=st.integers(2, 4096), b2=st.integers(2, 4096), k=st.integers(1, 2048))
def test_energy_per_query_non_increasing_in_batch(gpu, model, precision, b1, b2, k):
    """Batching amortises per-step costs (eq. 23's claim, in the physical model), batch >= 2
    (NF4 switches kernel at batch 1 -> 2, so the claim holds within one code path)."""
    sim = Simulator(load_profile(gpu))
    c = load_architecture(model).counts()
    lo, hi = sorted((b1, b2))
    e = sim.evaluate(c, Workload(precision, np.array([lo, hi], float), k, 0))["j_per_query"]
    assert e[1] <= e[0] * (1 + 1e-9)


@settings(max_examples=30, deadline=None)
@given(gpu=st.sampled_from(GPUS), model=st.sampled_from(MODELS),
       precision=st.sampled_from(["int8", "nf4"]))
def test_b_star_is_where_energy_curves_cross(gpu, model, precision):
    sim = Simulator(load_profile(gpu))
    c = load_architecture(model).counts()
    t = sim.b_star(c, Workload(precision))
    if t.kind in ("crossing", "reverse") and "kernel switch" in t.reason:
        _, _, d = sim.compare(c, Workload(precision, np.array([1.0, 2.0])))
        assert (d["delta_j"][0] > 0) != (d["delta_j"][1] > 0)
    elif t.kind in ("crossing", "reverse") and "fused 4-bit GEMM ends" in t.reason:
        # a jump, not a smooth crossing: B* is the first batch that dequantises again, and the
        # sign flips between the last fused batch and it (issue 24)
        _, _, d = sim.compare(c, Workload(precision, np.array([t.value - 1.0, t.value])))
        assert (d["delta_j"][0] > 0) != (d["delta_j"][1] > 0)
    elif t.kind in ("crossing", "reverse"):
        _, n, d = sim.compare(c, Workload(precision, np.array([t.value])))
        assert abs(float(d["delta_j"][0])) < 0.02 * float(n["j_per_query"][0])
    elif t.kind == "trapped_everywhere":
        assert t.value == np.inf
    elif t.kind == "never_trapped":
        assert t.value == 0.0


def test_crossing_kinds():
    x = np.array([1.0, 2.0, 4.0, 8.0])
    v, k = crossing(x, np.array([3.0, 1.0, -1.0, -3.0]))
    assert int(k) == 0 and 2.0 < float(v) < 4.0
    assert int(crossing(x, np.array([-1.0, 1, 2, 3]))[1]) == 1
    assert float(crossing(x, np.ones(4))[0]) == np.inf
    assert float(crossing(x, -np.ones(4))[0]) == 0.0


def test_n_star_exists_with_host_overhead_and_dissolves():
    """Per-call overheads do not scale with N, byte savings do: NF4 at batch 1 on an H100
    loses at small N and wins at large N (the paper's 'size paradox'), so N* is a crossing."""
    sim = Simulator(load_profile("h100-sxm"))
    t = sim.n_star(load_architecture("llama-3.1-8b"), Workload("nf4", batch=1))
    assert t.kind == "crossing"
    assert 1e8 < t.value < 1e12


def test_memory_limit_and_native_oom():
    sim = Simulator(load_profile("l4"))
    c = load_architecture("llama-3.1-70b").counts()
    t = sim.b_star(c, Workload("nf4"))
    assert t.kind == "native_oom"
    assert not bool(sim.evaluate(c, Workload("fp16", 1.0))["fits"])


def test_paper_constants_reassemble_batch1_energy():
    """E_hop(p, 1) = gamma + alpha p + phi at batch 1 (eq. 19 decomposition): the simulator's J
    for a one-token query at batch 1, and alpha by hand, (e_byte + P_static / BW) W_q / 8."""
    prof = load_profile("a100-80gb")
    sim = Simulator(prof)
    c = load_architecture("mistral-7b").counts()
    v = sim.profile.values()  # device part + the default host part
    alpha = (v["e_byte_j"] + v["p_awake_w"] / (v["mem_bw_gbs"] * 1e9)) * c.n_quant_weights / 8
    for p, bits in (("int8", 8), ("nf4", 4)):
        pc = sim.paper_constants(c, Workload(p))
        assert float(pc["alpha_j_per_bit"]) == pytest.approx(alpha, rel=1e-12)
        e = sim.evaluate(c, Workload(p, 1.0, new_tokens=1, prompt_tokens=0))["j_per_query"]
        assert float(pc["gamma_j"] + pc["alpha_j_per_bit"] * bits + pc["phi_j"]) == pytest.approx(float(e))


def test_fallback_paths_and_missing_path():
    vals = load_profile("h100-sxm").values()
    assert paths.resolve_path(vals, "fp4_b1") == "nf4_b1"
    assert paths.resolve_path(vals, "nf4dq_bn") == "nf4_bn"
    with pytest.raises(ProfileError):
        paths.resolve_path({"mem_bw_gbs": 1.0}, "int8")


def test_draws_broadcast_over_grids():
    sim = Simulator(load_profile("l4"), n_draws=50)
    c = load_architecture("mistral-7b").counts()
    out = sim.evaluate(c, Workload("nf4", np.array([1.0, 4.0, 16.0])), draws=True)
    assert out["j_per_query"].shape == (50, 3)
    assert np.all(out["j_per_query"] > 0)
