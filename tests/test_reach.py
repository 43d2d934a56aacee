"""Issue 13: bitsandbytes settings, any GPU, compare, budget units, serving statement, naming."""

import csv
import io
import json

import numpy as np
import pytest

from qtsim.errors import QtsimError
from qtsim.model import paths, physical
from qtsim.model.architecture import config_display_name, load_architecture, load_config
from qtsim.model.workload import BnbSettings, Workload
from qtsim.profiles.hardware import load_profile
from qtsim.report import budget
from qtsim.simulate import thresholds
from qtsim.simulate.simulator import Simulator

from .conftest import (
    CPU_PROFILE,
    ROOT,
    assert_refused,
    invoke_qtsim,
)


# ---- settings reach the model, B* and N* ------------------------------------------------------
def test_path_family_every_setting():
    assert paths.path_family("nf4", True) == "nf4dq"
    assert paths.path_family("fp4", True) == "fp4dq"
    assert paths.path_family("int8", False, 0) == "int8_t0"
    assert paths.path_family("int8", False, 6.0) == "int8"
    prof = load_profile("l4")
    assert paths.resolve_path(prof.values(), "fp4dq_b1") in ("nf4dq_b1", "nf4_b1", "nf4")


@pytest.mark.parametrize("bnb,precision", [(BnbSettings(double_quant=True), "nf4"),
                                           (BnbSettings(int8_threshold=0), "int8"),
                                           (BnbSettings(compute_dtype="fp16"), "nf4")])
def test_settings_reach_threshold_grids(bnb, precision):
    """The B*/N* grids evaluate through the simulator's settings (double_quant was dropped)."""
    prof = load_profile(path=CPU_PROFILE)  # calibrated: nf4dq, int8_t0, fp16 and bf16 paths
    arch = load_architecture("qwen3-0.6b")
    counts = thresholds.map_counts(arch.counts(), np.atleast_1d)
    w = Workload(precision, [1.0, 8.0], 64, 16)
    base = thresholds.grid_eval(Simulator(prof), counts, w)
    other = thresholds.grid_eval(Simulator(prof), counts, w.replace(bnb=bnb))
    assert not np.allclose(base["j_per_query"], other["j_per_query"])


def test_b_star_and_n_star_use_every_setting(monkeypatch):
    seen = []
    real = physical.query

    def spy(counts, workload, *a, **kw):
        seen.append((workload.precision, workload.bnb.double_quant, workload.bnb.int8_threshold))
        return real(counts, workload, *a, **kw)

    monkeypatch.setattr(physical, "query", spy)
    sim = Simulator(load_profile("l4"))
    bnb = BnbSettings(double_quant=True, int8_threshold=0)
    arch = load_architecture("mistral-7b")
    sim.b_star(arch.counts(), Workload("nf4", 1, 64, 16, bnb))
    sim.n_star(arch, Workload("int8", 4, 64, 16, bnb))
    quant = [s for s in seen if s[0] in ("nf4", "int8")]
    assert quant and all(dq is True and t == 0.0 for _, dq, t in quant)


def test_double_quant_moves_b_star_and_n_star():
    """Double quantisation reaches B* and N* through the Simulator (issue 14: it was dropped)."""
    prof = load_profile(path=CPU_PROFILE)  # calibrated: its own nf4dq kernel paths
    sim = Simulator(prof, n_draws=20)
    arch = load_architecture("qwen3-0.6b")
    plain = Workload("nf4", 1, 64, 16)
    dq = plain.replace(bnb=BnbSettings(double_quant=True))
    b_plain, b_dq = sim.b_star(arch.counts(), plain), sim.b_star(arch.counts(), dq)
    n_plain, n_dq = sim.n_star(arch, plain), sim.n_star(arch, dq)
    r_plain = thresholds.b_star_rows(sim, thresholds.map_counts(arch.counts(), np.atleast_1d),
                                     plain, details=True)
    r_dq = thresholds.b_star_rows(sim, thresholds.map_counts(arch.counts(), np.atleast_1d), dq,
                                  details=True)
    assert not np.allclose(r_plain["b_star_delta"], r_dq["b_star_delta"])
    assert (b_plain.value, b_plain.kind, n_plain.value, n_plain.kind) != (
        b_dq.value, b_dq.kind, n_dq.value, n_dq.kind)
    assert n_dq.memory["largest_fitting_quantized_params"] >= \
        n_plain.memory["largest_fitting_quantized_params"]


@pytest.mark.parametrize("kw,needle", [
    ({"int8_threshold": 3}, "llm_int8_threshold 6"),
    ({"int8_threshold": "x"}, "not a number"),
    ({"compute_dtype": "fp64"}, "fp16, bf16, fp32"),
])
def test_bnb_settings_refuse_bad_values(kw, needle):
    with pytest.raises(QtsimError, match=needle):
        BnbSettings(**kw)


