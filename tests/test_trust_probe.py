"""The trust probe's pure parts: the task family's exact answers, the eq. 7 statistics, the
report and its --trust table (no torch)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from qtsim.errors import QtsimError
from qtsim.model.trust import lookup_trust, read_trust_table
from qtsim.trust import compounding as cmp
from qtsim.trust import report, tasks

from .conftest import invoke_qtsim


# ---- the task family ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_nodes,hops", [(3, 1), (3, 2), (8, 5), (16, 1), (16, 8), (16, 15),
                                          (30, 12)])
def test_answers_are_exact(n_nodes, hops):
    """Decode every prompt independently and follow the map: the stored chain is exact."""
    p = tasks.problems(200, hops, n_nodes, seed=7, split="test")
    assert p.prompts.shape == (200, tasks.prompt_length(n_nodes))
    assert p.prompts.max() < tasks.vocab_size(n_nodes)
    for prompt, chain in zip(p.prompts, p.chains, strict=True):
        succ, x = tasks.parse_prompt(prompt, n_nodes)
        assert sorted(succ) == list(range(n_nodes))
        walk = []
        for _ in range(hops):
            x = succ[x]
            walk.append(x)
        assert walk == chain.tolist()
    assert (p.answers == p.chains[:, -1]).all()
    seq = p.sequences()
    assert (tasks.token_node(seq[:, -hops:], n_nodes) == p.chains).all()


def test_maps_are_single_cycles_so_chains_never_revisit():
    n = 12
    p = tasks.problems(300, n - 1, n, seed=1)
    full = tasks.follow(p.succ, p.start, n)
    assert (full[:, -1] == p.start).all()  # back at the start after n hops, not before
    visited = np.concatenate([p.start[:, None], p.chains], axis=1)
    assert all(len(set(row)) == n for row in visited.tolist())


def test_problems_are_seeded_and_streams_differ():
    a = tasks.problems(50, 4, 16, seed=3, split="test")
    b = tasks.problems(50, 4, 16, seed=3, split="test")
    assert (a.prompts == b.prompts).all() and (a.chains == b.chains).all()
    for other in (tasks.problems(50, 4, 16, seed=4, split="test"),
                  tasks.problems(50, 4, 16, seed=3, split="train"),
                  tasks.problems(50, 5, 16, seed=3, split="test")):
        assert not (other.prompts == a.prompts).all()


@pytest.mark.parametrize("args", [(10, 1, 2), (10, 0, 16), (10, 16, 16), (0, 2, 16)])
def test_impossible_families_are_refused(args):
    n, hops, nodes = args
    with pytest.raises(QtsimError):
        tasks.problems(n, hops, nodes)


def test_render_and_chain_scores():
    p = tasks.problems(1, 3, 4, seed=0)
    text = tasks.render(p.prompts[0], 4, p.chains[0])
    assert text.count(">") == 4 and " | " in text and " : " in text
    chains = np.array([[1, 2, 3], [1, 0, 3], [2, 2, 2]])
    got = tasks.chain_accuracy(chains, np.array([[1, 2, 3]] * 3))
    assert got["answer"].tolist() == [True, True, False]
    assert got["chain"].tolist() == [True, False, False]
    assert got["hops_right"].tolist() == [3, 1, 0]


def test_chain_encoding_round_trips():
    nodes = np.array([[0, 9, 35, -1], [10, 11, 12, 13]])
    enc = tasks.encode_chains(nodes)
    assert enc == "09z? abcd"
    assert (tasks.decode_chains(enc) == nodes).all()
    with pytest.raises(QtsimError):
        tasks.encode_chains(np.array([[36]]))


# ---- statistics ------------------------------------------------------------------------------
def test_clopper_pearson_matches_scipy():
    for s, n in [(0, 50), (1, 50), (37, 50), (50, 50), (480, 500)]:
        lo, hi = cmp.binomial_ci(s, n)
        ci = stats.binomtest(s, n).proportion_ci(0.95, method="exact")
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)


def test_hop_reliability_recovers_a_geometric_decay_and_rejects_a_flat_one():
    rng = np.random.default_rng(0)
    k = np.arange(1, 9)
    n = np.full(8, 2000)
    s = rng.binomial(n, 0.97 ** k)
    fit = cmp.fit_hop_reliability(k, s, n)
    assert fit.low < 0.97 < fit.high and fit.high - fit.low < 0.005
    assert fit.p_value > 0.01 and fit.dof == 7
    flat = cmp.fit_hop_reliability(k, rng.binomial(n, np.full(8, 0.8)), n)
    assert flat.p_value < 1e-6  # accuracy that does not fall with k is not r^k
    perfect = cmp.fit_hop_reliability(k, n, n)
    assert perfect.reliability == 1.0 and perfect.high == 1.0 and perfect.low < 1.0


def test_eps_recovers_the_extra_per_hop_error():
    rng = np.random.default_rng(1)
    k = np.arange(1, 9)
    n = np.full(8, 3000)
    ref = rng.binomial(n, 0.98 ** k)
    quant = rng.binomial(n, (0.98 * 0.99) ** k)
    e = cmp.fit_eps(k, ref, n, quant, n)
    assert e.low < 0.01 < e.high and e.low > 0
    same = cmp.fit_eps(k, ref, n, ref, n)
    assert same.low < 0 < same.high and abs(same.eps) < 1e-3
    curve = cmp.compounding_curve(ref / n, e.eps, k)
    assert curve == pytest.approx((ref / n) * (1 - e.eps) ** k)


def test_hop_position_reliability_pools_depths():
    got = cmp.hop_position_reliability([[1, 9], [1, 2, 7]])
    assert got["survivors"] == [20, 9] and got["successes"] == [18, 7]
    assert got["reliability"] == pytest.approx([0.9, 7 / 9])


# ---- the --trust table -------------------------------------------------------------------------
def _record(model="toy-model", n=400):
    """A synthetic probe record, to test the report's code paths (not a measurement)."""
    rng = np.random.default_rng(5)
    settings = {}
    for name, r in (("fp16", 0.99), ("int8", 0.99), ("nf4", 0.97), ("nf4dq", 0.95)):
        correct, hists, chains = [], [], []
        for k in range(1, 5):
            p = tasks.problems(n, k, 8, seed=0, split="test")
            pred = p.chains.copy()
            flip = rng.random(pred.shape) > r
            pred[flip] = (pred[flip] + 1) % 8
            sc = tasks.chain_accuracy(pred, p.chains)
            correct.append(int(sc["answer"].sum()))
            hists.append(np.bincount(sc["hops_right"], minlength=k + 1).tolist())
            chains.append(tasks.encode_chains(pred))
        settings[name] = {"description": name, "hops": [1, 2, 3, 4], "n": [n] * 4,
                          "answer_correct": correct, "chain_correct": correct,
                          "hops_right_hist": hists, "chains": chains,
                          "batch_check": {"1": {"n": 16, "answer_correct": 15,
                                                "identical_chains": 16},
                                          "8": {"n": 16, "answer_correct": 15,
                                                "identical_chains": 16}}}
    return {"kind": "qtsim trust probe", "model": model, "n_per_hop": n, "batch": 100,
            "task": {"n_nodes": 8}, "max_hops": 4,
            "checkpoint": {"weights_sha256": "0" * 64, "n_params": 1000},
            "check": {"batches": [1, 8], "hops": 4, "problems": 16},
            "environment": {"cpu": "test cpu", "threads": 1,
                            "versions": {"bitsandbytes": "0.50.2"}},
            "settings": settings}


