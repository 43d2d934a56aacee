"""CUDA control flow on a machine without a GPU, through a fake ``pynvml`` module.

The fakes test control flow and unit arithmetic only (mJ -> J, mW -> W, exclusions, windows
aborted on out of memory). Nothing here measures anything: every number is made up.
"""

import time
import types

import pytest

from qtsim.calibration.measure import nvml as nvml_mod
from qtsim.calibration.measure.device import CudaDevice
from qtsim.calibration.measure.energy import (
    EnergyMonitor,
    HliMeter,
    NvmlEnergyCounter,
    NvmlPowerPoller,
    measure_idle,
)
from qtsim.calibration.measure.nvml import NvmlGpu

pytestmark = pytest.mark.measure

H100_UUID = "4a0c1b2e-1111-2222-3333-444455556666"


class FakeNVMLError(Exception):
    pass


def fake_pynvml(*, power_mw=250_000, instant_mw=310_000, instant_ret=0, instant_field=True,
                energy_mj=None, uuids=("GPU-" + H100_UUID,)):
    """A stand-in for the pynvml module: the functions qtsim calls, with NVML's units
    (energy mJ, power mW, limits mW, clocks MHz)."""
    nv = types.SimpleNamespace()
    nv.NVMLError = FakeNVMLError
    nv.NVML_SUCCESS = 0
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU = 1, 2, 0
    nv.NVML_POWER_SCOPE_GPU = 0
    if instant_field:
        nv.NVML_FI_DEV_POWER_INSTANT = 186
    nv.calls = []
    nv.energy_mj = energy_mj  # None: grows with wall time at power_mw
    t0 = time.perf_counter()

    def by_uuid(text):
        nv.calls.append(("uuid", text))
        if text not in uuids:
            raise FakeNVMLError("Not Found")
        return ("handle", text)

    def by_index(i):
        nv.calls.append(("index", i))
        return ("handle", i)

    def total_energy(h):
        if isinstance(nv.energy_mj, Exception):
            raise nv.energy_mj
        if nv.energy_mj is not None:
            return nv.energy_mj
        return int((time.perf_counter() - t0) * power_mw)  # mW x s = mJ

    def field_values(h, fields):
        (fid, scope), = fields
        assert fid == 186 and scope == 0
        val = types.SimpleNamespace(uiVal=instant_mw, dVal=float(instant_mw))
        return [types.SimpleNamespace(nvmlReturn=instant_ret, valueType=1, value=val)]

    def unsupported(*a):
        raise FakeNVMLError("Not Supported")

    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByUUID = by_uuid
    nv.nvmlDeviceGetHandleByIndex = by_index
    nv.nvmlDeviceGetTotalEnergyConsumption = total_energy
    nv.nvmlDeviceGetPowerUsage = lambda h: power_mw
    nv.nvmlDeviceGetFieldValues = field_values
    nv.nvmlDeviceGetPowerManagementDefaultLimit = lambda h: 700_000
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 650_000
    nv.nvmlSystemGetCudaDriverVersion = lambda: 13000
    nv.nvmlSystemGetDriverVersion = lambda: b"580.65.06"
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetClockInfo = lambda h, c: {1: 1980, 2: 2619}[c]
    nv.nvmlDeviceGetMaxClockInfo = lambda h, c: {1: 1980, 2: 2619}[c]
    nv.nvmlDeviceGetTemperature = unsupported
    return nv


@pytest.fixture
def use_fake(monkeypatch):
    def install(**kw):
        nv = fake_pynvml(**kw)
        monkeypatch.setattr(nvml_mod, "_pynvml", lambda: nv)
        return nv
    return install


class FakeCudaDevice(CudaDevice):
    """A CudaDevice whose NVML side is the fake and whose synchronize() only counts."""

    def __init__(self, gpu, name="h100-sxm"):
        super().__init__(name=name, index=0, device_string="NVIDIA H100 80GB HBM3")
        self._cache["nvml"] = gpu
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1

    def describe(self):  # CudaDevice.describe() without torch.cuda: NVML's half only
        return {"device_string": self.device_string, "backend": "cuda", "hardware": self.name,
                "memory_bytes": 80 << 30, "cuda_version": "13.0", **self.nvml().info()}