def test_bnb_settings_check_and_config_names():
    with pytest.raises(QtsimError, match="4-bit"):
        BnbSettings(double_quant=True).check(["int8"])
    with pytest.raises(QtsimError, match="int8 only"):
        BnbSettings(int8_threshold=0).check(["nf4"])
    with pytest.raises(QtsimError, match="no fp32 kernel path"):
        BnbSettings(compute_dtype="fp32").check(["nf4"], load_profile("l4"))
    cfg = BnbSettings(double_quant=True, compute_dtype="bf16").bnb_config("nf4")
    assert cfg["bnb_4bit_use_double_quant"] is True and cfg["bnb_4bit_compute_dtype"] == "bfloat16"
    assert cfg["llm_int8_threshold"] is None
    assert BnbSettings(int8_threshold=0).bnb_config("int8")["llm_int8_threshold"] == 0.0


# ---- trap ---------------------------------------------------------------------------------------
def test_trap_json_carries_bitsandbytes_budget_and_serving():
    r = invoke_qtsim("trap", "--gpu", "t4", "--model", "llama-3.1-8b", "--precision", "nf4", "--double-quant",
           "--batch", "8", "--draws", "20", "--grid-gco2-per-kwh", "400", "--pue", "1.2",
           "--usd-per-hour", "0.5", "--format", "json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["bitsandbytes"]["bnb_4bit_use_double_quant"] is True
    assert rep["bitsandbytes"]["bnb_4bit_compute_dtype"] == "float16"
    b = rep["budget"]
    j = rep["quantized"]["j_per_query"]["value"]
    assert b["quantized"]["kwh_per_million_queries"] == pytest.approx(j * 1.2 / 3.6)
    assert b["quantized"]["gco2e_per_query"] == pytest.approx(j * 1.2 / 3.6e6 * 400)
    tps = rep["quantized"]["tok_per_s"]["value"]
    assert b["quantized"]["usd_per_million_tokens"] == pytest.approx(0.5 / (tps * 3600) * 1e6)
    assert b["assumptions"] == {"pue": 1.2, "grid_gco2_per_kwh": 400.0, "usd_per_hour": 0.5,
                                "energy_scope": "GPU board energy",
                                "energy_boundary": "GPU board energy x PUE 1.2 (facility overhead)"}
    from qtsim.model.stack import CURRENT_BNB
    from qtsim.profiles.hosts import load_host

    fitted = load_host(None).host["stack"]["bitsandbytes"]  # the default host part's table
    # a spec profile predicts the current release unless told (issue 24), and says so
    assert rep["serving"]["bitsandbytes_version"] == CURRENT_BNB
    assert rep["serving"]["bitsandbytes_version_source"].startswith("assumed")
    assert f"host constants fitted on {fitted}" in rep["serving"]["statement"]
    assert "vLLM/TGI" in rep["serving"]["statement"]


def test_trap_int8_threshold_zero_changes_the_prediction():
    def j(*extra):
        r = invoke_qtsim("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "int8",
               "--draws", "10", "--format", "json", *extra)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        return rep["quantized"]["j_per_query"]["value"], rep["bitsandbytes"]["llm_int8_threshold"]

    (j6, t6), (j0, t0) = j(), j("--int8-threshold", "0")
    assert (t6, t0) == (6.0, 0.0) and j0 < j6


def test_trap_text_states_assumptions_and_serving_model():
    r = invoke_qtsim("trap", "--profile", CPU_PROFILE, "--model", "qwen3-0.6b", "--precision", "nf4",
           "--draws", "10", "--usd-per-hour", "1.5")
    assert r.returncode == 0, r.stderr
    assert "kWh/M queries" in r.stdout and "$1.5/GPU-hour" in r.stdout
    # a CPU profile without RAPL: its energy is the TDP x time estimate, and it says so
    assert "PUE 1 (CPU package energy estimated as TDP x time (no RAPL) only)" in r.stdout
    assert "GPU board" not in r.stdout
    assert "bitsandbytes 0.50.2" in r.stdout and "eager" in r.stdout


@pytest.mark.parametrize("extra,needle", [
    (["--int8-threshold", "3"], "llm_int8_threshold"),
    (["--int8-threshold", "abc"], "not a number"),
    (["--compute-dtype", "fp64"], "--compute-dtype"),
    (["--compute-dtype", "fp32"], "no fp32 kernel path"),
    (["--double-quant", "--precision", "int8"], "4-bit"),
    (["--pue", "0.5"], "--pue"),
    (["--pue", "nan"], "--pue"),
    (["--grid-gco2-per-kwh", "-1"], "--grid-gco2-per-kwh"),
    (["--usd-per-hour", "x"], "--usd-per-hour"),
])
def test_trap_bad_settings_exit_2(extra, needle):
    args = ["trap", "--gpu", "l4", "--model", "mistral-7b", "--draws", "10"]
    if "--precision" not in extra:
        args += ["--precision", "int8" if "--int8-threshold" in extra else "nf4"]
    assert_refused(invoke_qtsim(*args, *extra), needle)


def test_budget_arithmetic():
    assert budget.kwh_per_million_queries(3.6) == pytest.approx(1.0)
    assert budget.gco2e_per_query(3.6e6, 500.0, pue=1.5) == pytest.approx(750.0)
    assert budget.usd_per_million_tokens(1e6 / 3600, 2.0) == pytest.approx(2.0)
    f = budget.figures(100.0, 10.0, budget.BudgetAssumptions())
    assert f["gco2e_per_query"] is None and f["usd_per_million_tokens"] is None


# ---- simulate and validate ---------------------------------------------------------------------
def test_simulate_records_bitsandbytes_settings(tmp_path):
    import h5py

    out = tmp_path / "s.h5"
    r = invoke_qtsim("simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--precision", "fp16,nf4",
           "--batch", "1,4", "--double-quant", "--compute-dtype", "bf16", "--out", out)
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        assert bool(f.attrs["bnb_4bit_use_double_quant"]) is True
        assert f.attrs["bnb_4bit_compute_dtype"] == "bf16"
        assert float(f.attrs["llm_int8_threshold"]) == 6.0


@pytest.mark.parametrize("extra,needle", [
    (["--int8-threshold", "2", "--precision", "fp16,int8"], "llm_int8_threshold"),
    (["--int8-threshold", "0", "--precision", "fp16,nf4"], "int8 only"),
    (["--double-quant", "--precision", "fp16,int8"], "4-bit"),
])
def test_simulate_bad_settings_exit_2(tmp_path, extra, needle):
    assert_refused(invoke_qtsim("simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--batch", "1",
                      "--out", tmp_path / "x.h5", *extra), needle)


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
    from qtsim.model.workload import Workload
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


# ---- any GPU -----------------------------------------------------------------------------------
NEW_GPUS = {"t4": (320, 65, 70), "a10g": (600, 70, 300), "a10": (600, 125, 150),
            "l40s": (864, 362.05, 350), "rtx-4090": (1008, 165.2, 450),
            "rtx-6000-ada": (960, 364.2, 300)}


@pytest.mark.parametrize("gpu", sorted(NEW_GPUS))
def test_new_gpus_ship_with_sources(gpu):
    from qtsim.profiles.priors import public_fit, spec_rows

    row = {r["gpu"]: r for r in spec_rows()}[gpu]
    assert row["source"].strip()
    bw, tflops, tdp = NEW_GPUS[gpu]
    prof = load_profile(gpu)
    assert prof.hardware["mem_bw_gbs"] == bw and prof.hardware["fp16_tflops"] == tflops
    assert prof.tdp_w == tdp and prof.source == "spec"
    share = public_fit()["power"]["byte_share"]["value"]  # streaming at datasheet BW: share x TDP
    assert prof.physical["e_byte_j"].value == pytest.approx(share * tdp / (bw * 1e9), rel=1e-3)


def test_profiles_new_matches_shipped_priors(tmp_path, monkeypatch):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    r = invoke_qtsim("profiles", "new", "my-l4", "--memory-gib", "22.35", "--bandwidth-gbs", "300",
           "--fp16-tflops", "121", "--int8-tops", "242", "--tdp-w", "72",
           "--architecture", "ada-lovelace")
    assert r.returncode == 0, r.stderr
    mine, shipped = load_profile("my-l4"), load_profile("l4")
    assert (tmp_path / "my-l4.toml").is_file() and mine.path == str(tmp_path / "my-l4.toml")
    for k, p in shipped.physical.items():
        assert mine.physical[k].value == pytest.approx(p.value), k
        assert mine.physical[k].source == p.source
    assert mine.hardware["architecture"] == "ada-lovelace"
    r = invoke_qtsim("trap", "--gpu", "my-l4", "--model", "mistral-7b", "--precision", "nf4", "--draws", "10")
    assert r.returncode == 0 and "(host part hf-eager)" in r.stdout
    assert_refused(invoke_qtsim("profiles", "new", "my-l4", "--memory-gib", "24", "--bandwidth-gbs", "300",
                      "--fp16-tflops", "121", "--int8-tops", "242", "--tdp-w", "72"), "--force")
    r = invoke_qtsim("profiles", "new", "my-l4", "--memory-gib", "24", "--bandwidth-gbs", "300",
           "--fp16-tflops", "121", "--int8-tops", "242", "--tdp-w", "72", "--force")
    assert r.returncode == 0 and load_profile("my-l4").hardware["memory_gib"] == 24.0


GOOD = {"--memory-gib": "24", "--bandwidth-gbs": "300", "--fp16-tflops": "121",
        "--int8-tops": "242", "--tdp-w": "72"}


@pytest.mark.parametrize("opt,value,needle", [
    ("--memory-gib", "-4", "positive"), ("--memory-gib", "lots", "not a number"),
    ("--bandwidth-gbs", "0", "positive"), ("--bandwidth-gbs", "3e9", "outside"),
    ("--fp16-tflops", "inf", "positive"), ("--int8-tops", "nan", "positive"),
    ("--tdp-w", "1", "outside"), ("--memory-type", "sram", "hbm or gddr"),
])
def test_profiles_new_refuses_bad_numbers(tmp_path, monkeypatch, opt, value, needle):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    args = {**GOOD, opt: value}
    assert_refused(invoke_qtsim("profiles", "new", "x1", *[a for kv in args.items() for a in kv]), needle)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,needle", [("Bad Name", "profile name"), ("l4", "shadow")])
def test_profiles_new_refuses_bad_or_shipped_names(tmp_path, monkeypatch, name, needle):
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path))
    assert_refused(invoke_qtsim("profiles", "new", name, *[a for kv in GOOD.items() for a in kv]), needle)


