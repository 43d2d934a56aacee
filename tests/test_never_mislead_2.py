"""Issue 24: never mislead, round two. One fixture per odd input, each asserting the exact
refusal or the corrected answer (items 1-10 of the issue, in order)."""

import csv
import io
import json
import re
import socket
import tomllib
from pathlib import Path

import numpy as np
import pytest

from qtsim.model.architecture import load_config
from qtsim.profiles.hardware import load_profile

from .conftest import invoke_qtsim

ROOT = Path(__file__).parents[1]
L4 = (ROOT / "hardware_profiles" / "l4.toml").read_text()
TRAP = ["trap", "--model", "mistral-7b", "--precision", "nf4", "--draws", "20"]


def qtsim(*args, env=None):
    r = invoke_qtsim(*args, env=env)
    return r.returncode, r.stdout, r.stderr


def refused(args, needle, env=None):
    """``qtsim ARGS`` exits 2 with one line holding ``needle``."""
    code, out, err = qtsim(*args, env=env)
    assert code == 2, (out, err)
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def edited(tmp_path, name, *subs, text=L4):
    """A copy of the shipped L4 profile with ``(old, new)`` substitutions (each must apply)."""
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new, 1)
    f = tmp_path / name
    f.write_text(text)
    return str(f)


# ---- 1. [hardware] numbers drive the answer, or are refused ------------------------------------
FAST = (("mem_bw_gbs = 300.0", "mem_bw_gbs = 3000.0"), ("fp16_tflops = 121.0", "fp16_tflops = 1000.0"),
        ("tdp_w = 72.0", "tdp_w = 700.0"), ("idle_w = 7.2", "idle_w = 70.0"))


def test_edited_datasheet_figures_change_the_answer_and_say_so(tmp_path):
    fast = edited(tmp_path, "l4-fast.toml", *FAST)
    base = json.loads(qtsim(*TRAP, "--gpu", "l4", "--format", "json")[1])
    code, out, err = qtsim(*TRAP, "--profile", fast, "--format", "json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["quantized"]["j_per_query"]["value"] != base["quantized"]["j_per_query"]["value"]
    assert rep["native"]["tok_per_s"]["value"] > 2 * base["native"]["tok_per_s"]["value"]
    changed = {r["constant"]: r for r in rep["profile"]["recomputed"]}
    bw = load_profile("l4").physical["mem_bw_gbs"].value  # the shipped L4's effective bandwidth
    assert changed["mem_bw_gbs"]["file"] == pytest.approx(bw)
    assert changed["mem_bw_gbs"]["derived"] == pytest.approx(10 * bw, rel=1e-4)
    assert changed["p_awake_w"]["derived"] > 3 * changed["p_awake_w"]["file"]  # TDP 72 -> 700 W
    assert changed["p_cap_w"]["derived"] == pytest.approx(700.0)
    text = qtsim(*TRAP, "--profile", fast)[1]
    assert "profile note: [physical] recomputed from [hardware]" in text
    assert f"mem_bw_gbs {bw:.4g} -> {10 * bw:.4g} GB/s" in text


def test_a_value_of_the_users_own_is_kept(tmp_path):
    own = edited(tmp_path, "l4-own.toml", *FAST,
                 ('[physical.p_idle_w]\nvalue = 7.2\nstderr = 3.6\nunit = "W"\nsource = "prior"',
                  '[physical.p_idle_w]\nvalue = 20.0\nstderr = 2.0\nunit = "W"\nsource = "assumed"'))
    from qtsim.profiles.hardware import read_profile

    p = read_profile(own)
    assert p.physical["p_idle_w"].value == 20.0  # source assumed: the user's, not re-derived
    assert p.physical["mem_bw_gbs"].value == pytest.approx(
        10 * load_profile("l4").physical["mem_bw_gbs"].value)


def test_shipped_profiles_agree_with_their_datasheet_figures():
    from qtsim.profiles.hardware import list_profiles, load_profile

    for r in list_profiles():
        assert not load_profile(r["name"]).provenance.get("recomputed"), r["name"]


BAD_PROFILES = [
    ("negative bandwidth", (("mem_bw_gbs = 300.0", "mem_bw_gbs = -300.0"),),
     "[hardware] mem_bw_gbs = -300.0 is outside 10-100000 GB/s"),
    ("idle above TDP", (("idle_w = 7.2", "idle_w = 500.0"),),
     "[hardware] idle_w = 500.0 must lie between 0 and tdp_w = 72 W"),
    ("misspelled hardware key", (("mem_bw_gbs = 300.0", "mem_bw_gbsx = 300.0"),),
     "unknown [hardware] key 'mem_bw_gbsx' (did you mean: mem_bw_gbs"),
    ("misspelled constant", (("[physical.p_idle_w]", "[physical.p_idel_w]"),),
     "[physical.p_idel_w] is not a constant of qtsim's model (did you mean: p_idle_w"),
    ("misspelled field", (('basis = "streaming at', 'basiz = "streaming at'),),
     "[physical.e_byte_j] unknown field 'basiz' (did you mean: basis?)"),
    ("unknown table", (("[provenance]", "[provenence]"),), "unknown table 'provenence'"),
    ("power above TDP", (("[physical.p_idle_w]\nvalue = 7.2", "[physical.p_idle_w]\nvalue = 100.0"),
                         ('[physical.p_idle_w]\nvalue = 100.0\nstderr = 3.6\nunit = "W"\nsource = "prior"',
                          '[physical.p_idle_w]\nvalue = 100.0\nstderr = 3.6\nunit = "W"\nsource = "assumed"')),
     "[physical.p_idle_w] 100 W exceeds [hardware] tdp_w = 72 W"),
]


@pytest.mark.parametrize("subs,needle", [b[1:] for b in BAD_PROFILES],
                         ids=[b[0] for b in BAD_PROFILES])
def test_impossible_or_misspelled_profiles_are_refused(tmp_path, subs, needle):
    refused([*TRAP, "--profile", edited(tmp_path, "bad.toml", *subs)], needle)


# ---- 2. precisions the hardware cannot run -----------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--precision", "bf16"], "--precision bf16: t4 (turing) has no BF16 arithmetic"),
    (["--precision", "nf4", "--compute-dtype", "bf16"],
     "--compute-dtype bf16: t4 (turing) has no BF16 arithmetic"),
])
def test_bf16_on_turing_is_refused(extra, needle):
    refused(["trap", "--gpu", "t4", "--model", "mistral-7b", "--draws", "20", *extra], needle)


