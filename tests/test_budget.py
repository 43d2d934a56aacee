"""Budgets (qtsim/report/budget.py): kWh, gCO2e and $ from J/query, and what every energy figure
covers, said by one function (budget.energy_scope): a GPU board, a CPU package metered by RAPL,
or a CPU package estimated as TDP x time where RAPL is absent."""

import json
from pathlib import Path

import pytest

from qtsim.profiles.hardware import load_profile
from qtsim.report import budget
from qtsim.report.budget import (
    CPU_NO_RAPL,
    CPU_RAPL,
    GPU_BOARD,
    GPU_NO_METER,
    energy_scope,
    profile_energy_scope,
)
from qtsim.report.catalog import profile_card

from .conftest import invoke_qtsim

ROOT = Path(__file__).parents[1]
CPU_PROFILE = str(ROOT / "data" / "profiles" / "cpu-epyc-2c.toml")


@pytest.mark.parametrize("device, meter, label", [
    ("cpu", "rapl", "CPU package energy (RAPL)"),
    ("cpu", "hli", "CPU package energy estimated as TDP x time (no RAPL)"),
    ("cpu", None, CPU_NO_RAPL),
    ("cuda", "nvml_counter", "GPU board energy"),
    ("cuda", None, GPU_BOARD),  # a spec profile: the power model is the board's
    ("cuda", "hli", GPU_NO_METER),
])
def test_energy_scope(device, meter, label):
    assert energy_scope(device, meter) == label


def test_profiles_show_says_what_the_energy_covers():
    cpu = load_profile(path=CPU_PROFILE)
    assert "energy: " + CPU_NO_RAPL in profile_card(cpu).splitlines()
    assert json.loads(profile_card(cpu, "json"))["energy_scope"] == CPU_NO_RAPL
    cpu.fit["energy_method"] = "rapl"  # what a calibration on a machine with RAPL records
    assert profile_energy_scope(cpu) == CPU_RAPL and "energy: " + CPU_RAPL in profile_card(cpu)
    assert "energy: " + GPU_BOARD in profile_card(load_profile("l4")).splitlines()


def test_trap_and_compare_on_a_cpu_profile_never_say_gpu_board():
    r = invoke_qtsim("trap", "--profile", CPU_PROFILE, "--model", "qwen3-0.6b", "--precision",
                     "nf4", "--draws", "10", "--format", "json")
    assert r.returncode == 0, r.stderr
    a = json.loads(r.stdout)["budget"]["assumptions"]
    assert a["energy_scope"] == CPU_NO_RAPL and a["energy_boundary"] == CPU_NO_RAPL
    args = ("compare", "--profile", CPU_PROFILE, "--gpu", "l4", "--model", "qwen3-0.6b",
            "--draws", "10")
    r = invoke_qtsim(*args)
    assert r.returncode == 0, r.stderr
    assert f"PUE 1 ({GPU_BOARD}; cpu-epyc-2c: {CPU_NO_RAPL} only)" in r.stdout
    rows = json.loads(invoke_qtsim(*args, "--format", "json").stdout)["rows"]
    assert {(x["gpu"], x["energy_scope"]) for x in rows} == {("cpu-epyc-2c", CPU_NO_RAPL),
                                                            ("l4", GPU_BOARD)}


def test_budget_arithmetic():
    assert budget.kwh_per_million_queries(3.6) == pytest.approx(1.0)
    assert budget.gco2e_per_query(3.6e6, 500.0, pue=1.5) == pytest.approx(750.0)
    assert budget.usd_per_million_tokens(1e6 / 3600, 2.0) == pytest.approx(2.0)
    f = budget.figures(100.0, 10.0, budget.BudgetAssumptions())
    assert f["gco2e_per_query"] is None and f["usd_per_million_tokens"] is None
