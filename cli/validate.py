"""``qtsim validate``: held-out full decoding runs against the simulator's predictions."""

from __future__ import annotations

from pathlib import Path

import click

from qtsim.cli.options import bnb_options, bnb_settings, int_list, precision_list, split_list


@click.command()
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
    from qtsim.errors import QtsimError
    from qtsim.profiles.hardware import load_profile

    bnb = bnb_settings(double_quant, int8_threshold, compute_dtype)
    prof = load_profile(gpu, profile_path)
    if bnb.compute_dtype and bnb.compute_dtype != prof.compute_dtype_4bit:
        raise QtsimError(f"--compute-dtype {bnb.compute_dtype}: validation builds 4-bit models in "
                         f"the compute dtype {prof.name} was calibrated with "
                         f"({prof.compute_dtype_4bit}); other compute dtypes are not wired into "
                         "the measurement code yet")
    if plan_path and not bnb.is_default and not report_only:
        raise QtsimError("with --plan, set bitsandbytes options in the plan "
                         "([validation] or per point: bnb_4bit_use_double_quant, llm_int8_threshold)")
    if not report_only and not plan_path and model:
        bnb.check(precision_list(precisions), prof)
    out = Path(out_dir)
    raw = Path(raw_path) if raw_path else out / "validation.h5"
    if not report_only:
        _measure(prof, plan_path, model, precisions, batches, tokens, prompt_tokens, reps, raw,
                 allow_overlap, outliers, not no_progress, cpu_threads, bnb)
    elif not raw.is_file():
        raise QtsimError(f"{raw}: no raw validation data to report from")
    _report(prof, raw, out, profile_path if record_error else None, repredict)


def _measure(prof, plan_path, model, precisions, batches, tokens, prompt_tokens, reps, raw,
             allow_overlap, outliers, progress, cpu_threads=None, bnb=None):
    from qtsim.errors import QtsimError
    from qtsim.simulate.simulator import Simulator
    from qtsim.validate.validation import holdout_conflicts, plan_points, predict_point

    points, reps, configs = plan_points(
        plan_path, split_list(model, "--model") if model else None, precision_list(precisions),
        int_list(batches, "--batch"), tokens, prompt_tokens, reps,
        bnb.double_quant if bnb else False, bnb.int8_threshold if bnb else 6.0)
    conflicts = holdout_conflicts(prof, points, {m: n for m, (_, n) in configs.items()})
    if conflicts and not allow_overlap:
        raise QtsimError(f"not held out: {conflicts[0]}" + (f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else "")
                         + "; choose other models or batches, or pass --allow-overlap")
    try:
        from qtsim.calibration.device import detect_device
        from qtsim.calibration.energy import EnergyMonitor
        from qtsim.calibration.holdout import ValidationSpec
        from qtsim.calibration.plan import DecodeSpec
        from qtsim.calibration.raw import RawStore
        from qtsim.calibration.runner import run_plan
    except ImportError as e:
        raise QtsimError(f"measuring needs the calibrate extra (pip install 'qtsim[calibrate]'): {e}") from None
    cpu = prof.hardware.get("device_type") == "cpu"
    threads = (cpu_threads or prof.hardware.get("cpu_threads") or None) if cpu else None
    device = detect_device("cpu" if cpu else prof.hardware.get("device_name", prof.name),
                           cpu_threads=threads)
    tdp = prof.tdp_w if device.backend == "cpu" else None
    monitor = EnergyMonitor(device, tdp_w=tdp)
    sim = Simulator(prof, n_draws=200)
    specs = []
    for pt in points:
        cfg, name = configs[pt.model]
        pb = pt.bnb()
        dec = DecodeSpec(name, cfg, pt.precision, pt.batch, pt.prompt_tokens, pt.new_tokens, reps,
                         double_quant=pb.double_quant, threshold=pb.int8_threshold,
                         outlier_injection=outliers and pt.precision == "int8")
        pred = predict_point(sim, cfg, name, pt)
        pred["holdout"] = "overlap" if any(name in c and f"batch {pt.batch}" in c for c in conflicts) else "held-out"
        specs.append(ValidationSpec(dec, pred))
    raw.parent.mkdir(parents=True, exist_ok=True)
    store = RawStore(raw)
    report = run_plan(specs, store, device, monitor, progress=progress, purpose="validation")
    click.echo(f"measured: {report.line()} -> {raw}", err=True)


