"""``qtsim validate``: held-out full decoding runs against the simulator's predictions."""

from __future__ import annotations

import click

from qtsim.cli.options import (
    StrictCommand,
    bnb_options,
    bnb_settings,
    int_list,
    precision_list,
    split_list,
)
from qtsim.errors import QtsimError
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.validate.plan import ValidationRequest
from qtsim.validate.run import run_validation


@click.command(cls=StrictCommand)
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False),
              help="Profile TOML whose predictions are checked (e.g. from `qtsim calibrate`).")
@click.option("--gpu", help="Profile by name instead of --profile.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False),
              help="A validation plan TOML ([validation] defaults, [[points]] or [grid]).")
@click.option("--model", help="Models, comma-separated: shipped names or paths to config.json.")
@click.option("--precision", "precisions", default="fp16,int8,nf4", show_default=True,
              help="Precisions, comma-separated (the native one is needed for COR and verdicts).")
@click.option("--batch", "batches", default="1,4", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--tokens", default=32, show_default=True, type=click.IntRange(min=2), help="New tokens K per query.")
@click.option("--prompt-tokens", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--reps", default=3, show_default=True, type=click.IntRange(min=1), help="Measured repetitions per point.")
@click.option("--out", "out_dir", default="validation-report", show_default=True,
              type=click.Path(file_okay=False), help="Report directory (Markdown, CSV, PNG).")
@click.option("--raw", "raw_path", type=click.Path(dir_okay=False),
              help="Raw HDF5 to append measurements to (default OUT/validation.h5); existing points are reused.")
@click.option("--report-only", is_flag=True, help="Only report from the points already in --raw (no torch needed).")
@click.option("--repredict", is_flag=True,
              help="With --report-only: recompute the predictions with --profile (e.g. a refitted one) instead of the ones stored at measurement time.")
@click.option("--allow-overlap", is_flag=True,
              help="Run points whose model and batch were used in calibration (flagged in the report).")
@click.option("--outliers", is_flag=True, help="Inject activation outliers so LLM.int8() takes its fp16 path.")
@click.option("--cpu-threads", type=click.IntRange(min=1),
              help="CPU only: torch threads (default: the count the profile was calibrated with).")
@click.option("--record-error", is_flag=True,
              help="Write the measured model error into --profile's [fit.model_error] (bands then use it).")
@click.option("--no-progress", is_flag=True)
@bnb_options
def validate(profile_path, gpu, plan_path, model, precisions, batches, tokens, prompt_tokens, reps,
             out_dir, raw_path, report_only, repredict, allow_overlap, outliers, cpu_threads,
             record_error, no_progress, double_quant, int8_threshold, compute_dtype):
    """Run full real decodes at held-out points and report the prediction error.

    Predictions come from the profile *before* each run and are stored beside the measurement
    (raw HDF5, purpose=validation). Points whose model and batch calibrated the profile are
    refused (or, with --allow-overlap, flagged). The report gives MAPE, bias, Pearson r, p90 and
    max error for step time, latency, J/query and peak memory, per precision; COR and
    trap-verdict agreement; the paper model's J/query error beside the physical model's; and
    band coverage: the share of measurements inside the 68% and 95% bands (the model error
    estimated leaving each architecture out, so no point scores a band made from itself).

    \b
    Examples:
      qtsim validate --profile cpu.toml --model data/validation/tiny-llama-a.json --precision fp16,nf4,int8 --batch 1,3
      qtsim validate --profile cpu.toml --plan data/validation/cpu-holdout.toml --out report/
      qtsim validate --profile cpu.toml --raw report/validation.h5 --report-only
    """
    bnb = bnb_settings(double_quant, int8_threshold, compute_dtype)
    prof = load_profile(gpu, profile_path)
    if record_error and not profile_path:
        raise QtsimError("--record-error needs --profile FILE (the file to write)")
    request = ValidationRequest(
        plan_path, tuple(split_list(model, "--model")) if model else (),
        tuple(precision_list(precisions)), tuple(int_list(batches, "--batch")),
        Workload(new_tokens=tokens, prompt_tokens=prompt_tokens, bnb=bnb), reps)
    run_validation(prof, request, out_dir, raw_path=raw_path, report_only=report_only,
                   repredict=repredict, allow_overlap=allow_overlap, outliers=outliers,
                   cpu_threads=cpu_threads, record_to=profile_path if record_error else None,
                   progress=not no_progress, echo=click.echo,
                   log=lambda line: click.echo(line, err=True))
