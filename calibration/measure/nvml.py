"""The one module that touches NVML (``pynvml`` from nvidia-ml-py), imported lazily.

Everything NVIDIA-management related that qtsim reads goes through :class:`NvmlGpu`: the
total-energy counter (mJ, Volta and newer), instantaneous board power (mW), and the conditions
recorded with every measurement (driver version, clocks in MHz, temperature in C, power limits
in W). Nothing here imports torch.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from qtsim.errors import MeasurementError

_INIT_LOCK = threading.Lock()
_INITIALISED = False

# nvmlClocksEventReasons bits (nvml.h) that mean "clocks held down to stay under a power limit"
CLOCK_EVENT_SW_POWER_CAP = 0x4
CLOCK_EVENT_HW_POWER_BRAKE = 0x80
POWER_CAP_REASONS = CLOCK_EVENT_SW_POWER_CAP | CLOCK_EVENT_HW_POWER_BRAKE

# nvmlValueType_t -> the c_nvmlValue_t union member holding a field value
_FIELD_VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                       6: "usVal"}


def _pynvml():
    """Import pynvml and initialise NVML once per process; MeasurementError when impossible."""
    global _INITIALISED
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - depends on the calibrate extra
        raise MeasurementError(
            "NVML is not importable (pip install nvidia-ml-py, the calibrate extra)"
        ) from exc
    with _INIT_LOCK:
        if not _INITIALISED:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise MeasurementError(f"NVML could not be initialised: {exc}") from exc
            _INITIALISED = True
    return pynvml


def nvml_available() -> bool:
    """True when NVML initialises and sees at least one GPU."""
    try:
        return _pynvml().nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


class NvmlGpu:
    """One GPU seen through NVML.

    ``uuid`` (as torch reports it, with or without the ``GPU-`` prefix) is preferred over
    ``index`` because CUDA_VISIBLE_DEVICES renumbers CUDA devices but not NVML's.
    """

    def __init__(self, index: int = 0, uuid: str | None = None):
        nv = _pynvml()
        self._nv = nv
        handle = None
        self.matched_by = "index"  # "uuid" when torch's UUID found the device in NVML
        if uuid:
            text = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            try:
                handle = nv.nvmlDeviceGetHandleByUUID(text)
                self.matched_by = "uuid"
            except nv.NVMLError:
                handle = None
        if handle is None:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        self.handle = handle
        self.index = index
        self.power_source: str | None = None  # settled by the first power_mw()

    # -- energy and power -------------------------------------------------------------------
    def total_energy_mj(self) -> int:
        """Energy consumed since the driver was loaded, in millijoules (Volta and newer)."""
        return int(self._nv.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def supports_energy_counter(self) -> bool:
        """Whether the total-energy counter can be read on this GPU."""
        try:
            self.total_energy_mj()
            return True
        except self._nv.NVMLError:
            return False

    # Which reading power_mw() returns; settled on its first call (see there).
    POWER_INSTANT = "NVML_FI_DEV_POWER_INSTANT (instantaneous board power)"
    POWER_USAGE = ("nvmlDeviceGetPowerUsage (a ~1 s moving average on Ampere-and-newer GPUs "
                   "other than A100: it lags windows shorter than about 1 s)")

    def power_mw(self) -> int:
        """Board power draw now, in milliwatts.

        ``nvmlDeviceGetPowerUsage`` returns power averaged over 1 s on Ampere (except GA100)
        and newer GPUs (H100, H200, L4, B200), instantaneous power on GA100 and older; a
        trapezoid over 15 ms samples of a 1 s average smears every short window into its
        neighbours. So the instantaneous field (``nvmlDeviceGetFieldValues`` with
        ``NVML_FI_DEV_POWER_INSTANT``, driver 530+) is used where the driver answers it with a
        positive value on the first call, and ``nvmlDeviceGetPowerUsage`` otherwise;
        :attr:`power_source` says which.
        """
        if self.power_source is None:
            try:
                mw = self._instant_power_mw()
            except Exception:  # noqa: BLE001 - field missing in this pynvml or driver
                mw = 0
            if mw > 0:
                self.power_source = self.POWER_INSTANT
                return mw
            self.power_source = self.POWER_USAGE
        if self.power_source == self.POWER_INSTANT:
            return self._instant_power_mw()
        return int(self._nv.nvmlDeviceGetPowerUsage(self.handle))

    def _instant_power_mw(self) -> int:
        nv = self._nv
        field = (nv.NVML_FI_DEV_POWER_INSTANT, getattr(nv, "NVML_POWER_SCOPE_GPU", 0))
        v = nv.nvmlDeviceGetFieldValues(self.handle, [field])[0]
        if v.nvmlReturn != nv.NVML_SUCCESS:
            raise nv.NVMLError(v.nvmlReturn)
        member = _FIELD_VALUE_MEMBER.get(int(v.valueType), "uiVal")
        return int(getattr(v.value, member))

    def default_power_limit_w(self) -> float | None:
        """The board's default power limit (its TDP as shipped), in watts; None if unreadable."""
        return self._try(lambda: self._nv.nvmlDeviceGetPowerManagementDefaultLimit(self.handle) / 1e3)

    # -- conditions ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Conditions worth recording; every value is None when NVML cannot read it."""
        nv, h = self._nv, self.handle

        def _decode(v):
            return v.decode() if isinstance(v, bytes) else v

        cuda_driver = self._try(lambda: nv.nvmlSystemGetCudaDriverVersion())
        return {
            "nvml_name": self._try(lambda: _decode(nv.nvmlDeviceGetName(h))),
            "nvml_matched_by": self.matched_by,
            "nvml_uuid": self.uuid(),
            "driver_version": self._try(lambda: _decode(nv.nvmlSystemGetDriverVersion())),
            "cuda_driver_version": (
                f"{cuda_driver // 1000}.{(cuda_driver % 1000) // 10}" if cuda_driver else None
            ),
            "sm_clock_mhz": self._try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            "mem_clock_mhz": self._try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            "max_sm_clock_mhz": self._try(
                lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)
            ),
            "max_mem_clock_mhz": self._try(
                lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)
            ),
            "temperature_c": self._try(
                lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)
            ),
            "power_limit_w": self._try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3),
            "default_power_limit_w": self.default_power_limit_w(),
        }

    def uuid(self) -> str | None:
        """NVML's UUID of the device (``GPU-...``), None if unreadable."""
        v = self._call("nvmlDeviceGetUUID")
        return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))

    def enforced_power_limit_w(self) -> float | None:
        """The power limit the board enforces now (W): the model's ``p_cap_w``; None if
        unreadable. It can sit below the default limit (``nvidia-smi -pl``, a data centre cap)."""
        return self._try(lambda: self._nv.nvmlDeviceGetEnforcedPowerLimit(self.handle) / 1e3)

    def clock_event_reasons(self) -> int | None:
        """Why clocks are below their maximum now (nvmlClocksEventReasons bitmask; the call was
        named ...ThrottleReasons before driver 535), None if unreadable. See
        :data:`POWER_CAP_REASONS`."""
        v = self._call("nvmlDeviceGetCurrentClocksEventReasons")
        v = self._call("nvmlDeviceGetCurrentClocksThrottleReasons") if v is None else v
        return None if v is None else int(v)

    def compute_processes(self) -> int | None:
        """How many processes hold a compute context on this GPU now, None if unreadable."""
        v = self._call("nvmlDeviceGetComputeRunningProcesses")
        return None if v is None else len(v)

    def _call(self, fn_name: str):
        """``pynvml.<fn_name>(handle)``, None where this pynvml lacks it or NVML refuses."""
        fn = getattr(self._nv, fn_name, None)
        return None if fn is None else self._try(lambda: fn(self.handle))

    def window_conditions(self) -> dict[str, float | None]:
        """The conditions sampled inside each power-state window: SM and memory clocks (MHz),
        temperature (C), clock event reasons (bitmask) and the enforced power limit (W)."""
        nv, h = self._nv, self.handle
        return {
            "sm_clock_mhz": self._try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            "mem_clock_mhz": self._try(lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            "temperature_c": self._try(
                lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            "clock_event_reasons": self.clock_event_reasons(),
            "power_limit_w": self.enforced_power_limit_w(),
        }

    def counter_update_period_s(self, duration_s: float = 0.5) -> float | None:
        """The total-energy counter's real update period (s): read it back to back for
        ``duration_s`` and take the median time between changes of its value. None when it does
        not answer or changed fewer than 3 times (then the ~100 ms NVIDIA documents is assumed
        by the caller)."""
        changes: list[float] = []
        try:
            last = self.total_energy_mj()
            t_end = time.perf_counter() + duration_s
            while time.perf_counter() < t_end:
                v = self.total_energy_mj()
                if v != last:
                    changes.append(time.perf_counter())
                    last = v
        except self._nv.NVMLError:
            return None
        if len(changes) < 3:
            return None
        gaps = sorted(b - a for a, b in zip(changes, changes[1:], strict=False))
        return float(gaps[len(gaps) // 2])

    def _try(self, fn):
        try:
            return fn()
        except self._nv.NVMLError:
            return None


def visible_gpu(cuda_index: int = 0, env: dict | None = None) -> NvmlGpu:
    """The GPU CUDA will call ``cuda:<cuda_index>``, found through NVML alone (no CUDA context:
    what the deep-idle window needs). ``CUDA_VISIBLE_DEVICES`` is honoured where it lists
    indices or full UUIDs; otherwise NVML's index is taken, which matches CUDA's numbering
    unless ``CUDA_DEVICE_ORDER`` differs from PCI order on a mixed machine (callers compare
    the UUID with torch's afterwards). MeasurementError when NVML is unusable."""
    env = os.environ if env is None else env
    _pynvml()
    entries = [e.strip() for e in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",") if e.strip()]
    if not entries:
        return NvmlGpu(cuda_index)
    if cuda_index >= len(entries):
        raise MeasurementError(f"CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} shows no "
                               f"device {cuda_index}")
    entry = entries[cuda_index]
    if entry.isdigit():
        return NvmlGpu(int(entry))
    if entry.startswith("GPU-"):
        gpu = NvmlGpu(cuda_index, entry)
        if gpu.matched_by == "uuid":
            return gpu
    raise MeasurementError(f"CUDA_VISIBLE_DEVICES entry {entry!r} names no GPU NVML can find "
                           "(a full GPU-... UUID or an index is needed)")
