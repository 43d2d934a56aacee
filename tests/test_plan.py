"""`qtsim plan`: the serving arithmetic by hand on a small case, refusals with their reasons,
bad input, and the answer's formats and figure."""

import csv
import io
import json
import math

import pytest

from qtsim.errors import QtsimError
from qtsim.model.architecture import load_architecture
from qtsim.model.stats import nan_percentiles
from qtsim.model.workload import Workload, parse_setting
from qtsim.profiles.hardware import load_profile
from qtsim.report.budget import BudgetAssumptions
from qtsim.report.plan import PlanRequest, Targets, parse_demand, parse_settings, plan
from qtsim.simulate.simulator import Simulator

from .conftest import invoke_qtsim

HOURS = 730.5  # an average month
PRICE, GRID, PUE = 0.8, 400.0, 1.2
B, K, PROMPT, DRAWS = 8, 64, 32, 60


def _request(arch, qps, targets=Targets(), settings="fp16,nf4", batches=(B,), **kw):
    return PlanRequest(arch, parse_demand(f"{qps!r}/s"), targets, tuple(parse_settings(settings)),
                       tuple(batches), K, PROMPT, BudgetAssumptions(PUE, GRID), n_draws=DRAWS, **kw)


@pytest.fixture(scope="module")
def small_case():
    """One GPU (L4), two precisions (fp16, nf4), one batch, and a demand 1.5x what one fp16
    replica serves: fp16 needs exactly two replicas."""
    prof, arch = load_profile("l4"), load_architecture("qwen3-0.6b")
    sim = Simulator(prof, n_draws=DRAWS)
    ev = {p: sim.evaluate(arch.counts(), Workload(p, B, K, PROMPT)) for p in ("fp16", "nf4")}
    lam = 1.5 * B / float(ev["fp16"]["latency_s"])
    p = plan([prof], _request(arch, lam), {"l4": PRICE})
    return p, ev, lam, float(sim.idle_power_w())


def _by_hand(e: dict, lam: float, idle_w: float) -> dict:
    """The plan of one configuration with pencil and paper (the statement's arithmetic)."""
    lat, j = float(e["latency_s"]), float(e["j_per_query"])
    per_replica = B / lat                               # queries/s one replica serves
    replicas = math.ceil(lam / per_replica)             # peak factor 1
    month_s = HOURS * 3600
    queries = lam * month_s
    idle_s = replicas * month_s - queries / per_replica  # replica-seconds with no batch running
    kwh = (queries * j + idle_s * idle_w) * PUE / 3.6e6
    return {"replicas": replicas, "usd_per_month": replicas * PRICE * HOURS,
            "kwh_per_month": kwh, "tco2e_per_month": kwh * GRID / 1e6,
            "time_per_query_s": (B - 1) / (lam / replicas) + lat}


def test_small_case_by_hand(small_case):
    p, ev, lam, idle_w = small_case
    rows = {r["setting"]: r for r in p.rows}
    fp16 = _by_hand(ev["fp16"], lam, idle_w)
    assert fp16["replicas"] == 2 and rows["fp16"]["replicas"] == 2
    for setting in ("fp16", "nf4"):
        hand, got = _by_hand(ev[setting], lam, idle_w), rows[setting]
        assert got["batch"] == B and got["feasible"]
        for k, v in hand.items():
            assert got[k] == pytest.approx(v, rel=1e-9), (setting, k)
    # ranked by $ (priced), ties by kWh: the order the hand figures give
    order = sorted(("fp16", "nf4"), key=lambda s: (_by_hand(ev[s], lam, idle_w)["usd_per_month"],
                                                   _by_hand(ev[s], lam, idle_w)["kwh_per_month"]))
    assert [r["setting"] for r in p.rows] == order
    assert p.objective == "usd" and p.best["usd"]["setting"] == order[0]


