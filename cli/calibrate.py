"""``qtsim calibrate`` and ``qtsim fit``."""

from __future__ import annotations

import click


def _report_fit(prof, fit, out):
    click.echo(f"profile {prof.name} ({prof.provenance['device']}) -> {out}")
    for s in fit.stages:
        if s.n_points:
            click.echo(f"  {s.name:13s} {s.n_points:4d} points  fit MAPE {100 * s.mape:5.1f}%  "
                       f"max {100 * s.max_ape:5.1f}%  AIC {s.aic:8.1f}  BIC {s.bic:8.1f}")
    click.echo(f"  energy method: {fit.energy_method}")
    for k in ("mem_bw_gbs", "h_op_s", "h_step_s", "t_step_s", "t_layer_s", "t_call_fp16_b1_s",
              "t_call_nf4_b1_s", "t_call_int8_b1_s"):
        if k in prof.physical:
            p = prof.physical[k]
            click.echo(f"  {k:18s} {p.value:.4g} ± {p.stderr:.2g} {p.unit}")
    for n in fit.notes:
        click.echo(f"  note: {n}")


@click.command()
@click.argument("raw", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Profile TOML to write (default: next to RAW).")
@click.option("--name", help="Profile name (default: the hardware recorded in RAW).")
@click.option("--host-part", type=click.Path(exists=True, dir_okay=False),
              help="A host part from `qtsim calibrate --host` on the same machine: its h_op_s is "
                   "held, and the 16-bit paths' in-model per-call cost is fitted too.")
@click.option("--lumped", is_flag=True,
              help="Fit the older per-family per-layer floors instead of the traced host constants (for comparison).")
def fit(raw, out, name, host_part, lumped):
    """Refit a hardware profile from recorded raw HDF5 (no torch, no measuring).

    \b
    Example:
      qtsim fit data/raw/cpu-calibration.h5 --out my-cpu.toml
    """
    from pathlib import Path

    from qtsim.calibration.profile_builder import build_profile
    from qtsim.profiles.hardware import write_profile

    prof, result = build_profile(raw, name, "lumped" if lumped else "inventory", host_part)
    out = out or str(Path(raw).with_suffix(".toml"))
    write_profile(prof, out)
    _report_fit(prof, result, out)


def _check_gpu_name(gpu: str) -> None:
    """An unknown --gpu is a naming mistake: say so before looking for CUDA."""
    from qtsim.calibration.device import GPU_ALIASES, KNOWN_GPU_NAMES
    from qtsim.errors import UnknownNameError, suggest

    key = gpu.strip().lower()
    known = {"cpu", "cuda", "gpu", "auto", *KNOWN_GPU_NAMES, *GPU_ALIASES}
    if key not in known:
        raise UnknownNameError(
            f"unknown GPU {gpu!r}{suggest(gpu, known)}; calibrate takes a known GPU name "
            "(qtsim profiles list), 'cuda' for whatever GPU is visible, or 'cpu'")


def _same_threads_on_resume(raw, cpu_threads) -> None:
    """A resumed CPU calibration keeps the thread count its stored points were measured with."""
    import torch

    from qtsim.calibration.raw import RawStore
    from qtsim.errors import QtsimError

    stored = next((int(p.attrs["torch_threads"]) for p in RawStore(raw, readonly=True).points()
                   if p.attrs.get("torch_threads")), None)
    if stored is None:
        return
    if cpu_threads is None:
        torch.set_num_threads(stored)
        click.echo(f"resuming with {stored} torch threads, as the stored points were measured",
                   err=True)
    elif cpu_threads != stored:
        raise QtsimError(f"{raw} was measured with {stored} torch threads; resuming with "
                         f"--cpu-threads {cpu_threads} would mix the two in one fit: resume with "
                         f"--cpu-threads {stored}, or start a new --out")


@click.command()
@click.option("--gpu",
              help="What to calibrate: a GPU name matching the detected device (h100, h200, a100-80gb, l4, ...) or 'cpu'.")
@click.option("--host", "host_only", is_flag=True,
              help="Measure the host part only (this CPU and software stack; no GPU needed): writes OUT/NAME-host.h5 and OUT/NAME-host.toml.")
@click.option("--quick", is_flag=True, help="The short plan (CPU: a few minutes; H100: under 3 minutes).")
@click.option("--out", "out_dir", default="calibration", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the raw HDF5 and the profile TOML.")
@click.option("--name", help="Profile name (default: the detected hardware's name).")
@click.option("--resume", is_flag=True, help="Continue an interrupted calibration in the same --out.")
@click.option("--tdp-w", type=click.FloatRange(min=0, min_open=True),
              help="CPU only: power for the HLI energy estimate (default 7.5 W per logical core, labelled as an assumption).")
@click.option("--cpu-threads", type=click.IntRange(min=1),
              help="CPU only: torch intra-op threads (default torch's; 1 measures most steadily on small shared VMs). Recorded in the profile; validate reuses it.")
@click.option("--install", "install", is_flag=True,
              help="Also copy the profile into the user profile directory so --gpu NAME finds it.")
@click.option("--no-rotate", is_flag=True,
              help="Linear probes call one weight matrix over and over (cache-resident; the older behaviour, for comparison) instead of rotating over layers larger than the last-level cache.")
@click.option("--no-progress", is_flag=True)
def calibrate(gpu, host_only, quick, out_dir, name, resume, tdp_w, cpu_threads, install, no_rotate,
              no_progress):
    """Measure this machine's GPU (or CPU) and fit a hardware profile.

    Runs short real measurements (memory-bandwidth and GEMM probes, single-layer microbenchmarks
    over fp16/bf16, LLM.int8() at thresholds 6 and 0, NF4 with and without double quantisation,
    several shapes and batches, and short decodes of small random-weight architectures), appends
    every point to OUT/NAME-calibration.h5 as it is measured, then fits the physical model's
    constants with lmfit and writes OUT/NAME.toml atomically. Interrupted? Run again with
    --resume: measured points are kept and skipped.

    \b
    Examples:
      qtsim calibrate --gpu cpu --quick
      qtsim calibrate --gpu h100 --out my-h100/ --install
      qtsim calibrate --host --out my-host/     # host part: h_op_s, h_step_s, h_call_<path>_s
    """
    from pathlib import Path

    from qtsim.errors import QtsimError

    try:
        from qtsim.calibration.device import detect_device
        from qtsim.calibration.energy import EnergyMonitor
        from qtsim.calibration.plan import calibration_plan, estimate_plan_s
        from qtsim.calibration.raw import RawStore
        from qtsim.calibration.runner import run_plan
    except ImportError as e:
        raise QtsimError(f"calibration needs the calibrate extra (pip install 'qtsim[calibrate]'): {e}") from None
    from qtsim.calibration.profile_builder import build_profile
    from qtsim.profiles.hardware import user_profile_dir, write_profile

    if host_only:
        return _calibrate_host(out_dir, name, resume, cpu_threads, install, no_progress)
    if not gpu:
        raise click.UsageError("--gpu is required (or --host for the host part only)")
    _check_gpu_name(gpu)
    if cpu_threads is not None and gpu.strip().lower() != "cpu":
        raise QtsimError("--cpu-threads applies to --gpu cpu only")
    device = detect_device(gpu, cpu_threads=cpu_threads)
    name = name or device.name
    out = Path(out_dir)
    raw = out / f"{name}-calibration.h5"
    if raw.exists() and not resume:
        raise QtsimError(f"{raw} exists: pass --resume to continue it, or choose another --out")
    if raw.exists() and device.backend == "cpu":
        _same_threads_on_resume(raw, cpu_threads)
    out.mkdir(parents=True, exist_ok=True)
    monitor = EnergyMonitor(device, tdp_w=tdp_w if device.backend == "cpu" else None)
    plan = calibration_plan(device, quick=quick, rotate=False if no_rotate else None)
    click.echo(f"calibrating {device.name} ({device.describe().get('device_string')}): "
               f"{len(plan)} points, about {estimate_plan_s(plan, device) / 60:.1f} min; meters: "
               f"{', '.join(monitor.meter_names)}", err=True)
    report = run_plan(plan, RawStore(raw), device, monitor, progress=not no_progress)
    click.echo(f"measured: {report.line()} -> {raw}", err=True)
    prof, result = build_profile(raw, name)
    path = write_profile(prof, out / f"{name}.toml")
    _report_fit(prof, result, path)
    if install:
        dest = write_profile(prof, user_profile_dir() / f"{name}.toml")
        click.echo(f"installed: {dest} (qtsim trap --gpu {name} ...)")


def _calibrate_host(out_dir, name, resume, cpu_threads, install, no_progress):
    """``calibrate --host``: tiny-width decodes on every path, then the host-part fit."""
    from pathlib import Path

    from qtsim.errors import QtsimError

    try:
        from qtsim.calibration.device import detect_device
        from qtsim.calibration.energy import EnergyMonitor
        from qtsim.calibration.host import host_plan
        from qtsim.calibration.plan import estimate_plan_s
        from qtsim.calibration.raw import RawStore
        from qtsim.calibration.runner import run_plan
    except ImportError as e:
        raise QtsimError(f"calibration needs the calibrate extra (pip install 'qtsim[calibrate]'): {e}") from None
    from qtsim.calibration.host import build_host_part
    from qtsim.profiles.hardware import user_profile_dir
    from qtsim.profiles.hosts import write_host

    device = detect_device("cpu", cpu_threads=cpu_threads)
    name = name or f"{device.name}-host"
    out = Path(out_dir)
    raw = out / f"{name}.h5"
    if raw.exists() and not resume:
        raise QtsimError(f"{raw} exists: pass --resume to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    plan = host_plan(device)
    click.echo(f"host calibration on {device.describe().get('device_string')}: {len(plan)} tiny "
               f"decodes, about {estimate_plan_s(plan, device) / 60:.1f} min", err=True)
    report = run_plan(plan, RawStore(raw), device, EnergyMonitor(device), progress=not no_progress)
    click.echo(f"measured: {report.line()} -> {raw}", err=True)
    part, st = build_host_part(str(raw), name)
    path = write_host(part, out / f"{name}.toml")
    click.echo(f"host part {part.name} ({part.host.get('cpu')}) -> {path}")
    click.echo(f"  host fit {st.n_points:4d} points  fit MAPE {100 * st.mape:5.1f}%  "
               f"max {100 * st.max_ape:5.1f}%  AIC {st.aic:8.1f}")
    for k, p in sorted(part.physical.items()):
        click.echo(f"  {k:22s} {p.value:.4g} ± {p.stderr:.2g} {p.unit}  ({p.source})")
    if install:
        dest = write_host(part, user_profile_dir() / "hosts" / f"{name}.toml")
        click.echo(f"installed: {dest} (qtsim trap --host {name} ...)")
