"""Validation report from recorded held-out runs (data/raw/cpu-validation.h5): no torch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qtsim.calibration.measure.raw import RawStore
from qtsim.errors import QtsimError
from qtsim.model.architecture import config_display_name, load_config
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile, read_profile
from qtsim.simulate.simulator import Simulator
from qtsim.validate.plan import ValidationPoint, holdout_conflicts, point_workload, read_plan
from qtsim.validate.score import cor_and_verdicts, error_table, measured_frame, verdict_summary

from .conftest import CPU_PROFILE, ROOT, assert_refused, invoke_qtsim

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
#: issue 9's latency MAPE target on the out-of-range held-out architectures: not met (see docs/validate.md)
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


def test_validation_scores_at_the_calibrated_machines_speed():
    import pandas as pd

    from qtsim.validate.score import correct_for_drift, drift_since_calibration

    decodes = pd.DataFrame([
        {"purpose": "drift", "t_generate_s": 1.2, "ref_t_generate_s": 1.0, "drift_when": "before"},
        {"purpose": "drift", "t_generate_s": 1.3, "ref_t_generate_s": 1.0, "drift_when": "after"},
        {"purpose": "validation", "t_generate_s": 2.5, "ref_t_generate_s": None}])
    drift = drift_since_calibration(decodes)
    assert drift["factor"] == pytest.approx(1.25) and drift["before"] == pytest.approx(1.2)
    assert not drift["unsteady"] and "1.250x their calibration times" in drift["text"]
    df = pd.DataFrame([{"t_generate_s": 2.5, "t_step_s": 0.1, "j_per_query": 5.0,
                        "energy_meter": "hli"}])
    fixed, _ = correct_for_drift(df, drift)
    assert fixed["t_generate_s"].iloc[0] == pytest.approx(2.0)
    assert fixed["j_per_query"].iloc[0] == pytest.approx(4.0)  # HLI energy is TDP x time
    assert fixed["t_generate_s_uncorrected"].iloc[0] == 2.5
    assert drift_since_calibration(decodes[decodes.purpose == "validation"])["factor"] is None


def test_one_model_gives_no_leave_one_model_out_figure():
    from qtsim.calibration.measure.raw import RawStore
    from qtsim.profiles.hardware import read_profile
    from qtsim.validate.report import summary_lines
    from qtsim.validate.run import score_validation
    from qtsim.validate.score import measured_frame

    raw = ROOT / "data" / "raw" / "cpu-validation.h5"
    df = measured_frame(RawStore(raw, readonly=True).summary_frame("decode"))
    one = df[df["model"] == df["model"].iloc[0]]
    rep = score_validation(read_profile(ROOT / "data" / "profiles" / "cpu-epyc-2c.toml"), one, raw)
    assert not rep.coverage["scheme"].str.startswith("leave-one").any()
    text = "\n".join(summary_lines(rep, "cpu"))
    assert "no leave-one-model-out figure: every point is of one model" in text
    # these points hold process peak RSS only: memory is not scored against the prediction
    assert "steady_memory_bytes" not in set(rep.errors["quantity"])
    assert "peak memory not validated: these points record only the process's peak RSS" in text


@pytest.mark.parametrize("extra,needle", [
    (["--int8-threshold", "5"], "llm_int8_threshold"),
    (["--compute-dtype", "fp16"], "calibrated with (bf16)"),
    (["--compute-dtype", "int4"], "--compute-dtype"),
    (["--double-quant", "--plan", str(ROOT / "data/validation/cpu-holdout.toml")], "in the plan"),
    (["--double-quant", "--precision", "fp16,int8"], "4-bit"),
])
def test_validate_bad_settings_exit_2_before_measuring(tmp_path, extra, needle):
    args = ["validate", "--profile", CPU_PROFILE, "--out", tmp_path / "r"]
    if "--plan" not in extra:
        args += ["--model", "qwen3-0.6b"]
    assert_refused(invoke_qtsim(*args, *extra), needle)


def test_validation_plan_takes_bitsandbytes_names(tmp_path):
    from qtsim.validate.plan import read_plan
    from qtsim.validate.predict import predict_point

    plan = tmp_path / "p.toml"
    plan.write_text('[validation]\nbnb_4bit_use_double_quant = true\n'
                    '[[points]]\nmodel = "m"\nprecision = "nf4"\nbatch = 2\n'
                    '[[points]]\nmodel = "m"\nprecision = "int8"\nbatch = 2\nllm_int8_threshold = 0\n')
    _, pts = read_plan(str(plan))
    assert pts[0].workload.double_quant and pts[0].workload.family == "nf4dq"
    assert pts[1].workload.bnb.int8_threshold == 0.0 and not pts[1].workload.bnb.double_quant
    cfg, name, _ = load_config("qwen3-0.6b")
    pred = predict_point(Simulator(load_profile(path=CPU_PROFILE)), cfg, name, pts[0])
    assert pred["pred_kernel_family"] == "nf4dq"
    bad = tmp_path / "bad.toml"
    bad.write_text('[[points]]\nmodel = "m"\nprecision = "int8"\nbatch = 2\nllm_int8_threshold = 4\n')
    with pytest.raises(QtsimError, match="llm_int8_threshold"):
        read_plan(str(bad))


def test_config_names_two_files_in_one_folder(tmp_path):
    """`validate --model d/a.json,d/b.json` once stopped on duplicate point ids."""
    from qtsim.calibration.probes.plan import DecodeSpec
    from qtsim.validate.plan import grid_points

    cfg = json.loads((ROOT / "data/validation/tiny-llama-a.json").read_text())
    cfg.pop("_qtsim_name", None)
    d = tmp_path / "d"
    d.mkdir()
    for n in ("a", "b"):
        (d / f"{n}.json").write_text(json.dumps(cfg))
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(cfg))
    assert config_display_name(d / "a.json", cfg) == "a"
    assert config_display_name(tmp_path / "llama" / "config.json", cfg) == "llama"
    assert config_display_name(d / "a.json", {**cfg, "_qtsim_name": "mine"}) == "mine"
    pts = grid_points([str(d / "a.json"), str(d / "b.json")], ["fp16"], [2],
                      Workload(new_tokens=8, prompt_tokens=4))
    ids = {DecodeSpec(load_config(p.model)[1], cfg, p.workload.precision, p.batch,
                      p.workload.prompt_tokens, p.workload.new_tokens).point_id() for p in pts}
    assert len(ids) == 2


def test_cpu_heldout_band_coverage(capsys):
    """The CI figure: 68%/95% band coverage on the CPU held-out validation set."""
    pytest.importorskip("h5py")
    from qtsim.calibration.measure.raw import RawStore
    from qtsim.validate.coverage import coverage_table
    from qtsim.validate.score import measured_frame

    df = measured_frame(RawStore(ROOT / "data" / "raw" / "cpu-validation.h5", readonly=True).summary_frame("decode"))
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
