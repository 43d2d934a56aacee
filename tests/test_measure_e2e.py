"""The CPU path for real, end to end: calibrate -> trap -> validate on held-out points.

Runs the quick CPU calibration (about 4.5 minutes on a quiet 2-core CI machine), answers the trap
question from the new profile, then validates it on a small held-out plan and prints the error
into CI's output.
"""

import json
import tomllib
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
    # one thread: on a 2-vCPU VM two torch threads stall whenever anything else runs (docs/calibrate.md)
    # about 4.5 min on a quiet 2-core machine; a shared one has taken 12 (issue 24): the
    # calibration measures and reports that disturbance, so give it the time to finish
    r = run_qtsim_process("calibrate", "--gpu", "cpu", "--quick", "--out", str(cal),
                          "--no-progress", "--cpu-threads", "1", timeout=1800)
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
    contention = tomllib.loads(prof.read_text())["fit"].get("contention", {})
    assert contention.get("verdict") in ("quiet", "disturbed")  # measured, not assumed
    assert contention.get("drift"), "the calibration re-measured its reference points"

    # Held-out latency within 15%, on a machine others share: validation re-measures the
    # calibration's reference points before and after the held-out runs and scores at the
    # machine's speed when it was calibrated (drift corrected); the gate widens only by what
    # the machine measurably moved *during* the validation run (before vs after), at most 5
    # points, and a run that misses it is measured once more, since one disturbed stretch is
    # not the model's error.
    results = []
    for attempt in range(2):
        out = tmp_path / f"val{attempt}"
        r = run_qtsim_process("validate", "--profile", str(prof), "--plan", str(plan), "--out",
                              str(out), "--no-progress", timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        mape, drift = _latency_mape(out), json.loads((out / "drift.json").read_text())
        assert drift["factor"] is not None, "validation re-measured the calibration's points"
        moved = abs(drift["after"] / drift["before"] - 1.0) if drift.get("after") else 0.0
        gate = 15.0 + min(100.0 * moved, 5.0)
        results.append((mape, gate, drift["factor"]))
        with capsys.disabled():
            print(f"\n--- CPU held-out validation, run {attempt + 1} (fresh calibration, this "
                  f"machine; calibration: machine {contention['verdict']}) ---")
            print(r.stdout)
        if mape <= gate:
            break
    assert mape <= gate, f"held-out latency MAPE {mape:.1f}% > gate {gate:.1f}% (runs: {results})"


def _latency_mape(out: Path) -> float:
    errors = (out / "errors.csv").read_text().splitlines()
    return float([row for row in errors if row.startswith("all,latency_s")][0].split(",")[4])
