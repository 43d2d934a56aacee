"""Energy meters and windows: HLI, RAPL (fake sysfs), NVML counter/poller (fake GPU), checks."""

import dataclasses
import time

import numpy as np
import pytest

from qtsim.calibration.measure.device import CpuDevice
from qtsim.calibration.measure.energy import (
    EnergyMonitor,
    HliMeter,
    Measurement,
    NvmlEnergyCounter,
    NvmlPowerPoller,
    RaplMeter,
    cpu_tdp_w,
    measure_idle,
)
from qtsim.errors import MeasurementError

pytestmark = pytest.mark.measure


class FakeGpu:
    """Stands in for NvmlGpu: a counter in mJ and a constant power in mW."""

    def __init__(self, power_w=100.0, counter_step_mj=None):
        self.power_w = power_w
        self.t0 = time.perf_counter()
        self.counter_step_mj = counter_step_mj

    def total_energy_mj(self):
        if self.counter_step_mj is not None:
            return self.counter_step_mj
        return int((time.perf_counter() - self.t0) * self.power_w * 1e3)

    def supports_energy_counter(self):
        return True

    def power_mw(self):
        return int(self.power_w * 1e3)


def test_hli_is_tdp_times_duration():
    m = HliMeter(300.0, "test")
    r = m.stop(m.start(), 2.0)
    assert r.energy_j == pytest.approx(600.0) and r.exclusions == ()
    with pytest.raises(MeasurementError):
        HliMeter(0.0)


def test_cpu_tdp_assumption_is_labelled():
    tdp, label = cpu_tdp_w(None, logical_cores=4)
    assert tdp == 30.0 and label.startswith("ASSUMED") and "7.5 W x 4" in label
    tdp, label = cpu_tdp_w(65.0)
    assert tdp == 65.0 and "given by the user" in label


def _rapl_tree(root, energy_uj, max_uj=1000000):
    z = root / "intel-rapl:0"
    z.mkdir(parents=True, exist_ok=True)
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    sub = root / "intel-rapl:0:0"  # a subzone: must not be double counted
    sub.mkdir(exist_ok=True)
    (sub / "energy_uj").write_text("5\n")
    return z


def test_rapl_reads_and_corrects_one_wrap(tmp_path):
    z = _rapl_tree(tmp_path, 900000)
    meter = RaplMeter(str(tmp_path), tdp_w=100.0)
    assert meter.available() and len(meter.zones) == 1
    state = meter.start()
    (z / "energy_uj").write_text("100000\n")  # wrapped: 900000 -> 1000000 -> 100000
    r = meter.stop(state, 1.0)
    assert r.energy_j == pytest.approx(0.2)
    assert r.notes and "wrapped" in r.notes[0]


def test_rapl_counter_not_advancing_is_excluded(tmp_path):
    _rapl_tree(tmp_path, 5000)
    meter = RaplMeter(str(tmp_path))
    r = meter.stop(meter.start(), 1.0)
    assert r.energy_j is None and "did not advance" in r.exclusions[0]


def test_rapl_unavailable_here_or_without_tree(tmp_path):
    assert not RaplMeter(str(tmp_path / "missing")).available()


def test_nvml_counter_checks():
    gpu = FakeGpu(counter_step_mj=1234)
    meter = NvmlEnergyCounter(gpu, tdp_w=700.0)
    r = meter.stop(meter.start(), 0.05)
    assert r.energy_j is None
    assert any("did not advance" in e for e in r.exclusions)
    assert any("update" in e for e in r.exclusions)  # 50 ms < ~100 ms update period

    gpu = FakeGpu(power_w=2000.0)  # 2000 W > 1.5 x 700 W
    meter = NvmlEnergyCounter(gpu, tdp_w=700.0)
    s = meter.start()
    time.sleep(0.15)
    r = meter.stop(s, 0.15)
    assert r.energy_j is None and "exceeds 1.5 x TDP" in r.exclusions[0]


def test_nvml_poller_integrates_constant_power():
    gpu = FakeGpu(power_w=150.0)
    poller = NvmlPowerPoller(gpu, interval_s=0.01, tdp_w=700.0)
    s = poller.start()
    time.sleep(0.3)
    r = poller.stop(s, 0.3)
    assert r.energy_j == pytest.approx(150.0 * 0.3, rel=0.1)
    assert r.samples.shape[1] == 2 and len(r.samples) >= 10
    assert np.all(np.diff(r.samples[:, 0]) >= 0)
    assert poller._thread is None  # thread stopped when no window is open


def test_monitor_windows_on_cpu():
    mon = EnergyMonitor(CpuDevice(), tdp_w=20.0, rapl_root="/nonexistent")
    assert mon.meter_names == ["hli"]
    mon.begin_window("a")
    mon.begin_window("b")  # windows may overlap
    time.sleep(0.05)
    ma = mon.end_window("a")
    mb = mon.end_window("b")
    assert isinstance(ma, Measurement)
    assert ma.duration_s > 0.04 and mb.duration_s >= ma.duration_s * 0.9
    assert ma.energy_j["hli"] == pytest.approx(20.0 * ma.duration_s)
    with pytest.raises(MeasurementError):
        mon.end_window("a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ma.duration_s = 1.0


def test_monitor_default_cpu_tdp_is_assumed():
    mon = EnergyMonitor(CpuDevice())
    assert mon.hli_assumption.startswith("ASSUMED cpu TDP")
    assert mon.tdp_w > 0


def test_measure_idle():
    mon = EnergyMonitor(CpuDevice(), tdp_w=10.0)
    m = measure_idle(mon, 0.1)
    assert m.duration_s >= 0.1
    assert m.average_power_w("hli") == pytest.approx(10.0)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_real_nvml_meters_on_cuda():
    import torch

    from qtsim.calibration.measure.device import detect_device
    from qtsim.profiles.gpus import normalise_gpu_name

    dev = detect_device(normalise_gpu_name(torch.cuda.get_device_name(0)))
    mon = EnergyMonitor(dev)
    assert "nvml_poll" in mon.meter_names and "hli" in mon.meter_names
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    mon.begin_window("w")
    t_end = time.perf_counter() + 1.0
    while time.perf_counter() < t_end:
        a @ a
    m = mon.end_window("w")
    assert m.duration_s >= 1.0
    assert m.energy_j.get("nvml_poll", 0) > 0
    if "nvml_counter" in mon.meter_names:
        assert m.energy_j.get("nvml_counter", 0) > 0
    assert m.power_samples is not None and m.power_samples.shape[1] == 2
