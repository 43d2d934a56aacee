"""Fitting from the recorded CPU calibration (data/raw/cpu-calibration.h5): no torch needed."""

import math
from pathlib import Path

import numpy as np
import pytest

from qtsim.calibration.fit.measured import fit_frame
from qtsim.calibration.fit.profile_builder import build_profile
from qtsim.calibration.measure.raw import RawStore
from qtsim.errors import FitError
from qtsim.profiles.hardware import read_profile, write_profile

from .conftest import invoke_qtsim

ROOT = Path(__file__).parents[1]
RAW = ROOT / "data" / "raw" / "cpu-calibration.h5"
SHIPPED = ROOT / "data" / "profiles" / "cpu-xeon-2c.toml"


@pytest.fixture(scope="module")
def frame():
    return RawStore(RAW, readonly=True).summary_frame()


@pytest.fixture(scope="module")
def fitted():
    return build_profile(RAW, "cpu-test")


def test_fit_converges_with_finite_stderr(fitted):
    prof, fit = fitted
    assert prof.source == "calibrated"
    for k, p in prof.physical.items():
        assert math.isfinite(p.value) and p.value >= 0, k
        assert math.isfinite(p.stderr) and p.stderr >= 0, k
        if p.source == "calibrated" and "bound" not in p.basis:
            assert p.stderr > 0, f"{k} fitted without an uncertainty"
    kernel, floor, prefill, energy = fit.stages
    assert kernel.mape < 0.10 and floor.mape < 0.10
    assert prefill.name == "prefill" and prefill.mape < 0.30  # first-token times (stage 2b)
    assert math.isfinite(kernel.aic) and math.isfinite(floor.bic)
    assert fit.energy_method == "hli"  # no RAPL on the machine that recorded it: labelled


def test_fit_is_physical(fitted):
    prof, _ = fitted
    v = prof.values()
    assert 5 < v["mem_bw_gbs"] < 500  # a CPU's effective GEMV bandwidth, GB/s
    # LLM.int8() costs more per call than NF4, which costs more than 16-bit (bitsandbytes on CPU)
    assert v["t_call_int8_b1_s"] > v["t_call_nf4_b1_s"] > v["t_call_fp16_b1_s"]
    assert prof.hardware["compute_dtype_4bit"] == "bf16"
    assert prof.physical["p_awake_w"].source == "assumed"
    c = prof.constants
    assert c["reference_model"] == "tiny-qwen3"
    assert all(c[p]["phi_j_stderr"] > 0 for p in ("int8", "nf4"))


def test_refit_reproduces_committed_profile():
    """The committed Xeon profile is the lumped form: its one-class decodes cannot separate
    h_op_s from the 16-bit paths' in-model per-call cost (docs/calibrate.md)."""
    prof, _ = build_profile(RAW, "cpu-test", mode="lumped")
    shipped = read_profile(SHIPPED)
    for k, p in shipped.physical.items():
        assert prof.physical[k].value == pytest.approx(p.value, rel=1e-3), k
    assert shipped.provenance["raw_sha256"] == RawStore(RAW, readonly=True).sha256()


def test_profile_roundtrip_and_correlations(fitted, tmp_path):
    prof, _ = fitted
    out = write_profile(prof, tmp_path / "cpu.toml")
    again = read_profile(out)
    assert again.fit["param_order"] and len(again.fit["correlation"]) == len(again.fit["param_order"])
    d = again.draws(200)
    assert all(np.all(x >= 0) for x in d.values())


def test_one_depth_is_not_identifiable(frame):
    sub = frame[(frame["kind"] != "decode") | (frame["model"] == "tiny-qwen3")].copy()
    sub.attrs.update(frame.attrs)
    with pytest.raises(FitError, match="one depth"):
        fit_frame(sub, 15.0)


def test_no_linear_points(frame):
    sub = frame[frame["kind"] == "decode"].copy()
    with pytest.raises(FitError, match="no linear microbenchmarks"):
        fit_frame(sub, 15.0)


def test_too_few_points(frame):
    lin = frame[frame["kind"] == "linear"].head(5).copy()
    with pytest.raises(FitError, match="cannot determine"):
        fit_frame(lin, 15.0)


def test_fit_cli(tmp_path):
    r = invoke_qtsim("fit", str(RAW), "--out", str(tmp_path / "p.toml"), "--name", "cpu-cli")
    assert r.returncode == 0, r.stderr
    assert "kernel_paths" in r.stdout and "MAPE" in r.stdout
    # recorded without RAPL: the profile's energy is the TDP x time estimate, and it says so
    assert "energy: CPU package energy estimated as TDP x time (no RAPL) (method: hli)" in r.stdout
    r = invoke_qtsim("trap", "--profile", str(tmp_path / "p.toml"), "--model", "qwen3-0.6b",
                  "--precision", "int8", "--draws", "50")
    assert r.returncode == 0 and "calibrated" in r.stdout


def test_fit_cli_rejects_corrupt_file(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    r = invoke_qtsim("fit", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_inventory_mode_prices_traced_ops(fitted):
    """Stage 2 fits host constants per traced op, not per-family per-layer lumps."""
    prof, fit = fitted
    assert fit.mode == "inventory" and fit.stages[1].name == "host_inventory"
    assert prof.hardware["t_call_includes_dispatch"] is True
    v = prof.values()
    assert 0.5e-6 < v["h_op_s"] < 30e-6 and v["h_launch_s"] == 0
    assert not any(k.startswith("t_layer_") for k in v)
    # LLM.int8() layers cost more in a model than its microbenchmark's t_call says
    assert v["h_call_int8_b1_s"] > 0


def test_lumped_mode_stays_selectable(frame):
    lumped = fit_frame(frame, 15.0, mode="lumped")
    assert lumped.stages[1].name == "step_floor"
    assert "t_layer_fp16_b1_s" in lumped.params() and "h_op_s" not in lumped.params()
    with pytest.raises(FitError, match="unknown stage-2 mode"):
        fit_frame(frame, 15.0, mode="nope")
