"""The CPU path for real, end to end: calibrate -> trap -> validate on held-out points.

Runs the quick CPU calibration (about 2 minutes on the 2-core CI machine), answers the trap
question from the new profile, then validates it on a small held-out plan and prints the error
into CI's output.
"""

import json
from pathlib import Path

import pytest

from .conftest import run_qtsim_process

pytestmark = pytest.mark.measure

# Each command runs in its own process, as a user's would: calibrate and validate set torch's
# thread count and load torch/bitsandbytes (process-wide state that must not leak between the
# steps or into the test session), and this is the one test of the whole CPU path end to end.


def test_calibrate_trap_validate(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    cal = tmp_path / "cal"
    # one thread: on a 2-vCPU VM two torch threads stall whenever anything else runs (README)
    r = run_qtsim_process("calibrate", "--gpu", "cpu", "--quick", "--out", str(cal),
                          "--no-progress", "--cpu-threads", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    prof = cal / "cpu.toml"
    assert prof.is_file() and (cal / "cpu-calibration.h5").is_file()

    r = run_qtsim_process("calibrate", "--gpu", "h100", "--quick", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no CUDA device" in r.stderr

    r = run_qtsim_process("trap", "--profile", str(prof), "--model", "qwen3-0.6b",
                          "--precision", "nf4", "--format", "json", "--draws", "100")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["profile"]["calibrated"] and rep["profile"]["priors"] == 0

    plan = tmp_path / "plan.toml"
    root = Path(__file__).parents[1] / "data" / "validation"
    plan.write_text(
        "[validation]\nnew_tokens = 16\nprompt_tokens = 16\nreps = 2\n[grid]\n"
        f"models = ['{root / 'tiny-llama-a.json'}', '{root / 'tiny-qwen2-c.json'}']\n"
        "precisions = ['fp16', 'int8', 'nf4']\nbatches = [2, 6]\n")
    r = run_qtsim_process("validate", "--profile", str(prof), "--plan", str(plan), "--out",
                          str(tmp_path / "val"), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    with capsys.disabled():
        print("\n--- CPU held-out validation (fresh calibration, this machine) ---")
        print(r.stdout)
    errors = (tmp_path / "val" / "errors.csv").read_text().splitlines()
    latency = [row for row in errors if row.startswith("all,latency_s")][0].split(",")
    assert float(latency[4]) <= 15.0, f"held-out latency MAPE {latency[4]}% (target 10%)"
