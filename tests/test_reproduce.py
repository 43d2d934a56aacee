import json

import pytest

from qtsim.report.reproduce import (
    consistency_checks,
    figure,
    format_text,
    paper_figures,
    reproduce,
    worked_examples,
)

from .conftest import invoke_qtsim


@pytest.fixture(scope="module")
def report():
    return reproduce(n_draws=60)


@pytest.fixture(scope="module")
def checks(report):
    return {c["id"]: c for c in report["checks"]}


def test_worked_examples_to_three_decimals(checks):
    assert round(checks["W1"]["ours"], 3) == 0.914 and checks["W1"]["status"] == "agrees"
    assert round(checks["W2"]["ours"], 3) == 0.086
    assert round(checks["W4"]["ours"], 3) == 0.468 and checks["W4"]["status"] == "agrees"
    assert checks["W4"]["formula"] == "519.79 / 1110.56"


def test_cor_arithmetic_from_mathqa_tps(checks):
    assert checks["W5"]["ours"] == pytest.approx(611 / 145 - 1)
    assert round(checks["W5"]["ours"], 2) == 3.21
    assert round(checks["W6"]["ours"], 2) == 1.01
    assert checks["W5"]["status"] == checks["W6"]["status"] == "agrees"  # COR > 1 as claimed
    assert round(checks["W7"]["ours"], 2) == 0.13


def test_flagged_inconsistencies(checks):
    c1 = checks["C1"]
    assert (c1["paper"], round(c1["ours"], 2), c1["status"]) == (2.74, 3.21, "flag")
    c2 = checks["C2"]
    assert c2["status"] == "flag" and round(c2["ours"], 2) == 3.01 and "301%" in c2["note"]
    assert checks["C3"]["status"] == "flag" and round(checks["C3"]["ours"], 2) == 4.01
    for cid, implied in (("C4", 693.35 / 235.47 - 1), ("C5", 503.06 / 235.47 - 1)):
        assert checks[cid]["status"] == "flag"
        assert checks[cid]["ours"] == pytest.approx(implied)
        assert "latency" in checks[cid]["note"]
    c6 = checks["C6"]
    assert c6["status"] == "flag" and (c6["paper"], c6["ours"]) == (519.79, 235.47)
    assert "no GPU is named" in c6["note"]
    assert checks["C7"]["status"] == "flag"
    assert checks["C7"]["ours"] == pytest.approx(1 / 3.45)
    assert checks["C15"]["status"] == "flag"


def test_hli_ratios_are_latency_ratios(checks):
    assert round(checks["W9"]["ours"], 2) == 2.94
    assert round(checks["W10"]["ours"], 2) == 2.14
    assert round(checks["W8"]["ours"], 2) == 4.01


def test_si_claims_rebuilt(checks):
    assert checks["C10"]["status"] == "agrees"  # SI ~0.55 for Qwen3 INT8
    assert checks["C11"]["status"] == "agrees" and checks["C11"]["ours"] < 0.80
    assert checks["C12"]["status"] == "agrees"


def test_simulator_rows_are_honest_about_priors(report, checks):
    sim = [c for c in report["checks"] if c["section"] == "simulator"]
    assert len(sim) > 20
    assert {c["status"] for c in sim} <= {"agrees", "disagrees", "info"}
    for c in sim:
        if c["band"][0] is not None:  # "inf": a band end beyond the search range (censored draws)
            lo, hi = float(c["band"][0]), float(c["band"][1])
            assert lo <= hi
            assert (c["status"] == "agrees") == (lo <= c["paper"] <= hi) or \
                c["id"].startswith(("S15", "S16"))
    assert "spec-derived" in report["caveat"] and "prior" in report["caveat"]
    assert all(p["source"] == "spec" for p in report["profiles"])
    assert checks["S16a"]["paper"] == 128


def test_figure_lookup_names_what_is_missing():
    rows = paper_figures()
    assert figure(rows, "qwen3-0.6b", "mathqa", "a100", "fp16", "tokens_per_second") == 611
    with pytest.raises(KeyError, match="nope"):
        figure(rows, "nope", "gsm8k", "a100", "fp16", "accuracy")


def test_sections_without_the_simulator():
    rows = paper_figures()
    w = worked_examples(rows)
    rho = {(m, p, g): 2.0 for m in ("mistral-7b", "qwen3-0.6b") for p in ("int8", "nf4")
           for g in ("a100-80gb", "h100-sxm")}
    c = consistency_checks(rows, rho)
    assert all(x.section == "worked example" for x in w)
    assert all(x.section == "consistency" for x in c)


def test_text_format(report):
    text = format_text(report)
    for needle in ("== worked example", "== consistency", "== simulator", "0.914", "flag",
                   "Predictions, not measurements"):
        assert needle in text


def test_reproduce_command_json_and_text():
    r = invoke_qtsim("reproduce", "--format", "json", "--draws", "30")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert {"checks", "summary", "profiles", "caveat"} <= set(rep)
    r = invoke_qtsim("reproduce", "--draws", "30")
    assert r.returncode == 0 and "S_SI worked example" in r.stdout


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