def test_bf16_where_it_exists_is_answered():
    code, out, _ = qtsim("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "bf16",
                         "--draws", "20")
    assert code == 0 and "BF16 vs FP16" in out
    refused(["compare", "--gpu", "l4,t4", "--model", "mistral-7b", "--precision", "bf16",
             "--draws", "10"], "t4 (turing) has no BF16")


# ---- 3. nothing that cannot run is drawn or tabled as if it ran --------------------------------
@pytest.fixture(scope="module")
def tight_surface():
    """T4 and L4 for a model that fits neither in 16 bits at batch 8 on the T4 and one that
    fits nowhere (Qwen2.5-72B), with draws."""
    from qtsim.model.architecture import load_architecture
    from qtsim.model.workload import Workload
    from qtsim.profiles.hardware import load_profile
    from qtsim.simulate.surface import simulate

    return simulate([load_profile("t4"), load_profile("l4")],
                    [load_architecture("llama-3.1-8b"), load_architecture("qwen2.5-72b")],
                    ("fp16", "int8", "nf4"), Workload(batch=[1, 8]), n_draws=20)


def test_surface_holds_no_figure_for_what_cannot_run(tight_surface):
    s = tight_surface

    def at(name, gpu, prec, model, batch=8.0):
        return float(s[name].sel(gpu=gpu, precision=prec, model=model, batch=batch))

    assert at("fits", "t4", "fp16", "llama-3.1-8b") == 0
    assert np.isnan(at("j_per_query", "t4", "fp16", "llama-3.1-8b"))
    assert np.isfinite(at("j_per_query", "t4", "int8", "llama-3.1-8b"))  # it runs...
    for q in ("energy_ratio", "cor", "si", "trapped_energy", "p_trapped_energy"):
        assert np.isnan(at(q, "t4", "int8", "llama-3.1-8b")), q  # ...against no 16-bit run
    for q in ("trapped_energy", "p_trapped_energy", "si", "j_per_query", "j_per_query_low"):
        assert np.isnan(at(q, "l4", "nf4", "qwen2.5-72b")), q
    assert at("trapped_energy", "l4", "nf4", "llama-3.1-8b") in (0.0, 1.0)
    nsf = s["n_star_fits"].sel(gpu="l4", precision="nf4").values
    ns = s["n_star"].sel(gpu="l4", precision="nf4").values
    assert np.all(np.isnan(ns[nsf == 0]))


