"""`qtsim calibrate --host` for real, tiny: a few decodes of hidden-64 models, then the fit."""

import pytest

pytestmark = pytest.mark.measure


def test_host_plan_runs_and_fits(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    from qtsim.calibration.fit.host_part import build_host_part
    from qtsim.calibration.measure.device import detect_device
    from qtsim.calibration.measure.energy import EnergyMonitor
    from qtsim.calibration.measure.raw import RawStore
    from qtsim.calibration.probes.host import host_plan
    from qtsim.calibration.probes.runner import run_plan
    from qtsim.profiles.hosts import load_host, write_host

    dev = detect_device("cpu")
    plan = host_plan(dev, depths=(1, 4), batches=(1,), precisions=("fp16", "int8", "nf4"), reps=2)
    assert len(plan) == 6
    raw = tmp_path / "h.h5"
    rep = run_plan(plan, RawStore(raw), dev, EnergyMonitor(dev), progress=False)
    assert len(rep.measured) == 6
    again = run_plan(plan, RawStore(raw), dev, EnergyMonitor(dev), progress=False)
    assert len(again.resumed) == 6 and not again.measured  # append-only, resumable
    part, st = build_host_part(str(raw), "tiny-host")
    assert part.physical["h_op_s"].value > 0 and st.n_points == 6
    back = load_host(str(write_host(part, tmp_path / "tiny-host.toml")))
    assert back.provenance["raw_sha256"] and back.host["stack"]["torch"]


def test_calibrate_host_cli_refuses_existing(tmp_path):
    from .conftest import invoke_qtsim

    (tmp_path / "x-host.h5").write_bytes(b"")
    r = invoke_qtsim("calibrate", "--host", "--name", "x-host", "--out", str(tmp_path))
    assert r.returncode == 2 and "--resume" in r.stderr
