"""The trust probe for real on this CPU: a seconds-long training run through the whole pipeline
(train -> probe with bitsandbytes -> report -> --trust table -> trap), and, under ``slow``, the
shipped checkpoint's probe figures reproduced."""

import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("bitsandbytes")

from qtsim.calibration.trust.hops_probe import probe  # noqa: E402
from qtsim.calibration.trust.hops_train import Recipe, read_recipe, train  # noqa: E402
from qtsim.model.trust import lookup_trust  # noqa: E402
from qtsim.trust import report, tasks  # noqa: E402
from qtsim.trust.shipped import MODEL_NAME, shipped_checkpoint, shipped_record  # noqa: E402

from .conftest import invoke_qtsim  # noqa: E402

pytestmark = pytest.mark.measure

TINY = Recipe(n_nodes=6, train_hops=3, hidden_size=64, intermediate_size=128,
              num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16, steps=15,
              batch=32, warmup_steps=5, eval_problems=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny-hops"
    rec = train(TINY, out)
    return out, rec


def test_training_writes_a_reproducible_checkpoint(tiny):
    out, rec = tiny
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert read_recipe(out)["weights_sha256"] == rec["weights_sha256"]
    assert rec["model"] == "tiny-hops" and rec["n_params"] > 0
    curve = rec["loss_curve"]["rows"]
    assert curve[-1][1] < curve[0][1]  # it learns something in 15 steps
    assert len(rec["teacher_forced_accuracy_per_hop"]) == TINY.train_hops
    again = train(TINY, out.parent / "again")
    assert again["weights_sha256"] == rec["weights_sha256"]  # same recipe, same weights


def test_probe_scores_chains_exactly_and_feeds_trap(tiny, tmp_path):
    out, _ = tiny
    rec = probe(out, ("fp32", "int8", "nf4"), max_hops=3, n_per_hop=24, batch=12,
                check_problems=8)
    assert list(rec["settings"]) == ["fp32", "int8", "nf4"]
    for s in rec["settings"].values():
        assert s["n"] == [24, 24, 24] and s["hops"] == [1, 2, 3]
        for k, chains, correct in zip(s["hops"], s["chains"], s["answer_correct"], strict=True):
            p = tasks.problems(24, k, TINY.n_nodes, seed=0, split="test")
            pred = tasks.decode_chains(chains)
            # the recorded score is the exact one, recomputed from the task's own answers
            assert correct == int((pred[:, -1] == p.answers).sum())
            assert pred.shape == (24, k)
        b = s["batch_check"]
        assert set(b) == {"1", "8"} and b["1"]["identical_chains"] == 8
    assert rec["settings"]["int8"]["n_quantised_linears"] == 7
    assert rec["settings"]["int8"]["outlier_column_share"] is not None
    an = report.analyse(rec, reference="fp32")
    paths = report.write_outputs(rec, an, tmp_path / "probe")
    t = lookup_trust("tiny-hops", "nf4", "fp32", paths["trust_csv"])
    assert t.status in ("measured", "assumed")  # assumed only if fp32 never answered right
    r = invoke_qtsim("trap", "--gpu", "l4", "--model", out / "config.json", "--precision",
                     "int8", "--prompt-tokens", tasks.prompt_length(TINY.n_nodes), "--tokens", 3,
                     "--trust", paths["trust_csv"], "--draws", 20)
    assert r.returncode == 0, r.stderr
    assert "trust: T_SI" in r.stdout


def test_cli_train_and_probe_one_line_errors(tmp_path):
    r = invoke_qtsim("trust", "train", "--out", tmp_path / "x", "--set", "bogus=1")
    assert r.returncode == 2 and "bogus" in r.stderr and r.stderr.count("\n") == 1
    r = invoke_qtsim("trust", "probe", "--checkpoint", tmp_path, "--settings", "fp8")
    assert r.returncode == 2 and "fp8" in r.stderr
    r = invoke_qtsim("trust", "probe", "--checkpoint", tmp_path)
    assert r.returncode == 2 and "recipe.json" in r.stderr


@pytest.mark.slow
def test_shipped_probe_figures_reproduce():
    """Re-measure the shipped checkpoint with the shipped record's parameters: every accuracy
    falls inside the shipped 95% interval (on the CPU and versions that made it, every chain
    is identical)."""
    shipped = report.read_record(shipped_record())
    settings = list(shipped["settings"])
    rec = probe(shipped_checkpoint(), settings, shipped["max_hops"], shipped["n_per_hop"],
                shipped["task"]["seed"], shipped["batch"], tuple(shipped["check"]["batches"]),
                shipped["check"]["problems"], shipped["check"]["hops"],
                shipped["environment"]["threads"])
    assert rec["checkpoint"]["weights_sha256"] == shipped["checkpoint"]["weights_sha256"]
    an0, an1 = report.analyse(shipped), report.analyse(rec)
    same_stack = rec["environment"] == shipped["environment"]
    for name in settings:
        a0, a1 = an0["settings"][name], an1["settings"][name]
        assert (np.array(a1["accuracy"]) >= np.array(a0["ci_low"]) - 1e-12).all(), name
        assert (np.array(a1["accuracy"]) <= np.array(a0["ci_high"]) + 1e-12).all(), name
        if same_stack:
            assert rec["settings"][name]["chains"] == shipped["settings"][name]["chains"], name
            assert a1["finding"] == a0["finding"]


@pytest.mark.slow
def test_shipped_checkpoint_retrains(tmp_path):
    """`qtsim trust train` with the shipped recipe: the same weights on the same CPU, torch and
    thread count; elsewhere a model as good on held-out problems."""
    shipped = read_recipe(shipped_checkpoint())
    out = tmp_path / MODEL_NAME
    rec = train(Recipe.from_dict(shipped["recipe"]), out)
    if rec["versions"] == shipped["versions"] and rec["cpu"] == shipped["cpu"]:
        assert rec["weights_sha256"] == shipped["weights_sha256"]
    assert min(rec["teacher_forced_accuracy_per_hop"]) >= \
        min(shipped["teacher_forced_accuracy_per_hop"]) - 0.01
    shutil.rmtree(out)