def test_summary_csv_and_plots_say_does_not_fit(tight_surface, tmp_path):
    from qtsim.report.grid import _summary
    from qtsim.report.plots import plot_cor_vs_batch, plot_fig1_panel, save
    from qtsim.simulate.dataset import long_frame

    summary = _summary(tight_surface)
    assert re.search(r"l4 +nf4 +qwen2.5-72b +DOES NOT FIT \(4\d\.\d GiB\)", summary)
    assert re.search(r"t4 +int8 +llama-3.1-8b +ONLY OPTION \(16-bit does not fit\)", summary)
    assert "not trapped" not in summary
    df = long_frame(tight_surface)
    row = df[(df.gpu == "l4") & (df.precision == "nf4") & (df.model == "qwen2.5-72b")
             & (df.quantity == "p_trapped_energy")]
    assert row["value"].isna().all()
    fig = plot_fig1_panel(tight_surface, "qwen2.5-72b")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("does not fit") >= 2 * 3 * 6 - 6  # every configuration, every panel
    bars = [p.get_height() for p in fig.axes[0].patches]
    assert all(np.isnan(h) for h in bars)  # not one throughput bar for what cannot run
    save(plot_cor_vs_batch(tight_surface), tmp_path / "cor.png")  # all-NaN panels still draw


def test_trap_map_has_a_does_not_fit_class():
    from qtsim.model.architecture import load_architecture
    from qtsim.model.workload import Workload
    from qtsim.profiles.hardware import load_profile
    from qtsim.report.plots import plot_trap_maps
    from qtsim.simulate.surface import trap_map

    m = trap_map(load_profile("t4"), load_architecture("mistral-7b"),
                 Workload("nf4", batch=np.array([1.0, 8.0, 64.0])), np.geomspace(1e9, 1e11, 12),
                 n_draws=0)
    assert (~m["fits"]).any() and m["fits"].any()
    fig = plot_trap_maps([m])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "quantized does not fit: no verdict" in labels


def test_compare_and_trap_csv_carry_no_hypothetical_figures():
    code, out, _ = qtsim("compare", "--gpu", "t4", "--model", "llama-3.1-8b", "--batch", "8",
                         "--draws", "10", "--format", "json")
    rows = {r["precision"]: r for r in json.loads(out)["rows"]}
    assert rows["fp16"]["tok_per_s"] is None and rows["fp16"]["j_per_query"] is None
    assert rows["int8"]["energy_ratio"] is None and rows["int8"]["tok_per_s"] > 0
    code, out, _ = qtsim("trap", "--gpu", "l4", "--model", "qwen2.5-72b", "--precision", "nf4",
                         "--draws", "20", "--format", "csv")
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["verdict_energy"] == "does not fit"
    assert row["p_trapped_energy"] == row["si"] == row["energy_ratio"] == row["j_per_query"] == ""


# ---- 4. trust ------------------------------------------------------------------------------------
def test_a_user_table_without_the_model_keeps_the_published_figure(tmp_path):
    f = tmp_path / "acc.csv"
    f.write_text("model,task,precision,accuracy\nllama-3.1-8b,gsm8k,fp16,0.8\n"
                 "llama-3.1-8b,gsm8k,nf4,0.72\n")
    rep = json.loads(qtsim(*TRAP, "--gpu", "l4", "--trust", str(f), "--format", "json")[1])
    assert round(rep["si"]["t_si"], 3) == 0.914
    assert rep["si"]["trust"]["status"] == "published"
    mine = json.loads(qtsim("trap", "--gpu", "l4", "--model", "llama-3.1-8b", "--precision",
                            "nf4", "--draws", "20", "--trust", str(f), "--format", "json")[1])
    assert mine["si"]["t_si"] == pytest.approx(0.9) and mine["si"]["trust"]["status"] == "measured"


def _config(tmp_path, model, name):
    cfg, _, _ = load_config(model)
    path = tmp_path / name / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_qtsim")}))
    return str(path)


