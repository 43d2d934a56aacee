"""Power states (deep idle, awake, streaming, GEMM) on fakes of NVML, CUDA and RAPL.

The fake board is eq. P.1 in a box: its energy counter integrates a base power (deep idle, or
awake once a state load runs) over wall time and adds each step's dynamic energy
(e_byte x bytes + e_flop x FLOPs). Measuring its states and fitting them must give its
constants back; every number here is made up, nothing is measured. The last tests run the real
state loads (torch on this CPU) at tiny sizes.
"""

import dataclasses
import math
import shutil
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from qtsim.calibration.fit.power_fit import power_constants, state_powers
from qtsim.calibration.measure import nvml as nvml_mod
from qtsim.calibration.measure.device import CpuDevice
from qtsim.calibration.measure.energy import (
    EnergyMonitor,
    RaplMeter,
    rapl_power_limit_w,
    rapl_status,
)
from qtsim.calibration.measure.nvml import NvmlGpu, visible_gpu
from qtsim.calibration.measure.raw import RawStore
from qtsim.calibration.probes import power_states as ps
from qtsim.calibration.probes.runner import run_plan
from qtsim.errors import MeasurementError, QtsimError

from .test_measure_cuda_fakes import FakeCudaDevice, FakeNVMLError, fake_pynvml

pytestmark = pytest.mark.measure

ROOT = Path(__file__).parents[1]
TRUTH = {"p_idle_w": 60.0, "p_awake_w": 110.0, "e_byte_j": 1e-10, "e_flop_j": 5e-13}
STEP_S = 0.002
STREAM_BYTES = 4e9  # per step: 2e12 bytes/s, 200 W dynamic
GEMM_FLOPS, GEMM_BYTES = 1.2e12, 1e8  # per step: 6e14 FLOP/s, 300 W + 5 W dynamic
FAST = dict(window_s=0.15, reps=3, warmup_s=0.02)


class FakeBoard:
    """Eq. P.1: E = base power x wall time + sum of the steps' dynamic energy. The counter
    (mJ) publishes every ``period_s`` (0: continuously)."""

    def __init__(self, period_s: float = 0.0):
        self.base_w, self.e_mj, self.t = TRUTH["p_idle_w"], 1.0e6, time.perf_counter()
        self.period_s, self.published, self.t_pub = period_s, self.e_mj, self.t
        self.lock = threading.Lock()

    def _advance(self):
        now = time.perf_counter()
        self.e_mj += self.base_w * (now - self.t) * 1e3
        self.t = now
        if now - self.t_pub >= self.period_s:
            self.published, self.t_pub = self.e_mj, now

    def set_base(self, w):
        with self.lock:
            self._advance()
            self.base_w = w

    def add_j(self, j):
        with self.lock:
            self._advance()
            self.e_mj += j * 1e3

    def energy_mj(self):
        with self.lock:
            self._advance()
            return int(self.published)


def fake_loads(board):
    """A ``state_load`` whose steps drive the board as the real work drives a GPU."""
    dyn = {"stream": TRUTH["e_byte_j"] * STREAM_BYTES,
           "gemm": TRUTH["e_byte_j"] * GEMM_BYTES + TRUTH["e_flop_j"] * GEMM_FLOPS}
    work = {"stream": (STREAM_BYTES, 0.0), "gemm": (GEMM_BYTES, GEMM_FLOPS)}

    def factory(spec, device):
        base = TRUTH["p_idle_w"] if spec.state == "deep_idle" else TRUTH["p_awake_w"]

        def step():
            board.set_base(base)
            if spec.state in dyn:
                board.add_j(dyn[spec.state])
            time.sleep(STEP_S)

        b, f = work.get(spec.state, (0.0, 0.0))
        if spec.state == "gemm" and getattr(board, "interrupt_gemm", False):
            raise KeyboardInterrupt
        return ps.StateLoad(step, b, f, 0.0 if spec.state == "deep_idle" else 1.0)
    return factory


