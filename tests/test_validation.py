"""Validation report from recorded held-out runs (data/raw/cpu-validation.h5): no torch."""

from pathlib import Path

import pytest

from qtsim.calibration.raw import RawStore
from qtsim.errors import QtsimError
from qtsim.profiles import read_profile
from qtsim.validation import (
    ValidationPoint,
    cor_and_verdicts,
    error_table,
    holdout_conflicts,
    measured_frame,
    read_plan,
    verdict_summary,
)

from .conftest import run_qtsim

ROOT = Path(__file__).parents[1]
RAW = ROOT / "data" / "raw" / "cpu-validation.h5"
PROFILE = ROOT / "data" / "profiles" / "cpu-xeon-2c.toml"


@pytest.fixture(scope="module")
def df():
    return measured_frame(RawStore(RAW, readonly=True).summary_frame("decode"))


def test_predictions_were_stored_with_measurements(df):
    assert len(df) == 18
    assert df["pred_step_s"].notna().all() and df["pred_j_per_query_paper"].notna().all()
    assert set(df["holdout"]) == {"held-out"}
    assert set(df["purpose"]) == {"validation"}


def test_recorded_holdout_error(df):
    """The committed CPU holdout run: latency within the issue's 10% MAPE target."""
    err = error_table(df).set_index(["group", "quantity"])
    assert err.loc[("all", "latency_s"), "mape_pct"] <= 10.0
    assert err.loc[("all", "j_per_query"), "mape_pct"] <= 10.0
    assert err.loc[("all", "step_s"), "pearson_r"] > 0.9


def test_trap_verdicts_and_cor(df):
    v = cor_and_verdicts(df, "fp16")
    assert len(v) == 12
    assert v["verdict_agrees"].all()
    assert v.loc[~v["close_call"], "verdict_agrees"].all()
    assert "12/12" in verdict_summary(v)
    assert (v["cor_measured"] > 0).all() == (v["cor_predicted"] > 0).all()


def test_holdout_refuses_calibrated_points():
    prof = read_profile(PROFILE)
    pts = [ValidationPoint("tiny-qwen3", "fp16", 3, 16, 16), ValidationPoint("tiny-qwen3", "fp16", 2, 16, 16)]
    conflicts = holdout_conflicts(prof, pts, {})
    assert len(conflicts) == 1 and "batch 3" in conflicts[0]


def test_plan_parsing(tmp_path):
    opts, pts = read_plan(str(ROOT / "data" / "validation" / "cpu-holdout.toml"))
    assert len(pts) == 18 and opts["reps"] == 3
    bad = tmp_path / "p.toml"
    bad.write_text("[validation]\n[[points]]\nmodel = 'x'\n")
    with pytest.raises(QtsimError, match="lacks 'precision'"):
        read_plan(str(bad))
    bad.write_text("[validation]\n[grid]\nmodels=['a']\nprecisions=['fp16']\nbatches=[0]\n")
    with pytest.raises(QtsimError, match="batch >= 1"):
        read_plan(str(bad))


def test_report_only_cli(tmp_path):
    r = run_qtsim("validate", "--profile", str(PROFILE), "--raw", str(RAW), "--report-only",
                  "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "latency_s" in r.stdout and "trap verdicts agree: 12/12" in r.stdout
    assert "decisive comparisons" in r.stdout
    for f in ("report.md", "points.csv", "errors.csv", "parity.png", "error_vs_batch.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "Paper model vs physical model" in (tmp_path / "report.md").read_text()


def test_validate_refuses_overlap_before_measuring(tmp_path):
    cfg = ROOT / "data" / "validation" / "tiny-llama-a.json"
    r = run_qtsim("validate", "--profile", str(PROFILE), "--model", str(cfg), "--batch", "1",
                  "--precision", "nf4", "--out", str(tmp_path), "--report-only")
    assert r.returncode == 2 and "no raw validation data" in r.stderr
