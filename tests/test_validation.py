"""Validation report from recorded held-out runs (data/raw/cpu-validation.h5): no torch."""

from pathlib import Path

import numpy as np
import pytest

from qtsim.calibration.measure.raw import RawStore
from qtsim.errors import QtsimError
from qtsim.profiles.hardware import read_profile
from qtsim.validate.plan import ValidationPoint, holdout_conflicts, point_workload, read_plan
from qtsim.validate.score import cor_and_verdicts, error_table, measured_frame, verdict_summary

from .conftest import invoke_qtsim

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
    pts = [ValidationPoint("tiny-qwen3", point_workload("fp16", b, 16, 16)) for b in (3, 2)]
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
    r = invoke_qtsim("validate", "--profile", str(PROFILE), "--raw", str(RAW), "--report-only",
                  "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "latency_s" in r.stdout and "trap verdicts agree: 12/12" in r.stdout
    assert "decisive comparisons" in r.stdout
    for f in ("report.md", "points.csv", "errors.csv", "parity.png", "error_vs_batch.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "Paper model vs physical model" in (tmp_path / "report.md").read_text()


def test_validate_refuses_overlap_before_measuring(tmp_path):
    cfg = ROOT / "data" / "validation" / "tiny-llama-a.json"
    r = invoke_qtsim("validate", "--profile", str(PROFILE), "--model", str(cfg), "--batch", "1",
                  "--precision", "nf4", "--out", str(tmp_path), "--report-only")
    assert r.returncode == 2 and "no raw validation data" in r.stderr


WIDE_RAW = ROOT / "data" / "raw" / "cpu-validation-wide.h5"
EPYC_PROFILE = ROOT / "data" / "profiles" / "cpu-epyc-2c.toml"
#: issue 9's latency MAPE target on the out-of-range held-out architectures: not met (see README)
WIDE_TARGET_PCT = 10.0
#: what the recorded run achieved (14.1%), asserted so that a regression fails
WIDE_ACHIEVED_PCT = 15.0


def test_out_of_range_holdout_error(capsys):
    """Architectures 2.25-3x wider than any calibrated decode, 10-12 layers deep, vocabularies
    of 16k-32k, Mistral and Gemma-2 layouts (data/validation/cpu-holdout-wide.toml), measured
    after a fresh calibration with rotating buffers (data/raw/cpu-epyc-2c-calibration.h5);
    predicted by the committed profile fitted from it."""
    from qtsim.simulate.simulator import Simulator
    from qtsim.validate.predict import repredict

    df = measured_frame(RawStore(WIDE_RAW, readonly=True).summary_frame("decode"))
    assert len(df) == 18 and set(df["holdout"]) == {"held-out"}
    assert set(df["model"]) == {"wide-llama-d", "wide-mistral-e", "wide-gemma2-f"}
    prof = read_profile(EPYC_PROFILE)
    df = repredict(df, Simulator(prof, n_draws=50))
    # the committed profile is the one that made the stored predictions (same raw, same fit)
    assert np.allclose(df["pred_step_s"], df["stored_pred_step_s"], rtol=1e-3)
    err = error_table(df).set_index(["group", "quantity"])
    lat = err.loc[("all", "latency_s")]
    step = err.loc[("all", "step_s")]
    with capsys.disabled():
        print(f"\n[qtsim] CPU out-of-range held-out (18 points, {prof.name}): latency MAPE "
              f"{lat['mape_pct']:.1f}% (bias {lat['bias_pct']:+.1f}%, max {lat['max_ape_pct']:.1f}%;"
              f" issue 9 target <= {WIDE_TARGET_PCT:g}%: "
              f"{'met' if lat['mape_pct'] <= WIDE_TARGET_PCT else 'NOT met'}), step MAPE "
              f"{step['mape_pct']:.1f}% (bias {step['bias_pct']:+.1f}%)")
    assert lat["mape_pct"] <= WIDE_ACHIEVED_PCT
    assert step["mape_pct"] <= 11.0
    assert step["pearson_r"] > 0.98


def test_fleet_validate_job_carries_the_points_and_their_workloads(tmp_path):
    """`fleet validate` ships points to Ray jobs as plain values: a node rebuilds the same
    points (workload included) and predicts them as `qtsim validate` does."""
    from qtsim.calibration.fleet.node import _slot_plan
    from qtsim.validate.plan import ValidationRequest, plan_points

    plan = ROOT / "data" / "validation" / "cpu-holdout.toml"
    points, reps, configs = plan_points(ValidationRequest(str(plan)))
    assert [ValidationPoint.from_dict(p.to_dict()) for p in points] == points
    job = {"kind": "validate", "profile_toml": EPYC_PROFILE.read_text(), "reps": reps,
           "points": [p.to_dict() for p in points[:3]],
           "configs": {k: list(v) for k, v in configs.items()}}
    specs, purpose = _slot_plan(job, tmp_path, None)
    assert purpose == "validation" and len(specs) == 3
    assert specs[0].decode.precision == points[0].workload.precision
    assert specs[0].predictions["holdout"] == "held-out"
    assert specs[0].predictions["pred_step_s"] > 0