def board_pynvml(board, processes=(), counter=True, **kw):
    nv = fake_pynvml(instant_field=False, **kw)
    nv.nvmlDeviceGetTotalEnergyConsumption = (
        (lambda h: board.energy_mj()) if counter else
        (lambda h: (_ for _ in ()).throw(FakeNVMLError("Not Supported"))))
    nv.nvmlDeviceGetPowerUsage = lambda h: int(board.base_w * 1e3)
    nv.nvmlDeviceGetUUID = lambda h: b"GPU-4a0c1b2e-1111-2222-3333-444455556666"
    nv.nvmlDeviceGetComputeRunningProcesses = lambda h: list(processes)
    nv.nvmlDeviceGetCurrentClocksEventReasons = lambda h: 0x1
    return nv


@pytest.fixture
def board(monkeypatch):
    b = FakeBoard()
    monkeypatch.setattr(ps, "state_load", fake_loads(b))
    monkeypatch.setattr(nvml_mod, "_pynvml", lambda: board_pynvml(b))
    return b


def _measure(device, states=("awake", "stream", "gemm"), tmp_path=None, name="raw.h5", **kw):
    store = RawStore(tmp_path / name)
    mon = EnergyMonitor(device, poll_interval_s=0.01)
    plan = [ps.PowerStateSpec(s, **{**FAST, **kw}) for s in states]
    run_plan(plan, store, device, mon, progress=False)
    mon.close()
    return store


def _deep_idle(store, **kw):
    dev = ps.deep_idle_device("h100", log=lambda _: None)
    return ps.measure_deep_idle(store, dev, log=lambda _: None, **{**FAST, **kw})


# -- the fit inverts the board -------------------------------------------------------------------
def test_power_states_give_the_boards_constants_back(board, tmp_path):
    store = RawStore(tmp_path / "raw.h5")
    assert _deep_idle(store)
    _measure(FakeCudaDevice(NvmlGpu(0)), tmp_path=tmp_path)
    frame = store.summary_frame()
    assert set(frame["state"]) == {"deep_idle", "awake", "stream", "gemm"}
    notes = []
    c = power_constants(frame, notes)
    for k, v in TRUTH.items():
        assert c[k].value == pytest.approx(v, rel=0.03), (k, notes)
        assert 0 < c[k].stderr < 0.1 * v
        assert c[k].meter == "nvml_counter" and c[k].basis.startswith("measured: ")
        assert "power_state__" in c[k].basis
    assert c["p_cap_w"].value == pytest.approx(650.0)  # the enforced limit, not the 700 W default
    assert "EnforcedPowerLimit" in c["p_cap_w"].basis
    rec = next(p for p in store.points("power_state") if p.attrs["state"] == "gemm")
    assert rec.attrs["window_s"] == FAST["window_s"] and len(rec.datasets["steps"]) == 3
    assert (rec.datasets["sm_clock_mhz"] == 1980).all()  # sampled inside each window
    assert np.isnan(rec.datasets["temperature_c"]).all()  # unreadable: NaN, never a raise
    assert rec.attrs["counter_period_s"] > 0 and "state_exclusion" not in rec.attrs


def test_counter_period_is_measured(monkeypatch):
    b = FakeBoard(period_s=0.02)
    monkeypatch.setattr(nvml_mod, "_pynvml", lambda: board_pynvml(b))
    assert NvmlGpu(0).counter_update_period_s(0.3) == pytest.approx(0.02, rel=0.25)
    b = FakeBoard(period_s=10.0)  # never changes within the read: not measurable
    monkeypatch.setattr(nvml_mod, "_pynvml", lambda: board_pynvml(b))
    assert NvmlGpu(0).counter_update_period_s(0.1) is None


