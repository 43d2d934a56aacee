"""``qtsim calibrate`` and ``qtsim fit``'s work: measure this machine, fit, write the profile.

:func:`calibrate_device` measures a GPU (or the CPU) and fits a hardware profile;
:func:`calibrate_host` measures the host part only; :func:`refit` fits a profile from recorded
raw HDF5 (no torch). Summaries go to ``echo``, measurement progress to ``log``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qtsim.calibration.fit.host_part import build_host_part
from qtsim.calibration.fit.profile_builder import build_profile
from qtsim.calibration.measure import device as device_mod
from qtsim.calibration.measure import energy
from qtsim.calibration.measure.energy import rapl_status
from qtsim.calibration.measure.raw import RawStore
from qtsim.calibration.probes import plan as plan_mod
from qtsim.calibration.probes import runner
from qtsim.calibration.probes.contention import contention_lines, with_drift_probes
from qtsim.calibration.probes.host import host_plan
from qtsim.calibration.probes.power_states import deep_idle_device, measure_deep_idle
from qtsim.errors import QtsimError, UnknownNameError, suggest
from qtsim.profiles import gpus
from qtsim.profiles.files import user_profile_dir
from qtsim.profiles.hardware import write_profile
from qtsim.profiles.hosts import write_host
from qtsim.report.budget import energy_scope, profile_energy_scope
from qtsim.report.grid import refuse_existing

#: the constants the fit summary prints, when the profile has them
SUMMARY_CONSTANTS = ("mem_bw_gbs", "h_op_s", "h_step_s", "t_step_s", "t_layer_s",
                     "t_call_fp16_b1_s", "t_call_nf4_b1_s", "t_call_int8_b1_s",
                     "p_idle_w", "p_awake_w", "e_byte_j", "e_flop_j", "p_cap_w")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def fit_lines(prof, fit, out) -> list[str]:
    """The fit summary: per stage MAPE and information criteria, key constants, notes."""
    lines = [f"profile {prof.name} ({prof.provenance['device']}) -> {out}"]
    lines += [f"  {s.name:13s} {s.n_points:4d} points  fit MAPE {100 * s.mape:5.1f}%  "
              f"max {100 * s.max_ape:5.1f}%  AIC {s.aic:8.1f}  BIC {s.bic:8.1f}"
              for s in fit.stages if s.n_points]

    lines.append(f"  energy: {profile_energy_scope(prof)} (method: {fit.energy_method})")
    for k in SUMMARY_CONSTANTS:
        if k in prof.physical:
            p = prof.physical[k]
            lines.append(f"  {k:18s} {p.value:.4g} ± {p.stderr:.2g} {p.unit} ({p.source})")
    lines += [f"  note: {n}" for n in fit.notes]
    lines += identification_lines(prof)
    return lines


def identification_lines(prof) -> list[str]:
    """Warnings a calibrated profile must not be written without: a disturbed machine
    (``[fit.contention]``) and constants the data did not identify (``[fit.unidentified]``)."""
    out = []
    cont = prof.fit.get("contention")
    if cont:
        out += [f"  {x}" for x in contention_lines(cont)]
    bad = prof.fit.get("unidentified") or {}
    if bad:
        out.append(f"  WARNING: {len(bad)} constant(s) not identified by these measurements "
                   "(marked in the profile and in `qtsim profiles show`; predictions that lean "
                   "on them carry wide bands):")
        out += [f"    {k}: {why}" for k, why in bad.items()]
    return out


def refit(raw, out=None, name=None, host_part=None, lumped: bool = False, echo=print,
          force: bool = False):
    """``qtsim fit``: fit a profile from recorded ``raw`` HDF5 and write it (default next to
    ``raw``; an existing file only with ``force``); returns the profile and the fit."""
    out = out or str(Path(raw).with_suffix(".toml"))
    refuse_existing(out, force, "--out")
    prof, result = build_profile(raw, name, "lumped" if lumped else "inventory", host_part)
    write_profile(prof, out)
    for line in fit_lines(prof, result, out):
        echo(line)
    return prof, result


def check_gpu_name(gpu: str) -> None:
    """An unknown --gpu is a naming mistake: say so before looking for CUDA."""
    key = gpu.strip().lower()
    known = {"cpu", *gpus.known_names()}
    if key not in known:
        raise UnknownNameError(
            f"unknown GPU {gpu!r}{suggest(gpu, known)}; calibrate takes a known GPU name "
            "(qtsim profiles list), 'cuda' for whatever GPU is visible, or 'cpu'")


def same_threads_on_resume(raw, cpu_threads, log=_stderr) -> None:
    """A resumed CPU calibration keeps the thread count its stored points were measured with."""
    import torch

    stored = next((int(p.attrs["torch_threads"]) for p in RawStore(raw, readonly=True).points()
                   if p.attrs.get("torch_threads")), None)
    if stored is None:
        return
    if cpu_threads is None:
        torch.set_num_threads(stored)
        log(f"resuming with {stored} torch threads, as the stored points were measured")
    elif cpu_threads != stored:
        raise QtsimError(f"{raw} was measured with {stored} torch threads; resuming with "
                         f"--cpu-threads {cpu_threads} would mix the two in one fit: resume with "
                         f"--cpu-threads {stored}, or start a new --out")


def _fresh_raw(raw: Path, resume: bool) -> None:
    if raw.exists() and not resume:
        raise QtsimError(f"{raw} exists: pass --resume to continue it, or choose another --out")


def _deep_idle_first(gpu: str, name, out: Path, resume: bool, power_window_s: float, log):
    """A GPU's deep-idle windows, before anything opens a CUDA context in this process, into
    OUT/NAME-calibration.h5 (NAME: ``name``, else the GPU as NVML names it); that file, or
    None when NVML is unusable (then nothing was measured)."""
    try:  # importing torch opens no context; a build without CUDA is refused just after
        import torch
    except ImportError:
        return None
    if torch.version.cuda is None:
        return None
    dev = deep_idle_device(gpu, log=log)
    if dev is None:
        return None
    raw = out / f"{name or dev.name}-calibration.h5"
    _fresh_raw(raw, resume)
    out.mkdir(parents=True, exist_ok=True)
    measure_deep_idle(RawStore(raw), dev, window_s=power_window_s, log=log)
    return raw


def energy_meter_line(device, monitor) -> str:
    """Which meter will see this device's energy, in words: on a CPU whether RAPL is there."""
    if device.backend != "cpu":
        return f"meters: {', '.join(monitor.meter_names)}"

    ok, status = rapl_status()
    return f"meters: {', '.join(monitor.meter_names)}; {status}: {energy_scope('cpu', 'rapl' if ok else 'hli')}"


