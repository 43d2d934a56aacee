"""``qtsim calibrate`` and ``qtsim fit``."""

from __future__ import annotations

import click

from qtsim.calibration import calibrate as cal
from qtsim.calibration.calibrate import refit
from qtsim.cli.options import StrictCommand


@click.command(cls=StrictCommand)
@click.argument("raw", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Profile TOML to write (default: next to RAW).")
@click.option("--name", help="Profile name (default: the hardware recorded in RAW).")
@click.option("--host-part", type=click.Path(exists=True, dir_okay=False),
              help="A host part from `qtsim calibrate --host` on the same machine: its h_op_s is "
                   "held, and the 16-bit paths' in-model per-call cost is fitted too.")
@click.option("--lumped", is_flag=True,
              help="Fit the older per-family per-layer floors instead of the traced host constants (for comparison).")
@click.option("--force", is_flag=True, help="Replace an existing profile file.")
def fit(raw, out, name, host_part, lumped, force):
    """Refit a hardware profile from recorded raw HDF5 (no torch, no measuring).

    \b
    Example:
      qtsim fit data/raw/cpu-calibration.h5 --out my-cpu.toml
    """
    refit(raw, out, name, host_part, lumped, echo=click.echo, force=force)


@click.command(cls=StrictCommand)
@click.option("--gpu",
              help="What to calibrate: a GPU name or alias matching the detected device (any of `qtsim profiles list`: h100, a100-80gb, l4, rtx-4090, ...; h100 or a100 accept every board of the family), 'cuda' for whichever GPU is visible, or 'cpu'.")
@click.option("--host", "host_only", is_flag=True,
              help="Measure the host part only (this CPU and software stack; no GPU needed): writes OUT/NAME-host.h5 and OUT/NAME-host.toml.")
@click.option("--quick", is_flag=True, help="The short plan (CPU: a few minutes; H100: about 4 minutes, power states included).")
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
@click.option("--power-window-s", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True,
              help="Length of each power-state window (deep idle, awake, streaming, GEMM; 3 of each), s. "
                   "Below 5 s the NVML counter's ~0.1 s updates weigh on the result.")
@click.option("--no-progress", is_flag=True)
def calibrate(gpu, host_only, quick, out_dir, name, resume, tdp_w, cpu_threads, install, no_rotate,
              power_window_s, no_progress):
    """Measure this machine's GPU (or CPU) and fit a hardware profile.

    Runs short real measurements (memory-bandwidth and GEMM probes, single-layer microbenchmarks
    over fp16/bf16, LLM.int8() at thresholds 6 and 0, NF4 with and without double quantisation,
    several shapes and batches, and short decodes of small random-weight architectures), appends
    every point to OUT/NAME-calibration.h5 as it is measured, then fits the physical model's
    constants with lmfit and writes OUT/NAME.toml atomically. Interrupted? Run again with
    --resume: measured points are kept and skipped.

    Power states (docs/calibrate-power.md): on a GPU, NVML's energy counter measures deep idle
    (before any CUDA context), awake-waiting (tiny kernels at HF eager's launch rate),
    streaming and GEMM in 5 s windows, giving p_idle_w, p_awake_w, e_byte_j, e_flop_j and the
    enforced power limit p_cap_w. On a CPU, RAPL does where it is readable; where it is not,
    energy is estimated as TDP x time and every report says so.

    \b
    Examples:
      qtsim calibrate --gpu cpu --quick
      qtsim calibrate --gpu h100 --out my-h100/ --install
      qtsim calibrate --host --out my-host/     # host part: h_op_s, h_step_s, h_call_<path>_s
    """
    progress = not no_progress
    if host_only:
        cal.calibrate_host(out_dir, name, resume=resume, cpu_threads=cpu_threads, install=install,
                           progress=progress, echo=click.echo, log=_log)
        return
    if not gpu:
        raise click.UsageError("--gpu is required (or --host for the host part only)")
    cal.calibrate_device(gpu, out_dir, name, resume=resume, quick=quick, tdp_w=tdp_w,
                         cpu_threads=cpu_threads, install=install,
                         rotate=False if no_rotate else None, progress=progress,
                         power_window_s=power_window_s, echo=click.echo, log=_log)


def _log(line: str) -> None:
    click.echo(line, err=True)