def test_published_trust_follows_the_architecture_not_the_name(tmp_path):
    qwen = _config(tmp_path, "qwen2.5-0.5b", "q")  # a network the paper did not evaluate
    rep = json.loads(qtsim("trap", "--gpu", "l4", "--model", f"mistral-7b={qwen}",
                           "--precision", "nf4", "--draws", "20", "--format", "json")[1])
    t = rep["si"]["trust"]
    assert rep["si"]["t_si"] == 1.0 and t["status"] == "assumed"
    assert "a published figure exists for mistral-7b-v0.3, but this 'mistral-7b' config is " \
           "another network (qwen2, 24 layers, hidden 896 vs mistral, 32 layers, hidden 4096)" \
           in t["source"]
    qwen3 = _config(tmp_path, "qwen3-0.6b", "q3")  # the paper's Qwen3-0.6B under another name
    rep = json.loads(qtsim("trap", "--gpu", "l4", "--model", f"mistral-7b={qwen3}",
                           "--precision", "nf4", "--draws", "20", "--format", "json")[1])
    assert rep["si"]["t_si"] == pytest.approx(0.33 / 0.38)  # Qwen3's, not Mistral's
    mistral = _config(tmp_path, "mistral-7b", "m")
    rep = json.loads(qtsim("trap", "--gpu", "l4", "--model", f"my-mistral={mistral}",
                           "--precision", "nf4", "--draws", "20", "--format", "json")[1])
    assert round(rep["si"]["t_si"], 3) == 0.914
    assert "matched by architecture: my-mistral has the same shapes" in rep["si"]["trust"]["source"]


# ---- 5. sizes that cannot exist or cannot run ------------------------------------------------------
def test_impossible_grouped_query_attention_is_refused(tmp_path):
    cfg, _, _ = load_config("qwen2.5-0.5b")  # 14 heads
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_qtsim")}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({**cfg, "num_attention_heads": 28, "num_key_value_heads": 5,
                                "head_dim": 64}))
    refused(["trap", "--gpu", "l4", "--model", str(path), "--precision", "nf4"],
            "num_key_value_heads 5 does not divide num_attention_heads 28")


@pytest.mark.parametrize("draws", ["1", "9"])
def test_simulate_refuses_a_band_from_too_few_draws(tmp_path, draws):
    refused(["simulate", "--gpu", "l4", "--model", "mistral-7b", "--draws", draws, "--out",
             str(tmp_path / "s.h5")], f"--draws {draws}: give 0 (no bands) or at least 10 draws")


def test_draws_and_grids_that_cannot_fit_in_memory_are_refused_up_front(tmp_path, monkeypatch):
    from qtsim.simulate import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    refused(["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--draws",
             "100000"], "--draws 100000 needs about 2.19 GiB of memory and this machine has "
                        "1 GiB available: use --draws 44418 or fewer")
    refused(["simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch", "1:1e7:1e7", "--out",
             str(tmp_path / "s.h5")], "a grid of 7,035,462 points (GPU x precision x model x "
                                      "batch) needs about 3.77 GiB of memory")
    assert not (tmp_path / "s.h5").exists()
    code, _, err = qtsim("simulate", "--gpu", "l4", "--model", "mistral-7b", "--batch",
                         "1:1e9:1e9", "--out", str(tmp_path / "s.h5"))
    assert code == 2 and "up to 1,000,000,000 batch sizes; give at most 10,000,000" in err


def test_the_trap_memory_estimate_covers_a_real_run():
    import subprocess
    import sys

    from qtsim.simulate.memory import trap_bytes

    # VmHWM of a fresh interpreter (ru_maxrss would carry over the forking pytest's own size)
    code = ("import re; from qtsim.report.trap import trap_text; "
            "from qtsim.model.workload import Workload; "
            "trap_text('l4', None, 'mistral-7b', Workload('nf4'), n_draws=3000); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) * 1024)")
    peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split()[-1])
    assert peak <= trap_bytes(3000) <= 1.6 * peak


# ---- 6. options and environment ---------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["trap", "--gpu", "l4", "--gpu", "t4", "--model", "mistral-7b", "--precision", "nf4"],
     "--gpu given more than once: give it once; only one value is used (`qtsim trap --help`)"),
    (["simulate", "--gpu", "l4", "--gpu", "t4", "--model", "mistral-7b", "--out", "x.h5"],
     "--gpu given more than once: give it once (it takes a comma-separated list)"),
    (["compare", "--model", "mistral-7b", "--batch", "1", "--batch", "8"],
     "--batch given more than once"),
])
def test_an_option_given_twice_is_refused(args, needle):
    refused(args, needle)