# ---- compare -----------------------------------------------------------------------------------
def test_compare_text_json_csv(tmp_path):
    base = ["compare", "--model", "llama-3.1-8b", "--batch", "8", "--gpu", "t4,l4,a10g",
            "--precision", "fp16,nf4", "--draws", "20"]
    r = invoke_qtsim(*base, "--usd-per-hour", "0.53,0.8,1.0", "--sort", "usd_per_million_tokens")
    assert r.returncode == 0, r.stderr
    for needle in ("tok/s", "latency s", "J/query", "kWh/M q", "$/M tok", "verdict",
                   "does not fit", "t4 0.53", "serving model", "PUE 1"):
        assert needle in r.stdout, needle
    r = invoke_qtsim(*base, "--format", "json", "--double-quant", "--grid-gco2-per-kwh", "300")
    rep = json.loads(r.stdout)
    assert len(rep["rows"]) == 6
    assert rep["bitsandbytes"]["nf4"]["bnb_4bit_use_double_quant"] is True
    assert {r["precision"] for r in rep["rows"]} == {"fp16", "nf4+dq"}
    fits = [row["fits"] for row in rep["rows"]]
    assert fits == sorted(fits, reverse=True)  # what does not fit comes last
    js = [row["j_per_query"] for row in rep["rows"] if row["fits"]]
    assert js == sorted(js)
    assert all(row["gco2e_per_query"] > 0 for row in rep["rows"] if row["fits"])
    # a configuration that cannot run has no figures at all (issue 24)
    assert all(row["gco2e_per_query"] is None and row["tok_per_s"] is None
               for row in rep["rows"] if not row["fits"])
    t4 = {row["precision"]: row for row in rep["rows"] if row["gpu"] == "t4"}
    assert t4["fp16"]["verdict"] == "does not fit" and t4["nf4+dq"]["verdict"].startswith("only option")
    r = invoke_qtsim(*base, "--format", "csv", "--sort", "tok_per_s")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 6 and "kwh_per_million_queries" in rows[0]
    tps = [float(x["tok_per_s"]) for x in rows if x["fits"] == "True"]
    assert tps == sorted(tps, reverse=True)