def test_counter_that_does_not_answer_falls_back_to_polling(board, monkeypatch, tmp_path):
    monkeypatch.setattr(nvml_mod, "_pynvml", lambda: board_pynvml(board, counter=False))
    dev = FakeCudaDevice(NvmlGpu(0))
    store = _measure(dev, ("awake",), tmp_path)
    rec = next(store.points("power_state"))
    assert rec.attrs["meters"] == ["nvml_poll", "hli"]
    assert "energy_j_nvml_poll" in rec.datasets and "energy_j_nvml_counter" not in rec.datasets
    assert rec.attrs["counter_period_basis"] == "no NVML energy counter"
    c = power_constants(store.summary_frame(), [])
    assert c["p_awake_w"].meter == "nvml_poll" and "nvml_poll" in c["p_awake_w"].basis
    assert c["p_awake_w"].value == pytest.approx(TRUTH["p_awake_w"], rel=0.05)


def test_counter_going_backwards_is_excluded_and_polling_used(board, monkeypatch, tmp_path):
    nv = board_pynvml(board)
    calls = {"n": 0}

    def glitchy(h):
        calls["n"] += 1
        return 5 if calls["n"] == 5 else board.energy_mj()  # one read jumps back (a reset)

    nv.nvmlDeviceGetTotalEnergyConsumption = glitchy
    monkeypatch.setattr(nvml_mod, "_pynvml", lambda: nv)
    # reads: 1 the monitor's availability check; then per window a start and a stop read:
    # read 5 closes the second window, below where it started
    monkeypatch.setattr(ps, "_counter_period", lambda *a: (None, "not probed in this test"))
    store = _measure(FakeCudaDevice(NvmlGpu(0)), ("awake",), tmp_path)
    rec = next(store.points("power_state"))
    assert any("went backwards" in e for e in rec.attrs["exclusions"])
    assert any(e.startswith("nvml_counter: left out") for e in rec.attrs["exclusions"])
    assert power_constants(store.summary_frame(), [])["p_awake_w"].meter == "nvml_poll"


def test_nan_readings_are_dropped_with_their_reason(board, tmp_path):
    store = _measure(FakeCudaDevice(NvmlGpu(0)), ("awake",), tmp_path)
    rec = next(store.points("power_state"))
    bad = dict(rec.datasets, energy_j_nvml_counter=np.array([np.nan, 1.0, 1.0]))
    store.append("power_state__awake__broken", {**rec.attrs, "state": "awake"}, bad)
    frame = store.summary_frame()
    assert any("power_state__awake__broken: energy_j_nvml_counter has NaN" in d
               for d in frame.attrs["dropped"])
    assert len(frame) == 1


def test_negative_dynamic_power_is_refused_not_fitted(board, tmp_path):
    store = _measure(FakeCudaDevice(NvmlGpu(0)), ("awake", "stream"), tmp_path)
    frame = store.summary_frame()
    col = "p_mean_w_nvml_counter"
    frame.loc[frame["state"] == "stream", col] = 60.0  # streaming below awake: impossible
    notes = []
    c = power_constants(frame, notes)
    assert "e_byte_j" not in c and "e_flop_j" not in c
    assert any("e_byte_j" in n and "significantly negative" in n for n in notes)


def test_deep_idle_with_a_context_elsewhere_is_excluded(board, monkeypatch, tmp_path):
    monkeypatch.setattr(nvml_mod, "_pynvml", lambda: board_pynvml(board, processes=[1, 2]))
    store = RawStore(tmp_path / "raw.h5")
    assert _deep_idle(store)
    rec = next(store.points("power_state"))
    assert rec.attrs["state_exclusion"] == ("deep idle: 2 other process(es) hold a CUDA "
                                            "context on this GPU")
    notes = []
    assert "p_idle_w" not in power_constants(store.summary_frame(), notes)
    assert any("deep_idle" in n and "other process" in n for n in notes)