def test_a_missing_profile_directory_is_refused():
    refused([*TRAP, "--gpu", "l4"], "QTSIM_PROFILE_DIR=/no/such/dir: no such directory",
            env={"QTSIM_PROFILE_DIR": "/no/such/dir"})


def test_a_user_profile_shadowing_a_shipped_one_says_so(tmp_path):
    (tmp_path / "l4.toml").write_text(L4)
    out = qtsim(*TRAP, "--gpu", "l4", env={"QTSIM_PROFILE_DIR": str(tmp_path)})[1]
    assert f"profile: l4 (user file {tmp_path / 'l4.toml'} (named like the shipped l4, but not " \
           "its figures)" in out


def test_memory_that_decides_fitting_keeps_its_difference():
    from qtsim.simulate.stats import gib_texts

    assert gib_texts(14.944, 14.9) == ["14.94 GiB", "14.90 GiB"]
    assert gib_texts(6.4, 14.9) == ["6.4 GiB", "14.9 GiB"]
    out = qtsim("trap", "--gpu", "t4", "--model", "mistral-7b", "--precision", "nf4", "--batch",
                "18", "--draws", "20")[1]
    assert out.startswith("ONLY NF4 FITS: mistral-7b needs 14.94 GiB at FP16 but ")
    assert "t4 has 14.90 GiB (batch 18)" in out.splitlines()[0]


def test_outputs_are_not_overwritten_without_force(tmp_path):
    out = tmp_path / "grid.h5"
    out.write_text("keep me")
    args = ["simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--batch", "1", "--out", str(out)]
    refused(args, f"{out} exists (--out): pass --force to replace it")
    assert out.read_text() == "keep me"
    assert qtsim(*args, "--force")[0] == 0 and out.read_bytes()[:4] == b"\x89HDF"
    png = tmp_path / "c.png"
    png.write_text("keep")
    refused(["compare", "--model", "qwen3-0.6b", "--gpu", "l4", "--draws", "10", "--plot",
             str(png)], f"{png} exists (--plot)")
    prof = tmp_path / "p.toml"
    prof.write_text("keep")
    refused(["fit", str(ROOT / "data" / "raw" / "cpu-calibration.h5"), "--out", str(prof)],
            f"{prof} exists (--out)")


# ---- 7. a fleet without a cluster -----------------------------------------------------------------
def test_fleet_without_a_cluster_fails_in_seconds(tmp_path):
    pytest.importorskip("ray")
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    refused(["fleet", "calibrate", "--address", f"127.0.0.1:{port}", "--out",
             str(tmp_path / "f")], f"--address 127.0.0.1:{port}: no Ray cluster answers at "
                                   f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "f").exists()


def test_fleet_auto_without_a_cluster_says_how_to_start_one(monkeypatch):
    pytest.importorskip("ray")
    import ray._private.services as services

    from qtsim.calibration import campaigns
    from qtsim.errors import QtsimError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda *a, **k: None)
    with pytest.raises(QtsimError, match=r"--address auto: no Ray cluster is running on this "
                                         r"machine; start one with `ray start --head`"):
        campaigns.cluster_endpoint("auto")
    with pytest.raises(QtsimError, match="give HOST:PORT, ray://HOST:PORT or auto"):
        campaigns.cluster_endpoint("nowhere")


# ---- 8. a calibration that knows when it was disturbed ------------------------------------------------
def _frame(times_ref, cv=0.01, load=None):
    import pandas as pd

    rows = [{"kind": "linear", "purpose": "calibration", "t_median_s": 1.0, "t_std_s": cv,
             "torch_threads": 1, "logical_cores": 2, "load_1m": load}] * 10
    rows += [{"kind": "decode", "purpose": "drift", "drift_of": "decode__ref", "drift_index": i,
              "t_generate_s": t, "t_median_s": t, "t_std_s": 0.0, "torch_threads": 1,
              "logical_cores": 2, "load_1m": load} for i, t in enumerate(times_ref)]
    return pd.DataFrame(rows)