# -- nvml.py: handles, units, conditions ----------------------------------------------------------
def test_nvml_gpu_units_and_conditions(use_fake):
    nv = use_fake()
    gpu = NvmlGpu(0, H100_UUID)  # torch's uuid has no "GPU-" prefix: it is added
    assert gpu.matched_by == "uuid" and nv.calls == [("uuid", "GPU-" + H100_UUID)]
    assert gpu.default_power_limit_w() == pytest.approx(700.0)  # mW -> W
    info = gpu.info()
    assert info["power_limit_w"] == pytest.approx(650.0)
    assert info["cuda_driver_version"] == "13.0" and info["driver_version"] == "580.65.06"
    assert info["nvml_name"] == "NVIDIA H100 80GB HBM3" and info["sm_clock_mhz"] == 1980
    assert info["temperature_c"] is None  # unsupported reads become None, never raise
    assert gpu.supports_energy_counter()


def test_nvml_gpu_falls_back_to_index(use_fake):
    nv = use_fake(uuids=())
    gpu = NvmlGpu(0, "GPU-" + H100_UUID)
    assert gpu.matched_by == "index" and nv.calls[-1] == ("index", 0)
    assert gpu.info()["nvml_matched_by"] == "index"


def test_power_prefers_the_instantaneous_field(use_fake):
    use_fake(power_mw=250_000, instant_mw=310_000)
    gpu = NvmlGpu(0)
    assert gpu.power_mw() == 310_000 and gpu.power_source == NvmlGpu.POWER_INSTANT


@pytest.mark.parametrize("kw", [{"instant_ret": 3}, {"instant_field": False},
                                {"instant_mw": 0}])
def test_power_falls_back_to_power_usage(use_fake, kw):
    use_fake(power_mw=250_000, **kw)
    gpu = NvmlGpu(0)
    assert gpu.power_mw() == 250_000 and gpu.power_source == NvmlGpu.POWER_USAGE
    assert gpu.power_mw() == 250_000  # settled: no second probe of the field


# -- energy.py meters over the fake ---------------------------------------------------------------
def test_counter_converts_millijoules(use_fake):
    nv = use_fake(energy_mj=1_000_000)
    meter = NvmlEnergyCounter(NvmlGpu(0), tdp_w=700.0)
    s = meter.start()
    nv.energy_mj += 350_000  # 350 J over a 1 s window: 350 W
    r = meter.stop(s, 1.0)
    assert r.energy_j == pytest.approx(350.0) and r.exclusions == ()


def test_counter_backwards_or_stuck_is_excluded(use_fake):
    nv = use_fake(energy_mj=5_000)
    meter = NvmlEnergyCounter(NvmlGpu(0), tdp_w=700.0)
    s = meter.start()
    nv.energy_mj = 1_000  # driver reload / reset
    r = meter.stop(s, 1.0)
    assert r.energy_j is None and "went backwards" in r.exclusions[0]
    r = meter.stop(meter.start(), 1.0)
    assert r.energy_j is None and "did not advance" in r.exclusions[0]


def test_poller_converts_milliwatts_and_names_its_source(use_fake):
    use_fake(instant_mw=250_000)
    poller = NvmlPowerPoller(NvmlGpu(0), interval_s=0.01, tdp_w=700.0)
    assert poller.available()
    s = poller.start()
    time.sleep(0.2)
    r = poller.stop(s, 0.2)
    assert r.energy_j == pytest.approx(250.0 * 0.2, rel=0.15)  # W x s
    assert r.samples[:, 1] == pytest.approx(250.0)
    assert any("NVML_FI_DEV_POWER_INSTANT" in n for n in r.notes)
    assert poller._thread is None


def test_monitor_on_a_cuda_device_synchronises_and_converts(use_fake):
    use_fake(power_mw=300_000, instant_mw=300_000)
    dev = FakeCudaDevice(NvmlGpu(0))
    mon = EnergyMonitor(dev, poll_interval_s=0.01)
    assert mon.meter_names == ["nvml_counter", "nvml_poll", "hli"]
    assert mon.tdp_w == 700.0 and "datasheet" in mon.hli_assumption  # h100-sxm, gpu_specs
    mon.begin_window("w")
    time.sleep(0.25)
    m = mon.end_window("w")
    assert dev.syncs == 2  # before and after the window
    assert m.exclusions == []
    assert m.energy_j["hli"] == pytest.approx(700.0 * m.duration_s)
    assert m.energy_j["nvml_counter"] == pytest.approx(300.0 * m.duration_s, rel=0.2)
    assert m.energy_j["nvml_poll"] == pytest.approx(300.0 * m.duration_s, rel=0.2)
    mon.close()


