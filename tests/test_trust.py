import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qtsim.errors import QtsimError
from qtsim.model.trust import (
    TASK_DEPTH,
    fit_eps,
    lookup_trust,
    read_trust_table,
    t_si_at_depth,
    t_si_compound,
)
from qtsim.profiles.hardware import load_profile

from .conftest import TRAP, qtsim_cli, write_config


def test_shipped_table_holds_the_papers_accuracies():
    rows = read_trust_table()
    acc = {(r["model"], r["task"], r["precision"]): r["accuracy"] for r in rows}
    assert acc[("mistral-7b-v0.3", "gsm8k", "fp16")] == 0.4314
    assert acc[("mistral-7b-v0.3", "gsm8k", "int8")] == 0.4086
    assert acc[("mistral-7b-v0.3", "gsm8k", "nf4")] == 0.3942
    assert acc[("qwen3-0.6b", "mathqa", "fp16")] == 0.38
    assert acc[("qwen3-0.6b", "mathqa", "nf4")] == 0.33
    assert all(r["status"] == "published" and r["source"].startswith("published: ") for r in rows)


def test_lookup_keeps_its_positional_signature_and_fields():
    t = lookup_trust("mistral-7b", "nf4", "fp16", None)
    assert t.t_si == pytest.approx(0.3942 / 0.4314)
    assert round(t.t_si, 3) == 0.914
    assert t.status == "published" and t.task == "gsm8k"
    assert (t.accuracy, t.accuracy_ref) == (0.3942, 0.4314)
    d = t.to_dict()
    assert {"t_si", "status", "source", "accuracy", "accuracy_ref", "task"} <= set(d)
    assert d["depth"] == TASK_DEPTH["gsm8k"] == 5.0


def test_reference_and_assumed_are_explicit():
    assert lookup_trust("mistral-7b", "fp16").status == "reference"
    a = lookup_trust("llama-3.1-8b", "nf4")
    assert a.status == "assumed" and a.t_si == 1.0 and "assumed" in a.source
    b = lookup_trust("llama-3.1-8b", "nf4", assume=0.9)
    assert b.t_si == 0.9 and "0.9" in b.source


def test_depth_extrapolation_by_the_compounding_model():
    t0 = 0.3942 / 0.4314
    same = lookup_trust("mistral-7b", "nf4", depth=5)
    assert same.status == "published" and same.t_si == pytest.approx(t0)
    deep = lookup_trust("mistral-7b", "nf4", depth=10)
    assert deep.status == "extrapolated"
    assert deep.t_si == pytest.approx(t0 ** 2)
    assert deep.eps_per_step == pytest.approx(1 - t0 ** (1 / 5))
    assert deep.depth == 10 and deep.depth_ref == 5
    assert "extrapolated from published" in deep.source


def test_mathqa_default_depth_is_documented():
    t = lookup_trust("qwen3-0.6b", "nf4")
    assert t.task == "mathqa" and t.depth_ref == TASK_DEPTH["mathqa"] == 8.0
    assert t.t_si == pytest.approx(0.33 / 0.38)


def test_falcon_relative_loss_is_a_ratio_row_with_its_caveat():
    t = lookup_trust("falcon3-3b", "nf4")
    assert t.t_si == pytest.approx(0.70) and t.accuracy is None
    assert "approximate" in t.source and "relative" in t.note


@given(st.floats(0.05, 1.0), st.floats(0.5, 20), st.floats(0.5, 40))
def test_compounding_round_trip_and_monotone(t0, m0, m):
    assert t_si_at_depth(t0, m0, m0) == pytest.approx(t0)
    eps = fit_eps(t0, m0)
    assert 0 <= eps < 1
    assert t_si_compound(eps, m) == pytest.approx(t0 ** (m / m0), rel=1e-9)
    assert t_si_at_depth(t0, m0, m + 1) <= t_si_at_depth(t0, m0, m)
    if t0 < 0.999:
        assert t_si_at_depth(t0, m0, m + 1) < t_si_at_depth(t0, m0, m)