def test_report_and_trust_table_round_trip(tmp_path):
    rec = _record()
    an = report.analyse(rec)
    assert an["reference"] == "fp16"
    nf4 = an["settings"]["nf4"]
    assert nf4["eps"]["eps"] > 0 and "eq7_curve" in nf4 and len(nf4["eq7_curve"]) == 4
    assert nf4["divergence"]["per_hop"]["delta"] > 0
    flips = nf4["divergence"]["flips"]
    assert flips["ref_right"] > flips["pred_right"] and 0 <= flips["mcnemar_p"] <= 1
    assert flips["eps_paired_low"] <= flips["eps_paired"] <= flips["eps_paired_high"]
    assert flips["eps_paired"] > 0 and flips["at_risk"] > 0
    assert an["settings"]["fp16"]["batch_check"]["equal_within_intervals"]
    text = report.render(rec, an)
    assert "Theorem 4.5" in text and "nf4dq" in text and "eps" in text
    assert json.loads(report.render(rec, an, "json"))["analysis"]["reference"] == "fp16"
    assert report.render(rec, an, "csv").splitlines()[0] == ",".join(report.TABLE_COLUMNS)
    written = report.write_outputs(rec, an, tmp_path)
    assert (tmp_path / "accuracy_vs_hops.png").stat().st_size > 10_000
    rows = read_trust_table(written["trust_csv"])
    assert len(rows) == 16 and all(r["status"] == "measured" for r in rows)
    t = lookup_trust("toy-model", "nf4", table=written["trust_csv"])
    acc = dict(zip(an["settings"]["nf4"]["hops"], an["settings"]["nf4"]["accuracy"],
                   strict=True))
    ref = dict(zip(an["settings"]["fp16"]["hops"], an["settings"]["fp16"]["accuracy"],
                   strict=True))
    assert t.status == "measured" and t.depth == 4  # the deepest measured hop count
    assert t.t_si == pytest.approx(acc[4] / ref[4], rel=1e-5)
    at2 = lookup_trust("toy-model", "nf4", table=written["trust_csv"], depth=2)
    assert at2.status == "measured" and at2.t_si == pytest.approx(acc[2] / ref[2], rel=1e-5)
    dq = lookup_trust("toy-model", "nf4", table=written["trust_csv"], family="nf4dq")
    assert dq.accuracy == pytest.approx(an["settings"]["nf4dq"]["accuracy"][-1], rel=1e-5)
    deeper = lookup_trust("toy-model", "nf4", table=written["trust_csv"], depth=8)
    assert deeper.status == "extrapolated" and deeper.depth_ref == 4


