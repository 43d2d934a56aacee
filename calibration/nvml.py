"""The one module that touches NVML (``pynvml`` from nvidia-ml-py), imported lazily.

Everything NVIDIA-management related that qtsim reads goes through :class:`NvmlGpu`: the
total-energy counter (mJ, Volta and newer), instantaneous board power (mW), and the conditions
recorded with every measurement (driver version, clocks in MHz, temperature in C, power limits
in W). Nothing here imports torch.
"""

from __future__ import annotations

import threading
from typing import Any

from qtsim.errors import MeasurementError

_INIT_LOCK = threading.Lock()
_INITIALISED = False

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

    def _try(self, fn):
        try:
            return fn()
        except self._nv.NVMLError:
            return None