def test_user_table_is_measured(tmp_path):
    f = tmp_path / "acc.csv"
    f.write_text("model,task,precision,accuracy,source,depth\n"
                 "llama-3.1-8b,gsm8k,fp16,0.80,my run,6\n"
                 "llama-3.1-8b,gsm8k,nf4,0.72,my run,6\n")
    t = lookup_trust("llama-3.1-8b", "nf4", "fp16", str(f))
    assert t.status == "measured" and t.t_si == pytest.approx(0.9) and t.depth_ref == 6
    assert t.source == "user: my run"
    e = lookup_trust("llama-3.1-8b", "nf4", "fp16", str(f), depth=12)
    assert e.status == "extrapolated" and e.t_si == pytest.approx(0.81)


@pytest.mark.parametrize("body,needle", [
    ("model,task,precision\nx,y,nf4\n", "needs columns"),
    ("model,task,precision,accuracy\nx,gsm8k,nf4,1.7\n", "fraction"),
    ("model,task,precision,accuracy\nx,gsm8k,nf4,abc\n", "not a number"),
    ("model,task,precision,accuracy,kind\nx,gsm8k,nf4,0.5,weird\n", "kind"),
    ("model,task,precision,accuracy,depth\nx,gsm8k,nf4,0.5,-1\n", "depth"),
])
def test_bad_user_tables(tmp_path, body, needle):
    f = tmp_path / "t.csv"
    f.write_text(body)
    with pytest.raises(QtsimError, match=needle):
        read_trust_table(str(f))


def test_missing_table():
    with pytest.raises(QtsimError, match="no such trust table"):
        lookup_trust("mistral-7b", "nf4", "fp16", "/nonexistent/acc.csv")


def test_trap_report_states_trust_status():
    from qtsim.model.architecture import load_architecture
    from qtsim.model.workload import Workload
    from qtsim.report.trap import assess_trap

    r = assess_trap(load_profile("l4"), load_architecture("mistral-7b"), Workload("nf4"), n_draws=20)
    assert r.si.trust["status"] == "published"
    assert math.isclose(r.si.t_si, 0.3942 / 0.4314)


def test_a_user_table_without_the_model_keeps_the_published_figure(tmp_path):
    f = tmp_path / "acc.csv"
    f.write_text("model,task,precision,accuracy\nllama-3.1-8b,gsm8k,fp16,0.8\n"
                 "llama-3.1-8b,gsm8k,nf4,0.72\n")
    rep = json.loads(qtsim_cli(*TRAP, "--gpu", "l4", "--trust", str(f), "--format", "json")[1])
    assert round(rep["si"]["t_si"], 3) == 0.914
    assert rep["si"]["trust"]["status"] == "published"
    mine = json.loads(qtsim_cli("trap", "--gpu", "l4", "--model", "llama-3.1-8b", "--precision",
                                "nf4", "--draws", "20", "--trust", str(f), "--format", "json")[1])
    assert mine["si"]["t_si"] == pytest.approx(0.9) and mine["si"]["trust"]["status"] == "measured"


def test_published_trust_follows_the_architecture_not_the_name(tmp_path):
    # a network the paper did not evaluate
    qwen = write_config(tmp_path / "q" / "config.json", "qwen2.5-0.5b")
    rep = json.loads(qtsim_cli("trap", "--gpu", "l4", "--model", f"mistral-7b={qwen}",
                               "--precision", "nf4", "--draws", "20", "--format", "json")[1])
    t = rep["si"]["trust"]
    assert rep["si"]["t_si"] == 1.0 and t["status"] == "assumed"
    assert "a published figure exists for mistral-7b-v0.3, but this 'mistral-7b' config is " \
           "another network (qwen2, 24 layers, hidden 896 vs mistral, 32 layers, hidden 4096)" \
           in t["source"]
    # the paper's Qwen3-0.6B under another name
    qwen3 = write_config(tmp_path / "q3" / "config.json", "qwen3-0.6b")
    rep = json.loads(qtsim_cli("trap", "--gpu", "l4", "--model", f"mistral-7b={qwen3}",
                               "--precision", "nf4", "--draws", "20", "--format", "json")[1])
    assert rep["si"]["t_si"] == pytest.approx(0.33 / 0.38)  # Qwen3's, not Mistral's
    mistral = write_config(tmp_path / "m" / "config.json", "mistral-7b")
    rep = json.loads(qtsim_cli("trap", "--gpu", "l4", "--model", f"my-mistral={mistral}",
                               "--precision", "nf4", "--draws", "20", "--format", "json")[1])
    assert round(rep["si"]["t_si"], 3) == 0.914
    assert "matched by architecture: my-mistral has the same shapes" in rep["si"]["trust"]["source"]
