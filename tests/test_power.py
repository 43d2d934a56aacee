"""Power states and power capping (qtsim.model.power, issue 19) on the shipped profiles."""

import json

import numpy as np
import pytest

from qtsim.model import power
from qtsim.model.architecture import load_architecture
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.simulate.simulator import Simulator

from .conftest import invoke_qtsim

PARAMS = {"p_awake_w": 40.0, "e_byte_j": 2e-10, "e_flop_j": 1e-12, "p_cap_w": 70.0}


def test_energy_is_awake_power_over_the_step_plus_the_work():
    e = power.step_energy_j(0.05, 1e9, 1e12, PARAMS)  # eq. P.1
    assert e == pytest.approx(40.0 * 0.05 + 2e-10 * 1e9 + 1e-12 * 1e12)


def test_capping_stretches_time_until_busy_power_meets_the_limit():
    e_dyn, d = 3.0, 0.05  # 60 W of dynamic power over a 30 W headroom
    s = float(power.cap_stretch(e_dyn, d, 40.0, 70.0))
    assert s == pytest.approx(2.0 ** (1 / power.DVFS_EXPONENT))
    spent = float(power.capped_dynamic_j(e_dyn, s))  # E_dyn / s^2 (DVFS: P ~ f^3)
    assert 40.0 + spent / (s * d) == pytest.approx(70.0)  # busy power is exactly the cap
    assert float(power.cap_stretch(0.5, d, 40.0, 70.0)) == 1.0  # 10 W: fits, full clocks
    assert float(power.cap_stretch(0.5, d, 80.0, 70.0)) == 1.0  # no headroom: no reasoning


def test_desktop_boards_wait_at_lower_awake_power_than_datacentre_ones():
    dc = power.awake_power_w(450.0, "datacenter", 20.0, 0.2, 0.6)
    desk = power.awake_power_w(450.0, "desktop", 20.0, 0.2, 0.6)
    assert float(desk) == pytest.approx(0.6 * float(dc))
    assert power.byte_energy_j(700.0, 3350.0, 0.7) == pytest.approx(0.7 * 700 / 3.35e12)


def test_a_70_w_card_streaming_fp16_weights_is_power_capped():
    """The T4 decoding a 7B FP16 model sits at its board limit (LLM-Perf rows: 70 W); NF4 at
    batch 1 moves a quarter of the bytes and waits for its host most of the step."""
    sim = Simulator(load_profile("t4"))
    c = load_architecture("llama-7b").counts()
    fp16 = sim.evaluate(c, Workload("fp16", batch=1, new_tokens=64, prompt_tokens=256))
    nf4 = sim.evaluate(c, Workload("nf4", batch=1, new_tokens=64, prompt_tokens=256))
    assert float(fp16["cap_stretch"]) > 1.05
    assert float(fp16["busy_w"]) == pytest.approx(70.0, rel=1e-6)
    assert float(nf4["cap_stretch"]) < float(fp16["cap_stretch"])
    assert float(nf4["avg_power_w"]) < float(fp16["avg_power_w"]) <= 70.0 + 1e-6


def test_host_bound_steps_are_spent_mostly_awake():
    sim = Simulator(load_profile("h100-sxm"))
    c = load_architecture("llama-3.1-8b").counts()
    q = sim.evaluate(c, Workload("int8", batch=1, new_tokens=64, prompt_tokens=64))
    assert float(q["awake_frac"]) > 0.8
    awake = sim.profile.physical["p_awake_w"].value
    assert awake < float(q["avg_power_w"]) < 1.3 * awake


def test_one_host_speed_factor_moves_every_host_constant_together():
    sim = Simulator(load_profile("l4"), n_draws=2000)
    d = sim.params(draws=True)
    ratio = np.log(d["h_call_nf4_b1_s"] / d["h_op_s"]).ravel()
    assert np.std(np.log(d["h_op_s"])) > 2.0 * np.std(ratio)  # shared factor >> per-path terms
    assert sim.profile.host.speed_sd_log > 0.1


def test_trap_shows_the_power_behind_each_energy_figure():
    r = invoke_qtsim("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "int8",
                     "--batch", "8", "--draws", "50")
    assert r.returncode == 0, r.stderr
    power_lines = [ln for ln in r.stdout.splitlines() if "average: busy" in ln]
    assert len(power_lines) == 2 and "(awake)" in power_lines[0] and "power-capped" in power_lines[1]
    j = json.loads(invoke_qtsim("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision",
                                "int8", "--batch", "8", "--draws", "50", "--format", "json").stdout)
    st = j["quantized"]["power_states"]
    assert st["busy_frac"] + st["awake_frac"] == pytest.approx(1.0)
    hinge = j["verdict"]["awake_sensitivity"]
    assert hinge["name"] == "p_awake_w" and len(hinge["energy_ratio"]) == 3
    assert hinge["energy_ratio"][0] <= hinge["energy_ratio"][2]  # more awake power: costs more
