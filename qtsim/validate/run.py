"""``qtsim validate``'s work: measure held-out points, score them, write the report.

:func:`run_validation` is the command's one library call: it checks the request, measures the
points it plans (:func:`measure_points`; needs the calibrate extra) unless reporting only, then
scores every recorded point and writes the report (:func:`report_validation`), recording the
model error into a profile file when asked (:func:`record_model_error`).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from qtsim.calibration.measure.device import detect_device
from qtsim.calibration.measure.energy import EnergyMonitor
from qtsim.calibration.measure.raw import RawStore
from qtsim.calibration.probes.runner import run_plan
from qtsim.errors import QtsimError
from qtsim.profiles.hardware import write_profile
from qtsim.profiles.profile import HardwareProfile
from qtsim.simulate.simulator import Simulator
from qtsim.validate.coverage import coverage_table, cross_precision_rho, model_error_record
from qtsim.validate.holdout import drift_probes, validation_specs
from qtsim.validate.plan import ValidationRequest, calibrated_points, holdout_conflicts, plan_points
from qtsim.validate.predict import PREDICTION_DRAWS
from qtsim.validate.predict import repredict as remake
from qtsim.validate.report import (
    ValidationReport,
    paper_vs_physical,
    report_meta,
    summary_lines,
    write_report,
)
from qtsim.validate.score import (
    cor_and_verdicts,
    correct_for_drift,
    drift_since_calibration,
    error_table,
    measured_frame,
)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_validation(profile: HardwareProfile, request: ValidationRequest, out_dir, *,
                   raw_path=None, report_only: bool = False, repredict: bool = False,
                   allow_overlap: bool = False, outliers: bool = False,
                   cpu_threads: int | None = None, record_to=None, progress: bool = True,
                   echo=print, log=_stderr) -> ValidationReport:
    """Run held-out full decodes for ``request`` (unless ``report_only``), append them to
    ``raw_path`` (default ``out_dir``/validation.h5) and report every validation point in it.

    ``repredict`` scores predictions remade from ``profile`` instead of the stored ones;
    ``record_to`` (a profile file) receives the measured model error. The summary goes to
    ``echo``, measurement progress to ``log``. Refusals are one-line :class:`QtsimError` s.
    """
    check_request(profile, request, report_only)
    out = Path(out_dir)
    raw = Path(raw_path) if raw_path else out / "validation.h5"
    if not report_only:
        run = measure_points(profile, request, raw, allow_overlap=allow_overlap,
                             outliers=outliers, cpu_threads=cpu_threads, progress=progress)
        log(f"measured: {run.line()} -> {raw}")
    elif not raw.is_file():
        raise QtsimError(f"{raw}: no raw validation data to report from")
    return report_validation(profile, raw, out, repredict=repredict, record_to=record_to,
                             echo=echo)


def check_request(profile: HardwareProfile, request: ValidationRequest, report_only: bool) -> None:
    """Refuse bitsandbytes settings validation cannot measure, before anything runs."""
    bnb = request.template.bnb
    if bnb.compute_dtype and bnb.compute_dtype != profile.compute_dtype_4bit:
        raise QtsimError(f"--compute-dtype {bnb.compute_dtype}: validation builds 4-bit models in "
                         f"the compute dtype {profile.name} was calibrated with "
                         f"({profile.compute_dtype_4bit}); other compute dtypes are not wired into "
                         "the measurement code yet")
    if request.plan_path and not bnb.is_default and not report_only:
        raise QtsimError("with --plan, set bitsandbytes options in the plan "
                         "([validation] or per point: bnb_4bit_use_double_quant, llm_int8_threshold)")
    if not report_only and not request.plan_path and request.models:
        bnb.check(request.precisions, profile)


def measure_points(profile: HardwareProfile, request: ValidationRequest, raw: Path, *,
                   allow_overlap: bool = False, outliers: bool = False,
                   cpu_threads: int | None = None, progress: bool = True):
    """Predict, then decode, every planned point on this machine, appending to ``raw``.

    Points whose model and batch calibrated ``profile`` are refused (``allow_overlap``: run and
    labelled ``overlap``). Returns the runner's report
    (:func:`qtsim.calibration.probes.runner.run_plan`); measuring needs the calibrate extra
    (:func:`~qtsim.calibration.measure.device.detect_device` refuses without it).
    """
    points, reps, configs = plan_points(request)
    names = {m: n for m, (_, n) in configs.items()}
    conflicts = holdout_conflicts(profile, points, names)
    if conflicts and not allow_overlap:
        raise QtsimError(f"not held out: {conflicts[0]}"
                         + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
                         + "; choose other models or batches, or pass --allow-overlap")
    device = _device(profile, cpu_threads)
    monitor = EnergyMonitor(device, tdp_w=profile.tdp_w if device.backend == "cpu" else None)
    specs = validation_specs(profile, points, configs, reps,
                             overlap=set(calibrated_points(profile, points, names)),
                             outliers=outliers)
    # the calibration's own reference points before and after: how far the machine moved since
    specs = drift_probes(profile, "before") + specs + drift_probes(profile, "after")
    raw.parent.mkdir(parents=True, exist_ok=True)
    return run_plan(specs, RawStore(raw), device, monitor, progress=progress,
                    purpose="validation")


def _device(profile: HardwareProfile, cpu_threads: int | None):
    """The device ``profile`` describes (CPU: with its calibrated thread count unless given)."""
    cpu = profile.hardware.get("device_type") == "cpu"
    threads = (cpu_threads or profile.hardware.get("cpu_threads") or None) if cpu else None
    return detect_device("cpu" if cpu else profile.hardware.get("device_name", profile.name),
                         cpu_threads=threads)


def report_validation(profile: HardwareProfile, raw: Path, out: Path, *, repredict: bool = False,
                      record_to=None, echo=print) -> ValidationReport:
    """Score every validation decode in ``raw`` against ``profile`` and write ``out``/report.md
    with its plots and tables; the summary goes to ``echo``."""
    decodes = RawStore(raw, readonly=True).summary_frame("decode")
    df = measured_frame(decodes)
    if df.empty:
        raise QtsimError(f"{raw}: no validation decode points")
    df, drift = correct_for_drift(df, drift_since_calibration(decodes))
    if repredict:
        df = remake(df, Simulator(profile, n_draws=PREDICTION_DRAWS))
    rep = score_validation(profile, df, raw)
    rep.meta["drift since calibration"] = drift["text"]
    rep.drift = drift
    path = write_report(rep, out)
    for line in summary_lines(rep, profile.name):
        echo(line)
    if record_to:
        record_model_error(profile, record_to, rep, raw)
        echo(f"  model error recorded in {record_to} [fit.model_error]")
    echo(f"  report: {path}")
    return rep


def score_validation(profile: HardwareProfile, df, raw) -> ValidationReport:
    """Errors, COR and verdicts, paper vs physical model, and band coverage of ``df``."""
    coverage, est = coverage_table(profile, df)
    return ValidationReport(df, error_table(df), cor_and_verdicts(df, profile.native),
                            paper_vs_physical(df), coverage, est, report_meta(profile, raw, df))


def record_model_error(profile: HardwareProfile, path, rep: ValidationReport, raw) -> None:
    """Write the measured model error into the profile file ``path``'s ``[fit.model_error]``."""
    rho = cross_precision_rho(rep.df, profile.native)
    profile.fit["model_error"] = model_error_record(rep.estimate, str(raw),
                                                    datetime.date.today().isoformat(), rho)
    write_profile(profile, path)
