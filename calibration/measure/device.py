"""The device being measured, behind a small interface: the CPU or one CUDA GPU.

``detect_device("cpu")`` gives this machine's CPU; ``detect_device("h100")`` gives the visible
CUDA GPU if it is an H100 and refuses otherwise, with a one-line :class:`QtsimError` (GPU names,
aliases and device strings: :mod:`qtsim.profiles.gpus`).
Importing this module does not import torch; torch loads inside the methods that need it.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from qtsim.calibration.measure.energy import rapl_power_limit_w
from qtsim.calibration.measure.nvml import NvmlGpu
from qtsim.errors import QtsimError
from qtsim.profiles.gpus import ANY_CUDA, accepted_names, normalise_gpu_name


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _meminfo_bytes(key: str = "MemTotal") -> int | None:
    text = _read_text("/proc/meminfo") or ""
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def cpu_model_name() -> str:
    """CPU model string from /proc/cpuinfo (or platform.processor())."""
    text = _read_text("/proc/cpuinfo") or ""
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    if m:
        return m.group(1).strip()

    return platform.processor() or "unknown cpu"


@dataclass
class Device(ABC):
    """A measurable device. ``name`` is qtsim's normalised hardware name."""

    backend: str  # "cpu" | "cuda"
    name: str
    index: int = 0
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def torch_device(self) -> str:
        """The torch device string ("cpu" or "cuda:<index>")."""
        return "cpu" if self.backend == "cpu" else f"cuda:{self.index}"

    @abstractmethod
    def synchronize(self) -> None:
        """Block until queued work on the device has finished."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Readable conditions: device string, cores, driver, CUDA, clocks (MHz), temperature
        (C), power limit (W). Unreadable values are None."""

    @abstractmethod
    def memory_bytes(self) -> int | None:
        """Total device memory in bytes (system RAM for the CPU)."""

    def tdp_w(self) -> float | None:
        """The device's rated power (TDP) in watts when the device itself reports one."""
        return None