def calibrate_device(gpu: str, out_dir, name=None, *, resume=False, quick=False, tdp_w=None,
                     cpu_threads=None, install=False, rotate=None, progress=True,
                     power_window_s: float = 5.0, echo=print, log=_stderr):
    """``qtsim calibrate --gpu``: measure the plan on this device into OUT/NAME-calibration.h5
    (resumable; on a GPU the deep-idle windows come first, before any CUDA context), fit, write
    OUT/NAME.toml (and with ``install`` the user profile directory)."""
    check_gpu_name(gpu)
    cpu = gpu.strip().lower() == "cpu"
    if cpu_threads is not None and not cpu:
        raise QtsimError("--cpu-threads applies to --gpu cpu only")
    out = Path(out_dir)
    if power_window_s < 5.0:
        log(f"power-state windows of {power_window_s:g} s: shorter than 5 s, NVML's ~0.1 s "
            "counter updates weigh on every power constant")
    idle_raw = None if cpu else _deep_idle_first(gpu, name, out, resume, power_window_s, log)
    device = device_mod.detect_device(gpu, cpu_threads=cpu_threads)
    name = name or device.name
    raw = out / f"{name}-calibration.h5"
    if idle_raw is None:
        _fresh_raw(raw, resume)
    elif idle_raw != raw:  # NVML and CUDA name device 0 differently: not the same GPU
        log(f"deep idle was measured on the GPU NVML lists first ({idle_raw.name}), not on "
            f"CUDA's {device.name}: it stays in {idle_raw}, unused")
        _fresh_raw(raw, resume)
    if raw.exists() and device.backend == "cpu":
        same_threads_on_resume(raw, cpu_threads, log)
    out.mkdir(parents=True, exist_ok=True)
    monitor = energy.EnergyMonitor(device, tdp_w=tdp_w if device.backend == "cpu" else None)

    plan = with_drift_probes(plan_mod.calibration_plan(device, quick=quick, rotate=rotate,
                                                       power_window_s=power_window_s))
    log(f"calibrating {device.name} ({device.describe().get('device_string')}): "
        f"{len(plan)} points, about {plan_mod.estimate_plan_s(plan, device) / 60:.1f} min; "
        f"{energy_meter_line(device, monitor)}")
    report = runner.run_plan(plan, RawStore(raw), device, monitor, progress=progress)
    log(f"measured: {report.line()} -> {raw}")
    prof, result = build_profile(raw, name)
    path = write_profile(prof, out / f"{name}.toml")
    for line in fit_lines(prof, result, path):
        echo(line)
    if install:
        dest = write_profile(prof, user_profile_dir() / f"{name}.toml")
        echo(f"installed: {dest} (qtsim trap --gpu {name} ...)")
    return prof


def calibrate_host(out_dir, name=None, *, resume=False, cpu_threads=None, install=False,
                   progress=True, echo=print, log=_stderr):
    """``qtsim calibrate --host``: tiny-width decodes on every path, then the host-part fit
    (OUT/NAME.h5, OUT/NAME.toml)."""

    device = device_mod.detect_device("cpu", cpu_threads=cpu_threads)
    name = name or f"{device.name}-host"
    out = Path(out_dir)
    raw = out / f"{name}.h5"
    _fresh_raw(raw, resume)
    out.mkdir(parents=True, exist_ok=True)
    plan = host_plan(device)
    log(f"host calibration on {device.describe().get('device_string')}: {len(plan)} tiny "
        f"decodes, about {plan_mod.estimate_plan_s(plan, device) / 60:.1f} min")
    report = runner.run_plan(plan, RawStore(raw), device, energy.EnergyMonitor(device),
                             progress=progress)
    log(f"measured: {report.line()} -> {raw}")
    part, st = build_host_part(str(raw), name)
    path = write_host(part, out / f"{name}.toml")
    echo(f"host part {part.name} ({part.host.get('cpu')}) -> {path}")
    echo(f"  host fit {st.n_points:4d} points  fit MAPE {100 * st.mape:5.1f}%  "
         f"max {100 * st.max_ape:5.1f}%  AIC {st.aic:8.1f}")
    for k, p in sorted(part.physical.items()):
        echo(f"  {k:22s} {p.value:.4g} ± {p.stderr:.2g} {p.unit}  ({p.source})")
    if install:
        dest = write_host(part, user_profile_dir() / "hosts" / f"{name}.toml")
        echo(f"installed: {dest} (qtsim trap --host {name} ...)")
    return part
