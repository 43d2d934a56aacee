"""The bitsandbytes release a prediction assumes (qtsim/model/stack.py): what it decides, where it
is printed, and that the rule lives in one place."""

import csv
import io
import json
import tomllib

from .conftest import ROOT, TRAP, qtsim_cli, refused


def test_the_bitsandbytes_release_decides_batch_8_and_is_printed():
    args = ["trap", "--gpu", "l4", "--model", "mistral-7b", "--precision", "nf4", "--batch", "8",
            "--draws", "50"]
    now = qtsim_cli(*args)[1].splitlines()[0]
    old = qtsim_cli(*args, "--bnb-version", "0.45.0")[1].splitlines()[0]
    assert now.startswith("NOT TRAPPED") and now.endswith("; bitsandbytes 0.50.2 (assumed)")
    assert old.startswith("TRAPPED") and old.endswith("; bitsandbytes 0.45.0 (given with --bnb-version)")
    rep = json.loads(qtsim_cli(*args, "--format", "json")[1])
    assert rep["verdict"]["bitsandbytes_version"] == rep["serving"]["bitsandbytes_version"] == "0.50.2"
    assert rep["b_star"]["value"] == 65 and "fused 4-bit GEMM ends" in rep["b_star"]["reason"]
    row = next(csv.DictReader(io.StringIO(qtsim_cli(*args, "--bnb-version", "0.45", "--format",
                                                 "csv")[1])))
    assert row["bitsandbytes_version"] == "0.45"


def test_compare_and_simulate_carry_the_release(tmp_path):
    out = qtsim_cli("compare", "--gpu", "l4", "--model", "mistral-7b", "--batch", "8", "--draws",
                    "10", "--format", "csv", "--bnb-version", "0.45.0")[1]
    assert {r["bitsandbytes_version"] for r in csv.DictReader(io.StringIO(out))} == {"0.45.0"}
    h5, c = tmp_path / "s.h5", tmp_path / "s.csv"
    code, text, err = qtsim_cli("simulate", "--gpu", "l4", "--model", "qwen3-0.6b", "--batch",
                                "1,8", "--out", str(h5), "--csv", str(c))
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