@dataclass
class CpuDevice(Device):
    """This machine's CPU(s), as torch's CPU backend uses them."""

    backend: str = "cpu"
    name: str = "cpu"

    def synchronize(self) -> None:
        """CPU work is synchronous: nothing to wait for."""

    def logical_cores(self) -> int:
        return os.cpu_count() or 1

    def describe(self) -> dict[str, Any]:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:  # pragma: no cover
            threads = None
        mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", _read_text("/proc/cpuinfo") or "", re.M)
        max_khz = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        return {
            "device_string": cpu_model_name(),
            "backend": "cpu",
            "hardware": self.name,
            "logical_cores": self.logical_cores(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch_threads": threads,
            "memory_bytes": self.memory_bytes(),
            "driver_version": None,
            "cuda_version": None,
            "sm_clock_mhz": float(mhz.group(1)) if mhz else None,
            "mem_clock_mhz": None,
            "max_sm_clock_mhz": int(max_khz) / 1000 if max_khz and max_khz.strip().isdigit() else None,
            "temperature_c": None,
            "power_limit_w": rapl_power_limit_w(),  # RAPL's PL1 where readable
        }

    def memory_bytes(self) -> int | None:
        return _meminfo_bytes("MemTotal")


@dataclass
class CudaDevice(Device):
    """One CUDA GPU; NVML (through :mod:`qtsim.calibration.measure.nvml`) supplies its conditions."""

    backend: str = "cuda"
    name: str = "unknown-gpu"
    device_string: str = ""

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize(self.index)

    def nvml(self):
        """The :class:`NvmlGpu` for this device (cached), or None when NVML is unusable."""
        if "nvml" not in self._cache:
            try:
                import torch

                uuid = getattr(torch.cuda.get_device_properties(self.index), "uuid", None)
                self._cache["nvml"] = NvmlGpu(self.index, str(uuid) if uuid else None)
            except Exception as exc:  # noqa: BLE001 - NVML missing or failing: record None
                self._cache["nvml"] = None
                self._cache["nvml_error"] = (str(exc).splitlines() or [type(exc).__name__])[0]
        return self._cache["nvml"]

    @property
    def nvml_error(self) -> str | None:
        """Why :meth:`nvml` gave None (first line of the error), else None."""
        return self._cache.get("nvml_error")

    def describe(self) -> dict[str, Any]:
        import torch

        props = torch.cuda.get_device_properties(self.index)
        out: dict[str, Any] = {
            "device_string": torch.cuda.get_device_name(self.index),
            "backend": "cuda",
            "hardware": self.name,
            "sm_count": getattr(props, "multi_processor_count", None),
            "compute_capability": f"{props.major}.{props.minor}",
            "memory_bytes": int(props.total_memory),
            "cuda_version": torch.version.cuda,
            "driver_version": None,
            "sm_clock_mhz": None,
            "mem_clock_mhz": None,
            "temperature_c": None,
            "power_limit_w": None,
        }
        gpu = self.nvml()
        if gpu is not None:
            out.update(gpu.info())
        return out

    def memory_bytes(self) -> int | None:
        import torch

        return int(torch.cuda.get_device_properties(self.index).total_memory)

    def tdp_w(self) -> float | None:
        gpu = self.nvml()
        return gpu.default_power_limit_w() if gpu is not None else None


@dataclass
class NvmlOnlyDevice(Device):
    """A GPU seen through NVML alone, before this process opens a CUDA context on it: what the
    deep-idle power window measures (:mod:`qtsim.calibration.probes.power_states`). Nothing can be
    queued on it, so :meth:`synchronize` has nothing to wait for."""

    backend: str = "cuda"
    name: str = "unknown-gpu"
    gpu: Any = None  # the NvmlGpu

    def synchronize(self) -> None:
        """No context, no queued work."""

    def nvml(self):
        return self.gpu

    nvml_error = None

    def describe(self) -> dict[str, Any]:
        info = self.gpu.info()
        return {"device_string": info.get("nvml_name"), "backend": "cuda",
                "hardware": self.name, "cuda_version": None, **info}

    def memory_bytes(self) -> int | None:
        return None

    def tdp_w(self) -> float | None:
        return self.gpu.default_power_limit_w()


MEASUREMENT_PACKAGES = ("torch", "transformers", "bitsandbytes")


def require_measurement_stack() -> None:
    """One-line error unless the ``calibrate`` extra (torch, transformers, bitsandbytes) is here."""
    missing = [m for m in MEASUREMENT_PACKAGES if importlib.util.find_spec(m) is None]
    if missing:
        raise QtsimError(f"measuring needs {', '.join(missing)}: pip install 'qtsim[calibrate]' "
                         "(planner commands work without it)")


def detect_device(requested: str, index: int = 0, cpu_threads: int | None = None) -> Device:
    """The device for ``--gpu requested``: "cpu" for this CPU, else a GPU name or alias.

    ``cpu_threads`` (CPU only) sets torch's intra-op threads; None keeps torch's default.
    On small shared virtual machines one thread measures far more steadily (with 2 threads
    on 2 vCPUs, a descheduled worker stalls whole windows for up to a second).
    Raises :class:`QtsimError` (one line) when a GPU is requested but CUDA is not visible, or
    when the visible GPU is not the requested one.
    """
    require_measurement_stack()
    req = requested.strip().lower()
    if req == "cpu":
        if cpu_threads is not None:
            if cpu_threads < 1:
                raise QtsimError(f"cpu threads must be >= 1, got {cpu_threads}")
            import torch

            torch.set_num_threads(cpu_threads)
        return CpuDevice()
    import torch

    if not torch.cuda.is_available():
        raise QtsimError(
            f"--gpu {requested} requested but no CUDA device is visible "
            "(torch.cuda.is_available() is False); use --gpu cpu to calibrate this CPU"
        )
    if index >= torch.cuda.device_count():
        raise QtsimError(
            f"--gpu {requested} requested on CUDA device {index} but only "
            f"{torch.cuda.device_count()} are visible"
        )
    # Make ``index`` current so work placed on plain "cuda" (library workspaces, kernels
    # launched on the current device) lands on the device being measured.
    torch.cuda.set_device(index)
    device_string = torch.cuda.get_device_name(index)
    detected = normalise_gpu_name(device_string)
    if req not in ANY_CUDA and detected not in accepted_names(req):
        raise QtsimError(
            f"--gpu {requested} requested but the visible GPU is {device_string!r} "
            f"({detected}); use --gpu {detected}"
        )
    return CudaDevice(name=detected, index=index, device_string=device_string)