def test_meter_failures_become_exclusions(use_fake):
    nv = use_fake()
    dev = FakeCudaDevice(NvmlGpu(0))
    mon = EnergyMonitor(dev, poll_interval_s=0.01)
    mon.begin_window("read-fails")
    nv.energy_mj = FakeNVMLError("GPU is lost")
    time.sleep(0.12)
    m = mon.end_window("read-fails")
    assert "nvml_counter" not in m.energy_j and "hli" in m.energy_j and "nvml_poll" in m.energy_j
    assert any(e.startswith("nvml_counter: reading failed: GPU is lost") for e in m.exclusions)
    mon.begin_window("start-fails")  # the counter now fails at the window's start too
    m = mon.end_window("start-fails")
    assert any(e.startswith("nvml_counter: could not start") for e in m.exclusions)
    poller = next(x for x in mon.meters if x.name == "nvml_poll")
    assert poller._open == 0 and poller._thread is None


def test_abort_window_frees_the_key_and_the_poller(use_fake):
    use_fake()
    dev = FakeCudaDevice(NvmlGpu(0))
    mon = EnergyMonitor(dev, poll_interval_s=0.01)
    poller = next(x for x in mon.meters if x.name == "nvml_poll")
    mon.begin_window("k")
    assert poller._thread is not None and poller._open == 1
    mon.abort_window("k")
    mon.abort_window("k")  # unknown keys are ignored
    assert poller._open == 0 and poller._thread is None
    mon.begin_window("k")  # reusable
    mon.end_window("k")


def test_measure_windows_aborts_on_out_of_memory(use_fake):
    import torch

    from qtsim.calibration.probes.bench import measure_windows

    use_fake()
    dev = FakeCudaDevice(NvmlGpu(0))
    mon = EnergyMonitor(dev, poll_interval_s=0.01)
    calls = []

    def oom():
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(torch.OutOfMemoryError):
        measure_windows(oom, mon, iters=3, reps=2, key="linear-nf4_bn")
    assert mon._open == {} and len(calls) == 1
    ms = measure_windows(lambda: None, mon, iters=1, reps=1, key="linear-nf4_bn")
    assert len(ms) == 1  # the same key opens again for the next point


def test_skip_on_oom_drops_the_frames():
    import torch

    from qtsim.calibration.measure.device import CpuDevice
    from qtsim.calibration.probes.bench import skip_on_oom

    def inner():
        big = [0] * 10  # noqa: F841 - a local the traceback would keep alive
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    try:
        inner()
    except Exception as exc:
        r = skip_on_oom(exc, CpuDevice(), {"kind": "linear"}, "batch 128")
        assert exc.__traceback__ is None
    assert r.status == "skipped" and r.attrs["skip_reason"].startswith(
        "out of memory at batch 128: CUDA out of memory")


def test_measure_idle_aborts_on_interrupt(monkeypatch):
    from qtsim.calibration.measure.device import CpuDevice

    mon = EnergyMonitor(CpuDevice(), meters=[HliMeter(10.0)])

    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        measure_idle(mon, 1.0)
    assert mon._open == {}


def test_cuda_point_attrs_round_trip_through_hdf5(use_fake, tmp_path):
    import numpy as np

    from qtsim.calibration.measure.conditions import environment_attrs
    from qtsim.calibration.measure.raw import RawStore

    use_fake()
    dev = FakeCudaDevice(NvmlGpu(0, H100_UUID))
    mon = EnergyMonitor(dev, poll_interval_s=0.01)
    attrs = environment_attrs(dev, mon)
    assert attrs["nvml_matched_by"] == "uuid" and attrs["power_limit_w"] == pytest.approx(650.0)
    assert attrs["temperature_c"] is None and attrs["clocks"]["sm_mhz"] == 1980
    store = RawStore(tmp_path / "raw.h5")
    store.append("membw__copy__1024mib", {**attrs, "kind": "membw", "exclusions": [],
                                           "notes": ["nvml_poll: power from X"]},
                 {"duration_s": np.array([1.0, 1.1])})
    rec = next(store.points())
    assert rec.attrs["clocks"]["max_mem_mhz"] == 2619 and "temperature_c" not in rec.attrs
    assert rec.attrs["meters"] == ["nvml_counter", "nvml_poll", "hli"]


def test_nvml_missing_is_recorded_not_raised():
    dev = CudaDevice(name="h100-sxm")  # no CUDA here: NVML lookup fails, reason kept
    assert dev.nvml() is None and dev.nvml_error
    mon = EnergyMonitor(dev)
    assert mon.meter_names == ["hli"] and mon.tdp_w == 700.0
    assert any(a.startswith("NVML unavailable (") for a in mon.assumptions)
