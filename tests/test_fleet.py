"""Fleets on a local Ray cluster (issue 15): a head and two worker "nodes", each with a
``qtsim:<slot>`` resource standing for a GPU node, started once for this module.

The campaign is real: each worker runs the tiny CPU calibration plan (linear probes and short
decodes, about half a minute), one worker is killed mid-run (``os._exit``) and Ray's retry
resumes it; a slot asking for an L4 on a node without GPUs is refused with its reason.
"""

import json
import socket
import sys

import numpy as np
import pytest

from qtsim.errors import QtsimError
from qtsim.profiles.hardware import load_profile

from .conftest import refused, run_qtsim_process

SLOTS = "cpu-a,cpu-b,cpu-c=l4"
CRASH_AFTER = 5


def test_missing_ray_is_one_clear_line(monkeypatch):
    from qtsim.calibration.fleet.slots import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(QtsimError, match=r"pip install 'qtsim\[fleet\]'"):
        require_ray()


def test_check_points_finds_duplicates_and_gaps():
    from qtsim.calibration.fleet.head import check_points

    assert check_points(["a", "b"], ["a", "b"]) is None
    assert "duplicate" in check_points(["a", "a", "b"], ["a", "b"])
    assert "missing" in check_points(["a"], ["a", "b"])
    assert "not in the plan" in check_points(["a", "b", "c"], ["a", "b"])


# without a cluster: before the module's cluster starts (a Ray driver in this process)
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

    from qtsim.calibration.fleet import campaigns
    from qtsim.errors import QtsimError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda *a, **k: None)
    with pytest.raises(QtsimError, match=r"--address auto: no Ray cluster is running on this "
                                         r"machine; start one with `ray start --head`"):
        campaigns.cluster_endpoint("auto")
    with pytest.raises(QtsimError, match="give HOST:PORT, ray://HOST:PORT or auto"):
        campaigns.cluster_endpoint("nowhere")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    small = {"object_store_memory": 80 * 2**20, "include_dashboard": False}
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "resources": {"qtsim:cpu-c": 1}, **small})
    for slot in ("cpu-a", "cpu-b"):
        c.add_node(num_cpus=1, resources={f"qtsim:{slot}": 1}, object_store_memory=80 * 2**20)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="ERROR",
             configure_logging=False)
    yield {"address": c.address, "work": tmp_path_factory.mktemp("fleet-work"),
           "out": tmp_path_factory.mktemp("fleet-out") / "campaign"}
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def campaign(cluster):
    """The calibration campaign, cpu-a's worker killed after CRASH_AFTER points."""
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from qtsim.calibration.fleet.head import run_campaign
    from qtsim.calibration.fleet.slots import parse_slots, require_ray, wait_for_resources
    from qtsim.calibration.fleet.summary import fit_nodes, fleet_summary

    ray = require_ray()
    slots = parse_slots(SLOTS, "cpu", ray.cluster_resources())
    wait_for_resources([s.resource for s in slots])
    lines = []
    m = run_campaign("calibrate", cluster["out"], slots, settings={"plan": "tiny", "gpu": "cpu"},
                     job_extra={"*": {"plan": "tiny", "cpu_threads": 1}},
                     work_dir=str(cluster["work"]), crash={"cpu-a": CRASH_AFTER},
                     echo=lines.append)
    profiles = fit_nodes(m, echo=lines.append)
    summary = fleet_summary(m, profiles, echo=lines.append)
    return {"manifest": m, "profiles": profiles, "summary": summary, "lines": lines,
            "work": cluster["work"] / m.doc["campaign"]}


@pytest.mark.measure
def test_killed_worker_is_retried_and_loses_nothing(campaign):
    from qtsim.calibration.measure.raw import RawStore

    m = campaign["manifest"]
    a, b = m.slot("cpu-a"), m.slot("cpu-b")
    assert a["status"] == "done" and b["status"] == "done", campaign["lines"]
    assert a["attempts"] == 2 and b["attempts"] == 1  # cpu-a's first worker died
    assert a["resumed_last_attempt"] == CRASH_AFTER  # kept from the killed attempt
    assert a["measured_last_attempt"] == a["planned"] - CRASH_AFTER  # the rest, the lost one again
    for st in (a, b):
        recs = list(RawStore(m.out / st["raw"], readonly=True).points())
        ids = [r.point_id for r in recs]
        assert len(ids) == len(set(ids)) == st["planned"] == st["points"]
        assert all(r.attrs["status"] == "ok" for r in recs)
    # the worker really died (its marker), after appending the plan's first points in order
    assert (campaign["work"] / "cpu-a" / "crashed").is_file()
    assert not (campaign["work"] / "cpu-b" / "crashed").exists()