def test_contention_is_measured_and_judged():
    from qtsim.calibration.contention import contention_report

    # the first repeat, before anything else ran, is a warm-up: not judged
    quiet = contention_report(_frame([0.90, 0.50, 0.51, 0.505], load=1.2))
    assert quiet["verdict"] == "quiet" and quiet["drift_range_max"] == pytest.approx(0.02)
    bad = contention_report(_frame([0.50, 0.50, 0.65, 0.55], cv=0.2, load=3.0))
    assert bad["verdict"] == "disturbed"
    assert bad["reasons"][0] == ("reference point decode__ref measured 30% apart across the run "
                                 "(tolerance 10%)")
    assert "repetitions spread 20.0%" in bad["reasons"][1]
    assert "other processes kept 1.00 threads per core busy" in bad["reasons"][2]
    assert bad["lines"][1].startswith("WARNING: measured on a disturbed machine")
    old = contention_report(_frame([]))  # a raw file from before this
    assert old["verdict"] == "not measured"


def test_the_plan_repeats_its_reference_points(monkeypatch):
    from types import SimpleNamespace

    from qtsim.calibration import plan as plan_mod
    from qtsim.calibration.contention import DRIFT_PROBES, DriftSpec, with_drift_probes
    from qtsim.calibration.plan import estimate_plan_s, quick_plan

    dev = SimpleNamespace(backend="cpu", name="cpu")
    plan = quick_plan(dev)
    probed = with_drift_probes(plan)
    drift = [p for p in probed if isinstance(p, DriftSpec)]
    assert len(drift) == 2 * DRIFT_PROBES and isinstance(probed[0], DriftSpec)
    assert isinstance(probed[-1], DriftSpec)
    ids = [p.point_id() for p in probed]
    assert len(set(ids)) == len(ids)
    # the announced duration is a measured one: this plan's 130 points took 165 s on the
    # 2-core VM with two threads (issue 21, docs/speed.md; the old plan's 270 s with one
    # thread, data/raw/cpu-epyc-2c-calibration.h5, announced 3.0 min before issue 24)
    monkeypatch.setattr(plan_mod, "_cpu_threads", lambda device: 2)
    assert 0.8 * 165 <= estimate_plan_s(probed, dev) <= 1.2 * 165


def test_a_fit_marks_what_it_did_not_identify():
    from qtsim.calibration.calibrate import fit_lines
    from qtsim.calibration.profile_builder import build_profile

    prof, fit = build_profile(ROOT / "data" / "raw" / "cpu-epyc-2c-calibration.h5")
    assert prof.fit["contention"]["verdict"] == "not measured"
    bad = prof.fit["unidentified"]
    assert bad["h_op_s"].endswith("stderr exceeds the value")
    lines = fit_lines(prof, fit, "x.toml")
    assert any(x.startswith(f"  WARNING: {len(bad)} constant(s) not identified") for x in lines)
    code, out, _ = qtsim("profiles", "show", "--profile", str(ROOT / "data" / "profiles" /
                                                             "cpu-epyc-2c.toml"))
    assert code == 0 and "NOT IDENTIFIED" in out and "not identified by the measurements" in out


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


# ---- 9. validation honesty ------------------------------------------------------------------------------
def test_one_model_gives_no_leave_one_model_out_figure():
    from qtsim.calibration.raw import RawStore
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


def test_steady_memory_is_what_the_model_holds():
    from types import SimpleNamespace

    from qtsim.calibration.decode import steady_memory

    cpu, cuda = SimpleNamespace(backend="cpu"), SimpleNamespace(backend="cuda")
    got = steady_memory(900_000_000, 6_000_000, cpu)  # the process's peak RSS is not it
    assert got["steady_memory_bytes"] == 6_000_000
    assert got["steady_memory_kind"].startswith("bytes of the tensors the built model holds")
    assert steady_memory(900, None, cpu) == {}
    assert steady_memory(900, 6, cuda)["steady_memory_bytes"] == 900


def test_held_tensor_bytes_count_bitsandbytes_state():
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from types import SimpleNamespace

    from qtsim.calibration.decode import build_model, held_tensor_bytes
    from qtsim.calibration.plan import TINY_QWEN3_CONFIG
    from qtsim.model.architecture import from_config
    from qtsim.validate.predict import steady_bytes

    class Cpu(SimpleNamespace):
        def synchronize(self):
            pass

    dev = Cpu(backend="cpu", name="cpu", torch_device=torch.device("cpu"))
    counts = from_config(TINY_QWEN3_CONFIG).counts()
    cpu_profile = SimpleNamespace(hardware={"device_type": "cpu"})
    from qtsim.model.workload import Workload

    for prec in ("fp16", "nf4", "int8"):
        built = build_model(TINY_QWEN3_CONFIG, prec, dev)
        held = held_tensor_bytes(built.model)
        assert held == built.attrs["held_tensor_bytes"]
        pred = steady_bytes(cpu_profile, counts, Workload(prec))
        assert abs(held / pred - 1) < 0.05, (prec, held, pred)