def test_deep_idle_with_a_context_in_this_process_is_excluded(board, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    why = ps.premise_violation("deep_idle", FakeCudaDevice(NvmlGpu(0)), NvmlGpu(0))
    assert why == "deep idle: a CUDA context is already open in this process"
    assert ps.premise_violation("awake", FakeCudaDevice(NvmlGpu(0)), NvmlGpu(0)) is None


def test_deep_idle_refuses_another_gpu_and_resumes(board, tmp_path):
    with pytest.raises(QtsimError, match=r"--gpu l4 requested but NVML shows .*use --gpu h100-sxm"):
        ps.deep_idle_device("l4")
    store = RawStore(tmp_path / "raw.h5")
    assert _deep_idle(store) and not _deep_idle(store)  # stored: not measured twice


def test_visible_gpu_follows_cuda_visible_devices(board):
    assert visible_gpu(0, env={}).index == 0
    assert visible_gpu(0, env={"CUDA_VISIBLE_DEVICES": "3,1"}).index == 3
    g = visible_gpu(0, env={"CUDA_VISIBLE_DEVICES": "GPU-4a0c1b2e-1111-2222-3333-444455556666"})
    assert g.matched_by == "uuid"
    with pytest.raises(MeasurementError, match="names no GPU"):
        visible_gpu(0, env={"CUDA_VISIBLE_DEVICES": "MIG-1234"})
    with pytest.raises(MeasurementError, match="shows no device 1"):
        visible_gpu(1, env={"CUDA_VISIBLE_DEVICES": "0"})


def test_spec_refuses_bad_windows():
    with pytest.raises(QtsimError, match=">= 2 windows"):
        ps.PowerStateSpec("awake", reps=1)
    with pytest.raises(QtsimError, match="unknown power state"):
        ps.PowerStateSpec("asleep")
    with pytest.raises(QtsimError, match="window must be > 0"):
        ps.PowerStateSpec("awake", window_s=float("nan"))


def test_interrupted_power_plan_resumes(board, tmp_path):
    dev = FakeCudaDevice(NvmlGpu(0))
    store = RawStore(tmp_path / "raw.h5")
    mon = EnergyMonitor(dev, poll_interval_s=0.01)
    plan = ps.power_state_plan(dev, **FAST)
    assert [p.state for p in plan] == ["awake", "stream", "gemm"]
    board.interrupt_gemm = True
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, store, dev, mon, progress=False)
    assert sorted(store.ids()) == ["power_state__awake__0.15s", "power_state__stream__0.15s"]
    board.interrupt_gemm = False
    again = run_plan(plan, store, dev, mon, progress=False)
    assert again.measured == ["power_state__gemm__0.15s"] and len(again.resumed) == 2
    mon.close()


# -- calibrate --gpu end to end on fakes ---------------------------------------------------------
def _cuda_shaped_raw(path):
    """The recorded CPU calibration's points relabelled as an H100's: the timing stages have
    their data, the energy stage gets the fake board's power states."""
    shutil.copy(ROOT / "data" / "raw" / "cpu-calibration.h5", path)
    with h5py.File(path, "a") as f:
        for g in f["points"].values():
            g.attrs["backend"], g.attrs["hardware"] = "cuda", "h100-sxm"


def test_calibrate_gpu_measures_power_states_and_the_profile_uses_them(board, monkeypatch,
                                                                         tmp_path):
    import torch

    from qtsim.calibration import calibrate as cal
    from qtsim.calibration.measure import device as device_mod
    from qtsim.calibration.probes import plan as plan_mod
    from qtsim.report.budget import profile_energy_scope

    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build of torch, as on a GPU box
    dev = FakeCudaDevice(NvmlGpu(0))
    monkeypatch.setattr(device_mod, "detect_device", lambda *a, **k: dev)
    monkeypatch.setattr(plan_mod, "calibration_plan",
                        lambda d, **k: ps.power_state_plan(d, k["power_window_s"], 3, 0.02))
    _cuda_shaped_raw(tmp_path / "h100-sxm-calibration.h5")
    board.interrupt_gemm = True  # interrupted after deep idle, awake and streaming
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate_device("h100", tmp_path, resume=True, power_window_s=0.15, progress=False,
                             echo=lambda _: None, log=lambda _: None)
    board.interrupt_gemm = False
    lines, log = [], []
    prof = cal.calibrate_device("h100", tmp_path, resume=True, power_window_s=0.15,
                                progress=False, echo=lines.append, log=log.append)
    assert "deep idle: power_state__deep_idle__0.15s already stored" in log
    for k, v in TRUTH.items():
        p = prof.physical[k]
        assert p.value == pytest.approx(v, rel=0.05) and p.source == "calibrated", k
        assert "power_state__" in p.basis and "nvml_counter" in p.basis
    assert prof.physical["p_cap_w"].value == pytest.approx(650.0)
    assert prof.fit["energy_method"] == "nvml_counter"
    assert profile_energy_scope(prof) == "GPU board energy"
    assert any(line.startswith("  energy: GPU board energy") for line in lines)
    assert any(line.startswith("  p_awake_w") and "(calibrated)" in line for line in lines)