@pytest.mark.measure
def test_mismatched_node_refused_with_reason(campaign):
    m = campaign["manifest"]
    c = m.slot("cpu-c")
    assert c["status"] == "refused"
    assert "requested l4" in c["reason"] and "no GPU" in c["reason"]
    doc = json.loads((m.out / "fleet_summary.json").read_text())
    assert doc["slots"]["cpu-c"]["reason"] == c["reason"]


@pytest.mark.measure
def test_per_node_profiles_and_fleet_spread(campaign, capsys):
    m, summary = campaign["manifest"], campaign["summary"]
    assert set(campaign["profiles"]) == {"cpu-a", "cpu-b"}
    for name in ("cpu-a", "cpu-b"):
        prof = campaign["profiles"][name]
        assert prof.source == "calibrated" and (m.out / m.slot(name)["profile"]).is_file()
    frame = summary["frame"]
    assert len(frame) and set(frame["n_units"]) == {2}
    row = frame[frame["constant"] == "mem_bw_gbs"] if "mem_bw_gbs" in set(frame["constant"]) \
        else frame.iloc[:1]
    r = row.iloc[0]
    assert r["min"] <= r["mean"] <= r["max"] and r["cv"] == pytest.approx(r["sd"] / abs(r["mean"]))
    assert (m.out / "fleet_summary.csv").is_file() and summary["png"].stat().st_size > 10_000
    with capsys.disabled():
        print("\n--- fleet campaign on a local Ray cluster (tiny plan) ---")
        print("\n".join(campaign["lines"]))
        print(frame[["constant", "mean", "sd", "cv"]].head(8).to_string(index=False))


@pytest.mark.measure
def test_interrupted_campaign_resumes_from_the_manifest(campaign, cluster):
    """The head dies while cpu-b is running: --resume re-dispatches only cpu-b, which finds
    its points in its node's raw file and measures nothing again."""
    m = campaign["manifest"]
    doc = json.loads(m.path.read_text())
    doc["slots"]["cpu-b"]["status"] = "running"
    (m.out / doc["slots"]["cpu-b"]["raw"]).unlink()
    m.path.write_text(json.dumps(doc))
    # a fresh head process (the point: a new driver resumes from the manifest alone)
    r = run_qtsim_process("fleet", "calibrate", "--address", cluster["address"], "--nodes", SLOTS,
                          "--gpu", "cpu", "--plan", "tiny", "--out", str(m.out), "--resume",
                          "--work-dir", str(cluster["work"]), "--cpu-threads", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    after = json.loads(m.path.read_text())
    b = after["slots"]["cpu-b"]
    assert b["status"] == "done" and b["measured_last_attempt"] == 0
    assert b["resumed_last_attempt"] == b["planned"] == b["points"]
    assert after["slots"]["cpu-a"]["attempts"] == 2  # not run again
    assert "cpu-a: done already" in r.stdout and "spread between units" in r.stdout


def test_simulate_chunked_over_ray_is_bit_for_bit(cluster):
    import xarray as xr

    from qtsim.calibration.fleet.tiles import fleet_simulate
    from qtsim.model.architecture import load_architecture
    from qtsim.simulate.surface import simulate

    profs = [load_profile("l4"), load_profile("h100-sxm")]
    models = [load_architecture("mistral-7b"), load_architecture("qwen3-0.6b")]
    from qtsim.model.workload import Workload

    kw = {"precisions": ("fp16", "int8", "nf4"), "n_draws": 30, "seed": 3}
    sizes, batch = [1e9, 3e9, 7e9], [1, 2, 4, 8, 16, 32]
    one = simulate(profs, models, workload=Workload(batch=batch, new_tokens=64, prompt_tokens=32),
                   sizes=sizes, **kw)
    tiled = fleet_simulate(profs, models, sizes=sizes, batch=batch, chunk_models=2,
                           chunk_batches=4, new_tokens=64, prompt_tokens=32, **kw)
    xr.testing.assert_identical(one, tiled)  # values (NaN where NaN), coords, attrs, trust table
    assert list(one.variables) == list(tiled.variables)
    for k in one.variables:
        assert one[k].dtype == tiled[k].dtype, k
        assert np.array_equal(one[k].values, tiled[k].values,
                              equal_nan=one[k].dtype.kind == "f"), k