def test_small_case_trap_answer_by_hand(small_case):
    p, ev, lam, idle_w = small_case
    t = p.trap
    q, n = _by_hand(ev["nf4"], lam, idle_w), _by_hand(ev["fp16"], lam, idle_w)
    assert t["quantized"]["setting"] == "nf4" and t["native"]["setting"] == "fp16"
    assert t["kwh_per_month"]["ratio"] == pytest.approx(q["kwh_per_month"] / n["kwh_per_month"])
    assert t["usd_per_month"]["ratio"] == pytest.approx(q["usd_per_month"] / n["usd_per_month"])
    trapped = q["kwh_per_month"] > n["kwh_per_month"]
    assert t["kwh_per_month"]["verdict"].replace("likely ", "").startswith(
        "trapped" if trapped else "not trapped")
    lo, hi = t["kwh_per_month"]["low"], t["kwh_per_month"]["high"]
    assert lo <= hi and 0 <= t["kwh_per_month"]["p_trapped"] <= 1


def test_bands_bracket_replicas_and_cost(small_case):
    p, *_ = small_case
    for r in p.rows:
        assert 1 <= r["replicas_low"] <= r["replicas_high"]  # the central plan may lie outside
        assert r["usd_per_month_low"] == pytest.approx(r["replicas_low"] * PRICE * HOURS)
        assert r["usd_per_month_high"] == pytest.approx(r["replicas_high"] * PRICE * HOURS)
        assert r["kwh_per_month_low"] <= r["kwh_per_month_high"]


def test_target_holds_at_the_stated_percentile():
    """A step target just above the p84 step of the draws is met, just below it is not."""
    prof, arch = load_profile("l4"), load_architecture("qwen3-0.6b")
    sim = Simulator(prof, n_draws=DRAWS)
    d = sim.evaluate(arch.counts(), Workload("fp16", B, K, PROMPT), draws=True)
    p84 = float(nan_percentiles(d["step_s"], (84.0,))[0][0])
    ok = plan([prof], _request(arch, 1.0, Targets(step_s=p84 * 1.001), settings="fp16"))
    assert ok.rows[0]["feasible"] and ok.rows[0]["step_p_s"] == pytest.approx(p84)
    assert ok.rows[0]["headroom"] == pytest.approx(1 - 1 / 1.001)
    with pytest.raises(QtsimError, match="--max-step-ms .* below every configuration"):
        plan([prof], _request(arch, 1.0, Targets(step_s=p84 * 0.999), settings="fp16"))


def test_refused_below_the_host_floor():
    r = invoke_qtsim("plan", "--model", "llama-3.1-8b", "--demand", "10/s", "--max-step-ms", "5",
                     "--gpu", "h100,l4", "--draws", "20")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "below the host floor" in r.stderr and "host-bound" in r.stderr


def test_refused_model_larger_than_any_gpu():
    r = invoke_qtsim("plan", "--model", "llama-3.1-70b", "--demand", "1/s", "--gpu", "t4,l4",
                     "--draws", "20")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "fits on none of the 2 GPUs" in r.stderr and "l4, has 22.4 GiB" in r.stderr


def test_refused_when_no_setting_is_modelled():
    r = invoke_qtsim("plan", "--model", "qwen3-0.6b", "--demand", "1/s", "--gpu", "l4",
                     "--precision", "nf4+fp32", "--batch", "1:4", "--draws", "20")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "no setting asked for is modelled" in r.stderr and "fp32" in r.stderr


def test_infeasible_settings_say_why():
    arch = load_architecture("llama-3.1-8b")
    p = plan([load_profile("t4")], _request(arch, 1.0, settings="fp16,nf4", batches=(1, 2)))
    bad = [r for r in p.rows if not r["feasible"]]
    assert [r["setting"] for r in bad] == ["fp16"] and "does not fit" in bad[0]["reason"]
    assert p.trap["verdict"].startswith("only option: no feasible 16-bit plan")