def test_reproduce_states_every_agreements_tolerance():
    from qtsim.report.reproduce import TOLERANCE_NOTE, Check, format_text, reproduce

    rep = reproduce(n_draws=40)
    checks = {c["id"]: c for c in rep["checks"]}
    assert checks["S16b"]["status"] == "disagrees" and checks["S16b"]["tolerance"] == "> 128"
    assert checks["S16b"]["ours"] < 1
    assert checks["W1"]["tolerance"] == "±0.0005"
    assert all(c["tolerance"] for c in rep["checks"] if c["status"] in ("agrees", "disagrees"))
    assert TOLERANCE_NOTE in format_text(rep)
    with pytest.raises(ValueError, match="needs a stated tolerance"):
        Check("X1", "simulator", "claim", 1.0, 1.0, "agrees")


# ---- 10. the stack a user installs today ---------------------------------------------------------------
def test_the_bitsandbytes_release_decides_batch_8_and_is_printed():
    args = ["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--batch", "8",
            "--draws", "50"]
    now = qtsim(*args)[1].splitlines()[0]
    old = qtsim(*args, "--bnb-version", "0.45.0")[1].splitlines()[0]
    assert now.startswith("NOT TRAPPED") and now.endswith("; bitsandbytes 0.50.2 (assumed)")
    assert old.startswith("TRAPPED") and old.endswith("; bitsandbytes 0.45.0 (given with --bnb-version)")
    rep = json.loads(qtsim(*args, "--format", "json")[1])
    assert rep["verdict"]["bitsandbytes_version"] == rep["serving"]["bitsandbytes_version"] == "0.50.2"
    assert rep["b_star"]["value"] == 65 and "fused 4-bit GEMM ends" in rep["b_star"]["reason"]
    row = next(csv.DictReader(io.StringIO(qtsim(*args, "--bnb-version", "0.45", "--format",
                                                 "csv")[1])))
    assert row["bitsandbytes_version"] == "0.45"


def test_compare_and_simulate_carry_the_release(tmp_path):
    out = qtsim("compare", "--gpu", "l4", "--model", "mistral-7b", "--batch", "8", "--draws",
                "10", "--format", "csv", "--bnb-version", "0.45.0")[1]
    assert {r["bitsandbytes_version"] for r in csv.DictReader(io.StringIO(out))} == {"0.45.0"}
    h5, c = tmp_path / "s.h5", tmp_path / "s.csv"
    code, text, err = qtsim("simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--batch", "1,8",
                            "--out", str(h5), "--csv", str(c))
    assert code == 0, err
    assert "bitsandbytes 0.50.2 (assumed: the current release" in text
    rows = list(csv.DictReader(c.open()))
    assert {r["bitsandbytes_version"] for r in rows} == {"0.50.2"}


def test_a_calibrated_profile_is_the_stack_it_measured():
    prof = str(ROOT / "data" / "profiles" / "cpu-epyc-2c.toml")
    refused(["trap", "--profile", prof, "--model", "qwen3-0.6b", "--precision", "nf4",
             "--bnb-version", "0.45.0"],
            "--bnb-version 0.45.0: profile cpu-epyc-2c was calibrated with bitsandbytes 0.50.2")
    refused([*TRAP, "--gpu", "l4", "--bnb-version", "latest"],
            "--bnb-version 'latest': give a bitsandbytes version such as 0.50.2")


def test_the_version_rule_lives_in_one_place():
    from qtsim.model import stack
    from qtsim.model.physical import FUSED_4BIT_MAX_BATCH

    assert stack.fused4bit_max_batch("0.45.0.dev") == 0.0
    assert stack.fused4bit_max_batch("0.49.9") == 0.0
    assert stack.fused4bit_max_batch("0.50.0") == stack.fused4bit_max_batch("0.50.2") \
        == FUSED_4BIT_MAX_BATCH == 64
    text = (ROOT / "hardware_profiles" / "hosts" / "hf-eager-server.toml").read_text()
    stated = tomllib.loads(text)["host"]["stack"]["bitsandbytes"]
    assert stack.fused4bit_max_batch(stated) == \
        tomllib.loads(text)["physical"]["h_fused4bit_max_batch"]["value"]
