"""`qtsim compare` (qtsim/report/compare.py): one model at one batch across GPUs x precisions, its
formats, figure and refusals."""

import csv
import io
import json

import pytest

from qtsim.profiles.hardware import shipped_names

from .conftest import assert_refused, invoke_qtsim, qtsim_cli


def test_compare_and_trap_csv_carry_no_hypothetical_figures():
    code, out, _ = qtsim_cli("compare", "--gpu", "t4", "--model", "llama-3.1-8b", "--batch", "8",
                             "--draws", "10", "--format", "json")
    rows = {r["precision"]: r for r in json.loads(out)["rows"]}
    assert rows["fp16"]["tok_per_s"] is None and rows["fp16"]["j_per_query"] is None
    assert rows["int8"]["energy_ratio"] is None and rows["int8"]["tok_per_s"] > 0
    code, out, _ = qtsim_cli("trap", "--gpu", "l4", "--model", "qwen2.5-72b", "--precision", "nf4",
                             "--draws", "20", "--format", "csv")
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["verdict_energy"] == "does not fit"
    assert row["p_trapped_energy"] == row["si"] == row["energy_ratio"] == row["j_per_query"] == ""


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
    r = invoke_qtsim("compare", "--model", "qwen3-0.6b", "--precision", "fp16,int8", "--draws",
                     "10", "--format", "json", "--plot", png)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert shipped_names() <= set(rep["query"]["gpus"])  # every visible profile
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