def test_trap_reads_a_probe_table_as_measured_trust(tmp_path):
    rec = _record(model="toy-llama")
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
           "vocab_size": 75, "max_position_embeddings": 64, "tie_word_embeddings": False}
    (tmp_path / "toy-llama").mkdir()
    (tmp_path / "toy-llama" / "config.json").write_text(json.dumps(cfg))
    paths = report.write_outputs(rec, report.analyse(rec), tmp_path / "probe", plot=False)
    args = ["trap", "--gpu", "l4", "--model", tmp_path / "toy-llama" / "config.json",
            "--precision", "nf4", "--prompt-tokens", "11", "--tokens", "4",
            "--trust", paths["trust_csv"], "--draws", "20"]
    r = invoke_qtsim(*args)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "trust: T_SI" in x)
    assert "measured: pointer-chase at depth 4" in line and "qtsim trust probe" in line
    r = invoke_qtsim(*args, "--double-quant", "--format", "json")
    t = json.loads(r.stdout)["si"]["trust"]
    assert t["status"] == "measured"
    assert t["accuracy"] == pytest.approx(report.analyse(rec)["settings"]["nf4dq"]["accuracy"][-1],
                                          rel=1e-5)


def test_probe_record_errors_are_one_line(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    for path in (bad, tmp_path / "missing.json"):
        r = invoke_qtsim("trust", "report", path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    rec = _record()
    with pytest.raises(QtsimError):
        report.analyse(rec, reference="fp64")


def test_flip_outcomes_say_who_was_right_where_chains_part():
    p = tasks.problems(4, 3, 6, seed=2)
    truth = p.chains
    ref = truth.copy()
    pred = truth.copy()
    pred[0, 1] = (truth[0, 1] + 1) % 6  # ref right, pred wrong at hop 2
    ref[1, 0] = (truth[1, 0] + 1) % 6  # ref wrong, pred right at hop 1
    ref[2, 2] = (truth[2, 2] + 1) % 6  # both wrong, differently, at hop 3
    pred[2, 2] = (truth[2, 2] + 2) % 6
    got = tasks.flip_outcomes(pred, ref, p)
    assert got == {"ref_right": 1, "pred_right": 1, "both_wrong": 1, "same": 1}


def test_shipped_report_as_csv():
    """`qtsim trust report` reads the shipped record (no torch: see test_cli's import test)."""
    r = invoke_qtsim("trust", "report", "--format", "csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ",".join(report.TABLE_COLUMNS) and len(lines) == 1 + 7 * 8


def test_shipped_trust_table_gives_trap_measured_trust():
    data = Path(__file__).resolve().parents[1] / "data"
    r = invoke_qtsim("trap", "--profile", data / "profiles/cpu-epyc-2c.toml", "--model",
                     data / "trust/hops-llama-3m/config.json", "--precision", "nf4",
                     "--compute-dtype", "fp16", "--prompt-tokens", 19, "--tokens", 8,
                     "--trust", data / "trust/probe-cpu/trust.csv", "--draws", 20)
    assert r.returncode == 0, r.stderr
    assert "trust: T_SI 1.001 (measured: pointer-chase at depth 8, accuracy 0.989 vs 0.988" \
        in r.stdout