# -- a CPU: RAPL where it is readable, said where it is not ----------------------------------------
def _rapl_board(root, max_uj, pl1_uw=None):
    z = root / "intel-rapl:0"
    z.mkdir(parents=True)
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (z / "energy_uj").write_text("0\n")
    if pl1_uw is not None:
        (z / "constraint_0_power_limit_uw").write_text(f"{pl1_uw}\n")
    return z


def test_rapl_power_states_on_a_cpu_with_wraparound(monkeypatch, tmp_path):
    """deep idle and awake on a CPU whose fake RAPL counter wraps within the run."""
    watts = {"deep_idle": 8.0, "awake": 21.0}
    import functools

    from qtsim.calibration.measure import device as device_mod
    from qtsim.calibration.measure import energy as energy_mod

    z = _rapl_board(tmp_path / "powercap", max_uj=3_000_000, pl1_uw=35_000_000)  # wraps every 3 J
    monkeypatch.setattr(device_mod, "rapl_power_limit_w",  # what CpuDevice.describe() reads
                        functools.partial(energy_mod.rapl_power_limit_w, str(tmp_path / "powercap")))
    state = {"w": 8.0, "uj": 0.0, "t": time.perf_counter()}

    def factory(spec, device):
        def step():  # the counter is written at the end of each step, up to date
            time.sleep(0.001)
            now = time.perf_counter()
            state["uj"] = (state["uj"] + state["w"] * (now - state["t"]) * 1e6) % 3_000_000
            state["t"], state["w"] = now, watts[spec.state]
            (z / "energy_uj").write_text(f"{int(state['uj'])}\n")
        return ps.StateLoad(step)

    monkeypatch.setattr(ps, "state_load", factory)
    dev = CpuDevice()
    mon = EnergyMonitor(dev, tdp_w=30.0, rapl_root=str(tmp_path / "powercap"))
    assert mon.meter_names == ["rapl", "hli"]
    plan = ps.power_state_plan(dev, window_s=0.1, reps=3, warmup_s=0.01)
    assert [p.state for p in plan] == ["deep_idle", "awake"]
    store = RawStore(tmp_path / "cpu.h5")
    run_plan(plan, store, dev, mon, progress=False)
    assert any("wrapped once" in n for p in store.points("power_state") for n in p.attrs["notes"])
    c = power_constants(store.summary_frame(), [])
    assert c["p_idle_w"].value == pytest.approx(8.0, rel=0.1)
    assert c["p_awake_w"].value == pytest.approx(21.0, rel=0.1) and c["p_awake_w"].meter == "rapl"
    # the CPU's enforced limit is RAPL's PL1, not the assumed TDP (7.5 W x cores here)
    assert c["p_cap_w"].value == pytest.approx(35.0) and "PL1" in c["p_cap_w"].basis


