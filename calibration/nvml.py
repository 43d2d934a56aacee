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
        if uuid:
            text = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
            try:
                handle = nv.nvmlDeviceGetHandleByUUID(text)
            except nv.NVMLError:
                handle = None
        if handle is None:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        self.handle = handle
        self.index = index

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

    def power_mw(self) -> int:
        """Board power draw now, in milliwatts (NVML averages it over a short period)."""
        return int(self._nv.nvmlDeviceGetPowerUsage(self.handle))

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