@pytest.mark.parametrize("args, message", [
    (["--demand", "10"], "give a positive rate with its unit"),
    (["--demand", "0/s"], "give a positive rate"),
    (["--demand", "5/s", "--peak-factor", "0.5"], "--peak-factor"),
    (["--demand", "5/s", "--precision", "nf4+xx"], "unknown modifier"),
    (["--demand", "5/s", "--precision", "int8+dq"], "4-bit precisions"),
    (["--demand", "5/s", "--precision", "fp16,fp16"], "each setting once"),
    (["--demand", "5/s", "--minimize", "usd"], "needs --usd-per-hour"),
    (["--demand", "5/s", "--minimize", "co2"], "needs --grid-gco2-per-kwh"),
    (["--demand", "5/s", "--percentile", "100"], "--percentile"),
    (["--demand", "5/s", "--max-step-ms", "-1"], "--max-step-ms"),
    (["--demand", "5/s", "--batch", "0:4"], "--batch"),
    (["--demand", "5/s", "--batch", "1:5000"], "at most 4096"),
    (["--demand", "5/s", "--usd-per-hour", "1,2"], "one per GPU"),
    (["--demand", "5/s", "--gpu", "nope"], "unknown GPU"),
    (["--demand", "5/s", "--prompt-tokens", "200000"], "max_position_embeddings"),
])
def test_bad_input_one_line_exit_2(args, message):
    gpu = [] if "--gpu" in args else ["--gpu", "l4"]
    r = invoke_qtsim("plan", "--model", "llama-3.1-8b", *gpu, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert "Traceback" not in r.stderr


def test_parsers():
    assert parse_demand("8.64e4/day").queries_per_s == pytest.approx(1.0)
    assert parse_demand("60 /min").queries_per_s == pytest.approx(1.0)
    assert parse_demand("3600/h", 2).peak_queries_per_s == pytest.approx(2.0)
    for text in ("fp16", "int8+t0", "nf4+dq", "nf4+dq+bf16", "fp4"):
        prec, bnb = parse_setting(text)
        assert parse_setting(bnb.label(prec)) == (prec, bnb)  # the printed label reads back


def test_formats_and_plot(tmp_path):
    base = ["plan", "--model", "qwen3-0.6b", "--demand", "2e5/day", "--gpu", "l4,t4",
            "--usd-per-hour", "0.8,0.53", "--grid-gco2-per-kwh", "400", "--max-step-ms", "120",
            "--max-query-s", "40", "--draws", "30", "--batch", "1:64"]
    text = invoke_qtsim(*base, "--plot", str(tmp_path / "p.png"))
    assert text.returncode == 0, text.stderr
    for needle in ("best for $/month", "trap for the plan", "serving arithmetic: HF transformers "
                   "generate serves static batches", "Continuous batching (vLLM, TGI)",
                   "730.5 h", "grid 400 gCO2e/kWh"):
        assert needle in text.stdout
    assert (tmp_path / "p.png").stat().st_size > 10_000
    d = json.loads(invoke_qtsim(*base, "--format", "json").stdout)
    assert {"query", "assumptions", "serving", "best", "trap", "rows", "frontier", "units"} <= set(d)
    assert set(d["best"]) == {"usd", "kwh", "co2"} and d["minimize"] == "usd"
    assert d["query"]["demand"]["queries_per_s"] == pytest.approx(2e5 / 86400)
    assert d["frontier"] and all(r["feasible"] for r in d["frontier"])
    rows = list(csv.DictReader(io.StringIO(invoke_qtsim(*base, "--format", "csv").stdout)))
    assert len(rows) == 2 * 5 and {r["gpu"] for r in rows} == {"l4", "t4"}
    assert all(r["pue"] == "1" and r["minimize"] == "usd" for r in rows)
    ranked = [r for r in rows if r["feasible"] == "1"]
    assert [int(r["rank"]) for r in ranked] == list(range(1, len(ranked) + 1))


def test_single_gpu_plot_is_one_panel(small_case):
    from qtsim.report.plan_output import plot_plan

    p, *_ = small_case
    fig = plot_plan(p)
    assert len(fig.axes) == 1  # the close-up would show everything: no overview panel
    assert fig.axes[0].get_xlabel().startswith("energy per month, kWh")


def test_grid_is_evaluated_once_per_gpu_and_setting(monkeypatch):
    """Vectorised over batches and draws: two evaluations (central, draws) per GPU x setting,
    whatever the number of batches."""
    calls = []
    real = Simulator.evaluate
    monkeypatch.setattr(Simulator, "evaluate",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    arch = load_architecture("qwen3-0.6b")
    plan([load_profile("l4"), load_profile("t4")],
         _request(arch, 1.0, settings="fp16,int8,nf4", batches=tuple(range(1, 257))))
    assert len(calls) == 2 * 3 * 2