def test_cpu_stream_and_gemm_fall_back_to_the_probes():
    """On a CPU e_byte_j and e_flop_j come from the bandwidth and GEMM probes' RAPL energy."""
    import pandas as pd

    def row(**kw):
        return {"n_reps": 3, "t_median_s": 0.2, "p_sem_w_rapl": 0.1, **kw}

    frame = pd.DataFrame([
        row(kind="power_state", state="awake", point_id="a", p_mean_w_rapl=20.0),
        row(kind="membw", point_id="m", size_bytes=1 << 28, p_mean_w_rapl=30.0,
            bandwidth_bytes_per_s=1e10),
        row(kind="gemm", point_id="g", in_features=1024, t_call_s=0.01, flops_per_s=2.147e11,
            p_mean_w_rapl=45.0),
    ])
    notes = []
    c = power_constants(frame, notes)
    assert c["e_byte_j"].value == pytest.approx(10.0 / 1e10)
    gemm_bytes_per_s = 3 * 1024 * 1024 * 2 / 0.01
    assert c["e_flop_j"].value == pytest.approx((25.0 - 1e-9 * gemm_bytes_per_s) / 2.147e11)
    assert state_powers(frame, [])["stream"].point_id == "m"


def test_rapl_status_says_why(tmp_path):
    ok, line = rapl_status(str(tmp_path / "none"))
    assert not ok and line.startswith("RAPL absent")
    z = _rapl_board(tmp_path / "pc", 1000)
    assert rapl_status(str(tmp_path / "pc")) == (True, f"RAPL readable (1 package zone(s) under "
                                                        f"{tmp_path / 'pc'})")
    assert rapl_power_limit_w(str(tmp_path / "pc")) is None  # no PL1 file
    (z / "constraint_0_power_limit_uw").write_text("28000000\n")
    assert rapl_power_limit_w(str(tmp_path / "pc")) == pytest.approx(28.0)
    (z / "energy_uj").unlink()
    (z / "energy_uj").mkdir()  # unreadable as a file
    ok, line = rapl_status(str(tmp_path / "pc"))
    assert not ok and line.startswith("RAPL unreadable")
    assert not RaplMeter(str(tmp_path / "pc")).available()


def test_this_machine_says_whether_it_has_rapl():
    ok, line = rapl_status()
    assert line.startswith("RAPL readable" if ok else ("RAPL absent", "RAPL unreadable"))


# -- the real state loads, tiny, on this CPU -------------------------------------------------------
def test_real_state_loads_run_on_this_cpu(tmp_path):
    pytest.importorskip("torch")
    dev = CpuDevice()
    mon = EnergyMonitor(dev, tdp_w=20.0, rapl_root=str(tmp_path / "none"))
    store = RawStore(tmp_path / "real.h5")
    plan = [ps.PowerStateSpec("awake", 0.1, 2, 0.01),
            ps.PowerStateSpec("stream", 0.1, 2, 0.01, size_bytes=4 << 20),
            ps.PowerStateSpec("gemm", 0.1, 2, 0.01, n=64)]
    run_plan(plan, store, dev, mon, progress=False)
    frame = store.summary_frame().set_index("state")
    interval = frame.loc["awake", "launch_interval_s"]
    assert "h_op_s of the default host part" in frame.loc["awake", "launch_interval_basis"]
    # one launch per interval at most: the loop waits for its host, it never races ahead
    assert 0.1 / interval < frame.loc["awake", "launches_per_s"] <= 1.05 / interval
    assert frame.loc["stream", "bytes_per_s"] > 1e8
    assert frame.loc["gemm", "flops_per_s"] == pytest.approx(
        frame.loc["gemm", "launches_per_s"] * 2 * 64**3)
    # no real meter here: the HLI estimate is recorded, and never taken for a power state
    notes = []
    assert power_constants(store.summary_frame(), notes) == {}
    assert any("no real meter reading" in n for n in notes)


def test_power_windows_default_to_five_seconds():
    spec = ps.PowerStateSpec("awake")
    assert (spec.window_s, spec.reps) == (5.0, 3)
    assert spec.point_id() == "power_state__awake__5s"
    assert math.isclose(spec.estimate_s(CpuDevice()), 1.0 + 15.0 + 0.5 + 0.2)
    assert dataclasses.replace(spec, window_s=0.5).point_id() == "power_state__awake__0.5s"
