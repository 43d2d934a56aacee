"""The conditions recorded with every measured point: hardware, software versions, clocks,
temperature, power limit, the machine's load and the meters used. Versions are read with importlib.metadata, so
this module imports neither torch nor bitsandbytes itself."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any


def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_attrs(device, monitor=None, purpose: str = "calibration") -> dict[str, Any]:
    """Attributes common to every point measured on ``device`` with ``monitor``.

    Clocks (MHz), temperature (C) and power limit (W) are read now, at the point's start.
    """
    info = device.describe()
    attrs: dict[str, Any] = {
        "hardware": device.name,
        "backend": device.backend,
        "device": info.get("device_string"),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "bitsandbytes": package_version("bitsandbytes"),
        "accelerate": package_version("accelerate"),
        "python": platform.python_version(),
        "cuda": info.get("cuda_version"),
        "driver": info.get("driver_version"),
        # CUDA GPUs: NVML's own name for the device and whether NVML found it by torch's UUID
        # ("uuid") or only by index ("index": wrong GPU possible under CUDA_VISIBLE_DEVICES)
        "nvml_name": info.get("nvml_name"),
        "nvml_matched_by": info.get("nvml_matched_by"),
        "nvml_uuid": info.get("nvml_uuid"),
        "clocks": {
            "sm_mhz": info.get("sm_clock_mhz"),
            "mem_mhz": info.get("mem_clock_mhz"),
            "max_sm_mhz": info.get("max_sm_clock_mhz"),
            "max_mem_mhz": info.get("max_mem_clock_mhz"),
        },
        "temperature_c": info.get("temperature_c"),
        "power_limit_w": info.get("power_limit_w"),
        "memory_bytes": info.get("memory_bytes"),
        "logical_cores": info.get("logical_cores"),
        "torch_threads": info.get("torch_threads"),
        "purpose": purpose,
        **load_attrs(),  # what else ran: calibration.contention turns it into a verdict
    }
    if monitor is not None:
        attrs["meters"] = list(monitor.meter_names)
        attrs["tdp_w"] = monitor.tdp_w
        attrs["hli_assumption"] = monitor.hli_assumption
    return attrs


def load_attrs() -> dict[str, float]:
    """The 1- and 5-minute load averages now (runnable threads, all processes), or {}."""
    try:
        one, five, _ = os.getloadavg()
    except (OSError, AttributeError):
        return {}
    return {"load_1m": float(one), "load_5m": float(five)}
