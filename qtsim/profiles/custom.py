"""Spec-derived profiles for any GPU from five datasheet numbers (``qtsim profiles new``).

:func:`new_spec_profile` checks each number, builds a row in the shape of
``data/reference/gpu_specs.csv`` and hands it to :func:`qtsim.profiles.priors.spec_profile`, so a user's
profile carries exactly the priors, stderr and flags of the shipped spec profiles.
:func:`save_user_profile` writes it atomically into the user profile directory.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from qtsim.errors import QtsimError
from qtsim.profiles.files import user_profile_dir
from qtsim.profiles.hardware import list_profiles, write_profile
from qtsim.profiles.priors import spec_profile
from qtsim.profiles.profile import HardwareProfile
from qtsim.profiles.schema import DATASHEET

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: argument -> (option, its ``[hardware]`` key, whose unit and plausible range
#: :data:`qtsim.profiles.schema.DATASHEET` states)
OPTIONS = {
    "memory_gib": ("--memory-gib", "memory_gib"),
    "bandwidth_gbs": ("--bandwidth-gbs", "mem_bw_gbs"),
    "fp16_tflops": ("--fp16-tflops", "fp16_tflops"),
    "int8_tops": ("--int8-tops", "int8_tops"),
    "tdp_w": ("--tdp-w", "tdp_w"),
}
MEMORY_TYPES = ("hbm", "gddr")


def check_number(key: str, value) -> float:
    """``value`` as a float inside the plausible range of ``key``, else a one-line error."""
    opt, hw_key = OPTIONS[key]
    unit, lo, hi = DATASHEET[hw_key]
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise QtsimError(f"{opt} {value!r} is not a number") from None
    if not math.isfinite(x) or x <= 0:
        raise QtsimError(f"{opt} {value!r} must be a positive number ({unit})")
    if not lo <= x <= hi:
        raise QtsimError(f"{opt} {x:g} {unit} is outside {lo:g}-{hi:g} {unit}: "
                         "check the datasheet figure (dense, not sparse)")
    return x


def check_name(name: str) -> str:
    key = str(name).strip().lower()
    if not NAME_RE.match(key):
        raise QtsimError(f"profile name {name!r}: use 1-64 lowercase letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return key


def new_spec_profile(name: str, memory_gib, bandwidth_gbs, fp16_tflops, int8_tops, tdp_w,
                     architecture: str = "unknown", memory_type: str | None = None,
                     source: str = "", segment: str = "datacenter") -> HardwareProfile:
    """A spec-derived profile from datasheet numbers (dense tensor throughput, not sparse).

    Units: ``memory_gib`` GiB, ``bandwidth_gbs`` GB/s, ``fp16_tflops`` dense FP16 tensor
    TFLOPS, ``int8_tops`` dense INT8 tensor TOPS, ``tdp_w`` W. ``memory_type`` hbm or gddr picks
    is recorded (default: hbm from 1500 GB/s up, else gddr); ``segment`` (datacenter,
    workstation, desktop) picks the awake-power form (:func:`qtsim.model.power.awake_power_w`).
    """
    key = check_name(name)
    v = {k: check_number(k, x) for k, x in (("memory_gib", memory_gib),
                                            ("bandwidth_gbs", bandwidth_gbs),
                                            ("fp16_tflops", fp16_tflops),
                                            ("int8_tops", int8_tops), ("tdp_w", tdp_w))}
    if memory_type is None:
        memory_type = "hbm" if v["bandwidth_gbs"] >= 1500 else "gddr"
    if str(memory_type).lower() not in MEMORY_TYPES:
        raise QtsimError(f"--memory-type {memory_type!r}: choose hbm or gddr")
    arch = str(architecture or "unknown").strip() or "unknown"
    row = {
        "gpu": key, "architecture": arch,
        "memory_gb": v["memory_gib"] * 2**30 / 1e9, "mem_bw_gbs": v["bandwidth_gbs"],
        "fp16_dense_tflops": v["fp16_tflops"], "int8_dense_tops": v["int8_tops"],
        "fp8_dense_tflops": "", "fp4_dense_tflops": "", "tdp_w": v["tdp_w"],
        "native_low_precision": "int8", "memory_type": str(memory_type).lower(),
        "segment": segment,
        "source": source or "user-entered datasheet figures (qtsim profiles new)",
    }
    prof = spec_profile(row)
    prof.provenance["device"] = f"{key} (user-entered datasheet figures)"
    return prof


def save_user_profile(profile: HardwareProfile, force: bool = False,
                      directory: str | Path | None = None) -> Path:
    """Write ``profile`` to the user directory as NAME.toml; refuse to replace a file, or to
    shadow a shipped profile of the same name, unless ``force``."""
    d = Path(directory) if directory else user_profile_dir()
    d.mkdir(parents=True, exist_ok=True)  # the user directory need not exist yet
    path = d / f"{profile.name}.toml"
    if not force:
        if path.exists():
            raise QtsimError(f"{path} exists; pass --force to replace it")
        shipped = {r["name"] for r in list_profiles() if r["origin"] == "shipped"}
        if profile.name in shipped:
            raise QtsimError(f"{profile.name!r} is a shipped profile; a user profile of that name "
                             "would shadow it: pick another name or pass --force")
    return write_profile(profile, path)