def test_compare_all_gpus_and_plot(tmp_path):
    png = tmp_path / "cmp.png"
    r = invoke_qtsim("compare", "--model", "qwen3-0.6b", "--precision", "fp16,int8", "--draws", "10",
           "--format", "json", "--plot", png)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert set(NEW_GPUS) <= set(rep["query"]["gpus"]) and "l4" in rep["query"]["gpus"]
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("extra,needle", [
    (["--sort", "speed"], "--sort"), (["--batch", "0"], "--batch"), (["--batch", "x"], "--batch"),
    (["--gpu", "l5"], "unknown GPU"), (["--gpu", "l4,l4"], "twice"),
    (["--usd-per-hour", "1,2,3"], "one per GPU"), (["--precision", "int3"], "int3"),
    (["--int8-threshold", "1"], "llm_int8_threshold"), (["--draws", "1"], "--draws"),
    (["--pue", "0"], "--pue"), (["--tokens", "0"], "--tokens"),
])
def test_compare_bad_input_exit_2(extra, needle):
    gpu = [] if "--gpu" in extra else ["--gpu", "l4,t4"]  # an option given twice is refused
    args = ["compare", "--model", "mistral-7b", "--draws", "10", *gpu, *extra]
    r = invoke_qtsim(*args)
    if needle == "int3":  # precision errors come from click's option parsing helper
        assert r.returncode == 2 and needle in r.stderr
        return
    assert_refused(r, needle)