def _report(prof, raw, out, record_to=None, repredict: bool = False):
    from qtsim.calibration.raw import RawStore
    from qtsim.validate.validation import (
        cor_and_verdicts,
        coverage_table,
        cross_precision_rho,
        error_table,
        measured_frame,
        paper_vs_physical,
        plot_validation,
        report_markdown,
        verdict_summary,
    )

    frame = RawStore(raw, readonly=True).summary_frame("decode")
    df = measured_frame(frame)
    if df.empty:
        from qtsim.errors import QtsimError

        raise QtsimError(f"{raw}: no validation decode points")
    if repredict:
        from qtsim.simulate.simulator import Simulator
        from qtsim.validate.validation import repredict as _repredict

        df = _repredict(df, Simulator(prof, n_draws=200))
    errors = error_table(df)
    verdicts = cor_and_verdicts(df, prof.native)
    comparison = paper_vs_physical(df)
    coverage, est = coverage_table(prof, df)
    out.mkdir(parents=True, exist_ok=True)
    plot_validation(df, out)
    meta = {"profile": f"{prof.name} ({prof.source}, {prof.provenance.get('date', '')}, {prof.path})",
            "raw data": str(raw), "points": len(df),
            "energy meter": df["energy_meter"].iloc[0],
            "outlier injection": ("outlier_injection" in df
                                  and bool(df["outlier_injection"].fillna(False).astype(bool).any())),
            "held out": (", ".join(sorted(df["holdout"].astype(str).unique()))
                         if "holdout" in df else "held-out")}
    (out / "report.md").write_text(report_markdown(df, errors, verdicts, comparison, meta, coverage))
    coverage.to_csv(out / "coverage.csv", index=False)
    df.to_csv(out / "points.csv", index=False)
    errors.to_csv(out / "errors.csv", index=False)
    if not verdicts.empty:
        verdicts.to_csv(out / "verdicts.csv", index=False)
    allrow = errors[errors["group"] == "all"].set_index("quantity")
    click.echo(f"validation of {prof.name}: {len(df)} held-out points ({meta['energy meter']} energy)")
    for q in ("step_s", "latency_s", "j_per_query", "peak_memory_bytes"):
        if q in allrow.index:
            r = allrow.loc[q]
            click.echo(f"  {q:18s} MAPE {r['mape_pct']:6.2f}%  bias {r['bias_pct']:+6.2f}%  "
                       f"p90 {r['p90_ape_pct']:6.2f}%  max {r['max_ape_pct']:6.2f}%  r {r['pearson_r']:.3f}")
    if not verdicts.empty:
        click.echo(f"  trap verdicts agree: {verdict_summary(verdicts)}")
    if comparison:
        click.echo(f"  J/query MAPE: physical {comparison['physical_j_mape_pct']:.1f}%, paper eq. 19 "
                   f"{comparison['paper_j_mape_pct']:.1f}%")
    for _, r in coverage[coverage["scheme"].str.startswith("leave-one")].iterrows():
        click.echo(f"  {r['quantity']:18s} band coverage ({r['scheme']}): 68% band {r['coverage_68_pct']:5.1f}%, "
                   f"95% band {r['coverage_95_pct']:5.1f}%  (n {r['n']}; parameters only: "
                   + _param_only(coverage, r["quantity"]) + ")")
    if record_to:
        _record_error(prof, record_to, est, cross_precision_rho(df, prof.native), raw)
    click.echo(f"  report: {out / 'report.md'}")


def _param_only(coverage, quantity) -> str:
    p = coverage[(coverage["scheme"] == "parameters only") & (coverage["quantity"] == quantity)]
    return "n/a" if p.empty else f"{p['coverage_68_pct'].iloc[0]:.1f}% / {p['coverage_95_pct'].iloc[0]:.1f}%"


def _record_error(prof, path, est, rho, raw):
    import datetime

    from qtsim.errors import QtsimError
    from qtsim.profiles.hardware import write_profile
    from qtsim.validate.validation import model_error_record

    if not path:
        raise QtsimError("--record-error needs --profile FILE (the file to write)")
    prof.fit["model_error"] = model_error_record(est, str(raw), datetime.date.today().isoformat(), rho)
    write_profile(prof, path)
    click.echo(f"  model error recorded in {path} [fit.model_error]")
