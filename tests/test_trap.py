"""`qtsim trap` (qtsim/report/trap.py): headlines, bands, the text, JSON and CSV answers, the
bitsandbytes settings and refusals."""

import csv
import io
import json
import math
import re
from pathlib import Path

import pytest

from .conftest import CPU_PROFILE, assert_refused, invoke_qtsim, qtsim_cli, refused


def test_no_fit_is_the_headline_in_text_json_and_csv():
    args = ["trap", "--gpu", "l4", "--model", "qwen2.5-72b", "--precision", "nf4", "--draws", "20"]
    code, out, _ = qtsim_cli(*args)
    assert code == 0 and out.startswith("DOES NOT FIT: qwen2.5-72b needs")
    assert "IF IT FIT" in out.splitlines()[1]
    rep = json.loads(qtsim_cli(*args, "--format", "json")[1])
    v = rep["verdict"]
    assert v["energy"] == v["time"] == v["si"] == "does not fit"
    assert v["headline"].startswith("DOES NOT FIT") and v["fits"] is False
    assert v["if_it_fit"]["energy"] == "not trapped"
    row = next(csv.DictReader(io.StringIO(qtsim_cli(*args, "--format", "csv")[1])))
    assert row["verdict_energy"] == "does not fit" and row["fits"] == "0"


def test_only_the_quantized_model_fits_is_the_headline():
    code, out, _ = qtsim_cli("trap", "--gpu", "l4", "--model", "qwen2.5-14b", "--precision", "nf4",
                             "--draws", "20")
    assert code == 0 and out.startswith("ONLY NF4 FITS")
    assert out.splitlines()[1].startswith("NOT TRAPPED")


def test_bands_print_with_a_comma_never_a_dash():
    code, out, _ = qtsim_cli("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4",
                             "--draws", "50")
    assert code == 0
    bands = re.findall(r"\[([^\]]*)\]", out)
    assert len(bands) >= 8
    for b in bands[:-1]:  # the last is the legend "[a, b]"
        lo, hi = b.split(", ")
        for x in (lo, hi):
            assert x in ("below range", "above range") or math.isfinite(float(x.rstrip("B"))), x
    assert not re.search(r"\d--\d", out)  # the old "[-0.466--0.029]"


def test_trap_csv_is_one_row_with_stable_columns():
    from qtsim.report.trap_report import CSV_COLUMNS

    rows = []
    for model, prec in (("mistral-7b", "nf4"), ("qwen3-0.6b", "int8")):
        code, out, _ = qtsim_cli("trap", "--gpu", "h100", "--model", model, "--precision", prec,
                                 "--format", "csv", "--draws", "20")
        assert code == 0
        lines = out.strip().splitlines()
        assert len(lines) == 2 and lines[0] == ",".join(CSV_COLUMNS)
        rows.append(lines[1])
    stacked = list(csv.DictReader(io.StringIO("\n".join([",".join(CSV_COLUMNS), *rows]))))
    assert [r["model"] for r in stacked] == ["mistral-7b", "qwen3-0.6b"]
    assert stacked[1]["b_star"] == "inf" and stacked[1]["b_star_kind"] == "trapped_everywhere"
    page = (Path(__file__).parents[1] / "docs" / "formats-outputs.md").read_text()
    for c in CSV_COLUMNS:  # each column, or its base with the documented _low/_high suffixes
        base = c.removesuffix("_low").removesuffix("_high")
        assert f"`{c}`" in page or (base != c and f"`{base}`" in page), c


@pytest.mark.parametrize("extra,needle", [
    (["--precision", "bf16"], "--precision bf16: t4 (turing) has no BF16 arithmetic"),
    (["--precision", "nf4", "--compute-dtype", "bf16"],
     "--compute-dtype bf16: t4 (turing) has no BF16 arithmetic"),
])
def test_bf16_on_turing_is_refused(extra, needle):
    refused(["trap", "--gpu", "t4", "--model", "mistral-7b", "--draws", "20", *extra], needle)


def test_bf16_where_it_exists_is_answered():
    code, out, _ = qtsim_cli("trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "bf16",
                             "--draws", "20")
    assert code == 0 and "BF16 vs FP16" in out
    refused(["compare", "--gpu", "l4,t4", "--model", "mistral-7b", "--precision", "bf16",
             "--draws", "10"], "t4 (turing) has no BF16")


def test_trap_json_carries_bitsandbytes_budget_and_serving():
    r = invoke_qtsim("trap", "--gpu", "t4", "--model", "llama-3.1-8b", "--precision", "nf4",
                     "--double-quant", "--batch", "8", "--draws", "20", "--grid-gco2-per-kwh", "400", "--pue", "1.2",
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
    r = invoke_qtsim("trap", "--profile", CPU_PROFILE, "--model", "qwen3-0.6b", "--precision",
                     "nf4", "--draws", "10", "--usd-per-hour", "1.5")
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
