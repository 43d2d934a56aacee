"""Turn recorded raw HDF5 into a calibrated hardware profile (fit + hardware facts). No torch."""

from __future__ import annotations

import json
import json as _json
import os
from pathlib import Path

import numpy as np

from qtsim.calibration.fit.measured import (
    FitResult,
    compute_dtype_4bit,
    fit_frame,
    profile_from_fit,
)
from qtsim.calibration.measure.raw import RawStore
from qtsim.calibration.probes.contention import contention_report
from qtsim.errors import FitError, UnknownNameError
from qtsim.model import physical
from qtsim.model.architecture import from_config
from qtsim.profiles.constants import paper_constants_table
from qtsim.profiles.hardware import load_profile, unidentified_constants
from qtsim.profiles.hosts import HostPart, load_host
from qtsim.profiles.profile import HardwareProfile


def _first(frame, col, default=None):
    if col in frame and frame[col].notna().any():
        return frame[col].dropna().iloc[0]
    return default


def hardware_facts(frame) -> dict:
    """The ``[hardware]`` table: the shipped spec profile's for a known GPU, measured for a CPU."""
    name = str(_first(frame, "hardware", "unknown"))
    backend = str(_first(frame, "backend", "cpu"))
    if backend == "cuda":
        try:
            hw = dict(load_profile(name).hardware)
        except UnknownNameError:
            hw = {"name": name, "device_type": "cuda", "memory_gib": 0, "tdp_w": 0}
        limit = _first(frame, "power_limit_w")
        if limit and not hw.get("tdp_w"):
            hw["tdp_w"] = float(limit)
        if not hw.get("memory_gib"):
            raise FitError(f"{name}: unknown GPU memory size; add it to a spec profile first")
        return hw
    mem = _first(frame, "memory_bytes")
    if mem is None:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    tdp = float(_first(frame, "tdp_w", 0) or 0)
    if tdp <= 0:
        raise FitError("the raw data records no TDP for the HLI energy estimate")
    cores = _first(frame, "logical_cores")
    return {"name": name, "aliases": [], "vendor": "", "architecture": "cpu",
            "device_type": "cpu", "memory_gib": round(float(mem) / 2**30, 2), "tdp_w": tdp,
            "idle_w": 0.0, "native_formats": ["fp32", "bf16", "fp16"], "native_dtype": "fp16",
            "runtime_overhead_gib": 0.0, "logical_cores": int(cores) if cores else 0,
            "cpu_threads": int(_first(frame, "torch_threads", 0) or 0),
            "sources": [f"measured host: {_first(frame, 'device', 'cpu')}; TDP: "
                        f"{_first(frame, 'hli_assumption', 'assumed')}"]}


def runtime_overhead_bytes(frame) -> float | None:
    """Memory a decode needs beyond weights, KV cache and workspace (runtime, allocator, and on
    the CPU the interpreter): the median over calibration decodes, or None if none recorded it."""
    if "peak_memory_bytes" not in frame:
        return None
    dec = frame[(frame["kind"] == "decode") & frame["peak_memory_bytes"].notna()]
    resid = []
    for _, r in dec.iterrows():
        c = from_config(json.loads(r["config_json"])).counts()
        dq = bool(r.get("bnb_4bit_use_double_quant") or False)
        pred = physical.peak_memory_bytes(c, str(r["precision"]), float(r["batch"]),
                                          float(r["new_tokens"]), float(r["prompt_len"]), dq, 0.0)
        resid.append(float(r["peak_memory_bytes"]) - float(pred))
    return max(float(np.median(resid)), 0.0) if resid else None


def build_profile(raw_path: str | os.PathLike, name: str | None = None,
                  mode: str = "inventory", host_part=None) -> tuple[HardwareProfile, FitResult]:
    """Fit every usable point in ``raw_path`` (calibration points only) into a profile
    (``mode``: stage 2 in ``inventory`` or ``lumped`` form, :func:`fit_frame`; ``host_part``:
    a host part from ``qtsim calibrate --host`` on this machine, a :class:`~qtsim.profiles.hosts.HostPart`
    or its file, whose ``h_op_s`` is held in stage 2)."""
    h_op_prior = None
    if host_part is not None:
        hp = host_part if isinstance(host_part, HostPart) else load_host(str(host_part))
        h_op_prior = (hp.physical["h_op_s"].value, f"host part {hp.path or hp.name}")
    store = RawStore(raw_path, readonly=True)
    frame = store.summary_frame()
    contention = contention_report(frame) if len(frame) else None
    if len(frame) and "purpose" in frame:
        attrs = dict(frame.attrs)  # dropped/skipped notes survive the selection
        frame = frame[frame["purpose"].fillna("calibration") == "calibration"].copy()
        frame.attrs.update(attrs)
    if len(frame) == 0:
        raise FitError(f"{raw_path}: no usable calibration points")
    hw = hardware_facts(frame)
    hw["device_name"] = str(_first(frame, "hardware", hw["name"]))  # what detect_device matches
    if name:
        hw["name"] = name
    fit = fit_frame(frame, float(hw["tdp_w"]), str(_first(frame, "hli_assumption", "")), mode,
                    h_op_prior)
    if fit.mode == "inventory":
        hw["t_call_includes_dispatch"] = True  # stage 1's t_call was timed on the same thread
    hw["compute_dtype_4bit"] = compute_dtype_4bit(frame)
    overhead = runtime_overhead_bytes(frame)
    if overhead is not None:
        hw["runtime_overhead_gib"] = round(overhead / 2**30, 4)
        fit.notes.append(f"runtime_overhead_gib = {overhead / 2**30:.3f}: median of measured peak "
                         f"memory minus weights, KV cache and workspace over the calibration decodes "
                         f"({_first(frame, 'peak_memory_kind', 'peak memory')})")
    versions = {k: _first(frame, k) for k in ("torch", "transformers", "bitsandbytes", "cuda")}
    prof = profile_from_fit(fit, frame, hw, str(Path(raw_path)), str(_first(frame, "device", hw["name"])),
                            str(_first(frame, "driver", "") or ""), versions)
    base = frame[frame["kind"] == "decode"].sort_values("model")
    if len(base):
        ref = base.iloc[0]
        prof.constants = paper_constants_table(
            prof, from_config(_json.loads(ref["config_json"])).counts(), str(ref["model"]))
    prof.provenance["calibrated_points"] = sorted(  # decodes: what validation must hold out
        {f"decode:{r['model']}:b{int(r['batch'])}" for _, r in frame.iterrows() if r.get("kind") == "decode"})
    mark_identification(prof, contention)
    return prof, fit


def mark_identification(prof: HardwareProfile, contention: dict | None) -> None:
    """Record in ``[fit]`` how far the calibration can be trusted: the machine's disturbance
    (``contention``: :func:`qtsim.calibration.probes.contention.contention_report`) and the constants
    the data did not identify (:func:`qtsim.profiles.hardware.unidentified_constants`), so the
    profile says so wherever it is shown, not only when it was written."""
    if contention is not None:
        prof.fit["contention"] = {k: v for k, v in contention.items() if k != "lines"}
    bad = unidentified_constants(prof)
    if bad:
        prof.fit["unidentified"] = bad
