"""``qtsim fleet calibrate|validate|simulate``: campaigns over many GPU nodes on Ray (a thin
layer over :mod:`qtsim.calibration.fleet`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from qtsim.cli.options import int_list, precision_list, split_list


def _connect(address: str | None, num_cpus: int | None = None):
    from qtsim.calibration.fleet import require_ray

    ray = require_ray()
    if not ray.is_initialized():
        kw = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": False}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
    return ray


address_option = click.option(
    "--address", default="auto", show_default=True,
    help="Ray cluster to join (ray://HOST:10001, HOST:6379, or 'auto' for the one `ray start` "
         "began on this machine).")
nodes_option = click.option(
    "--nodes", "nodes",
    help="Slots, comma-separated: a,b,c=l4 (each is the Ray resource qtsim:<slot>; =GPU overrides "
         "--gpu for that slot). Default: every qtsim:* resource of the cluster.")
common = [
    click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
                 help="Campaign directory on the head: manifest, gathered raw HDF5, profiles, summary."),
    click.option("--resume", is_flag=True, help="Continue the campaign in --out (slots already gathered are kept)."),
    click.option("--work-dir", default=None,
                 help="Node-local directory for the raw HDF5 while measuring (default $TMPDIR/qtsim-fleet)."),
    click.option("--max-retries", default=3, show_default=True, type=click.IntRange(min=0),
                 help="Ray retries of a slot's task whose worker or node died; each retry resumes."),
    click.option("--cpu-threads", type=click.IntRange(min=1), default=None,
                 help="CPU slots: torch threads per task (1 measures most steadily)."),
    click.option("--crash-after", "crash", multiple=True,
                 help="Fault drill: SLOT=N kills that slot's worker after N points, once."),
]


def _apply(options):
    def deco(f):
        for o in reversed(options):
            f = o(f)
        return f
    return deco


def _crash(items) -> dict:
    out = {}
    for it in items:
        slot, _, n = it.partition("=")
        out[slot] = int(n)
    return out


@click.group()
def fleet():
    """Calibrate and validate every node of a GPU fleet on Ray; chunk big simulate grids.

    \b
    Nodes join the cluster with one custom resource per device to measure:
      ray start --head
      ray start --address HEAD:6379 --num-gpus 1 --resources '{"qtsim:node7": 1}'
    Every node needs qtsim with its calibrate extra; the head needs qtsim[fleet].
    """


@fleet.command("calibrate")
@address_option
@click.option("--gpu", default="cpu", show_default=True,
              help="Hardware asked of every slot (h100, l4, cpu...); a slot whose device differs is refused.")
@nodes_option
@click.option("--plan", "plan_name", default="quick", show_default=True,
              type=click.Choice(["tiny", "quick", "full"]),
              help="Measurement plan per slot (tiny: seconds, for drills and tests; quick; full).")
@click.option("--tdp-w", type=click.FloatRange(min=0, min_open=True), help="CPU slots: HLI power.")
@_apply(common)
def calibrate(address, gpu, nodes, plan_name, tdp_w, out_dir, resume, work_dir, max_retries,
              cpu_threads, crash):
    """Calibrate every slot on its own node, gather the raw HDF5, fit one profile per slot
    and summarise the spread of each fitted constant between units of the same model.

    \b
    Writes OUT/campaign.json (manifest), OUT/nodes/SLOT/calibrate.h5 and HW-SLOT.toml,
    OUT/fleet_summary.csv/.json and OUT/fleet_spread.png.
    Example:
      qtsim fleet calibrate --address auto --gpu h100 --out fleet-h100/
    """
    from qtsim.calibration import fleet as fl

    ray = _connect(address)
    slots = fl.parse_slots(nodes, gpu, ray.cluster_resources())
    settings = {"plan": plan_name, "gpu": gpu}
    extra = {"*": {"plan": plan_name, "cpu_threads": cpu_threads, "tdp_w": tdp_w}}
    click.echo(f"fleet calibrate: {len(slots)} slots ({', '.join(f'{s.name}={s.gpu}' for s in slots)}), "
               f"plan {plan_name} -> {out_dir}")
    m = fl.run_campaign("calibrate", out_dir, slots, settings=settings, job_extra=extra,
                        resume=resume, work_dir=work_dir or fl.DEFAULT_WORK_DIR,
                        max_retries=max_retries, crash=_crash(crash), echo=click.echo)
    profiles = fl.fit_nodes(m, echo=click.echo)
    summary = fl.fleet_summary(m, profiles, echo=click.echo)
    _print_summary(m, summary)


def _print_summary(m, summary):
    frame = summary["frame"]
    statuses = {}
    for n, s in m.doc["slots"].items():
        statuses.setdefault(s["status"], []).append(n)
    click.echo("slots: " + "; ".join(f"{k} {', '.join(v)}" for k, v in statuses.items()))
    for n, s in m.doc["slots"].items():
        if s["status"] in ("refused", "failed", "fit_failed"):
            click.echo(f"  {n} {s['status']}: {s.get('reason', '')}")
    if len(frame):
        for g in dict.fromkeys(frame["hardware_model"]):
            sub = frame[frame["hardware_model"] == g]
            click.echo(f"spread between units of {g} ({int(sub['n_units'].iloc[0])} units):")
            click.echo(f"  {'constant':22s} {'mean':>11s} {'sd':>10s} {'min':>11s} {'max':>11s} {'CV':>7s}")
            for _, r in sub.iterrows():
                click.echo(f"  {r['constant']:22s} {r['mean']:11.4g} {r['sd']:10.3g} {r['min']:11.4g} "
                           f"{r['max']:11.4g} {100 * r['cv']:6.1f}%")
    click.echo(f"wrote {m.out / 'fleet_summary.csv'}, fleet_summary.json"
               + (f", {summary['png'].name}" if summary.get("png") else "") + f", {m.path.name}")


@fleet.command("validate")
@address_option
@click.option("--from", "from_dir", type=click.Path(file_okay=False),
              help="A fleet calibrate campaign directory: each slot validates its own profile.")
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False),
              help="One profile TOML for every slot (instead of --from).")
@click.option("--gpu", default="cpu", show_default=True, help="Hardware asked of every slot (with --profile).")
@nodes_option
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), help="Validation plan TOML.")
@click.option("--model", help="Models, comma-separated (instead of --plan).")
@click.option("--precision", "precisions", default="fp16,int8,nf4", show_default=True)
@click.option("--batch", "batches", default="2,6", show_default=True)
@click.option("--tokens", default=16, show_default=True, type=click.IntRange(min=2))
@click.option("--prompt-tokens", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--reps", default=3, show_default=True, type=click.IntRange(min=1))
@_apply(common)
def validate(address, from_dir, profile_path, gpu, nodes, plan_path, model, precisions, batches,
             tokens, prompt_tokens, reps, out_dir, resume, work_dir, max_retries, cpu_threads,
             crash):
    """Held-out full decodes on every slot, each against its own profile's predictions
    (--from a fleet calibration) or one --profile; per-slot errors and the fleet's spread.

    \b
    Example:
      qtsim fleet validate --from fleet-h100/ --plan holdout.toml --out fleet-h100-val/
    """
    from qtsim.calibration import fleet as fl
    from qtsim.errors import QtsimError
    from qtsim.profiles.hardware import read_profile
    from qtsim.validate.validation import plan_points

    if bool(from_dir) == bool(profile_path):
        raise QtsimError("give --from CAMPAIGN_DIR or --profile FILE")
    points, reps, configs = plan_points(
        plan_path, split_list(model, "--model") if model else None, precision_list(precisions),
        int_list(batches, "--batch"), tokens, prompt_tokens, reps)
    ray = _connect(address)
    if from_dir:
        cal = json.loads((Path(from_dir) / fl.MANIFEST).read_text())
        have = {n: s for n, s in cal["slots"].items() if s["status"] == "done" and s.get("profile")}
        wanted = fl.parse_slots(nodes, gpu, {fl.RESOURCE_PREFIX + n: 1 for n in have})
        slots = [fl.Slot(s.name, have[s.name]["gpu"]) for s in wanted if s.name in have]
        prof_files = {s.name: Path(from_dir) / have[s.name]["profile"] for s in slots}
    else:
        slots = fl.parse_slots(nodes, gpu, ray.cluster_resources())
        prof_files = {s.name: Path(profile_path) for s in slots}
    profiles = {n: read_profile(p) for n, p in prof_files.items()}
    pts = [{f: getattr(p, f) for f in ("model", "precision", "batch", "new_tokens", "prompt_tokens",
                                       "double_quant", "int8_threshold")} for p in points]
    extra = {"*": {"points": pts, "configs": {k: list(v) for k, v in configs.items()}, "reps": reps,
                   "cpu_threads": cpu_threads}}
    for n, p in prof_files.items():
        extra[n] = {"profile_toml": p.read_text()}
        if cpu_threads is None and profiles[n].hardware.get("device_type") == "cpu":
            extra[n]["cpu_threads"] = profiles[n].hardware.get("cpu_threads") or None
    settings = {"from": str(from_dir or ""), "profile": str(profile_path or ""),
                "points": len(points), "reps": reps}
    click.echo(f"fleet validate: {len(slots)} slots x {len(points)} held-out points -> {out_dir}")
    m = fl.run_campaign("validate", out_dir, slots, settings=settings, job_extra=extra,
                        resume=resume, work_dir=work_dir or fl.DEFAULT_WORK_DIR,
                        max_retries=max_retries, crash=_crash(crash), echo=click.echo)
    frame = fl.validation_summary(m, profiles, echo=click.echo)
    for _, r in frame[frame["status"] != "done"].iterrows():
        click.echo(f"  {r['slot']} {r['status']}: {r['reason']}")
    click.echo(f"wrote {m.out / 'fleet_validation.csv'}, fleet_validation.json, {m.path.name}")


@fleet.command("simulate")
@click.option("--address", default=None,
              help="Ray cluster to join (default: start Ray on this machine with --workers CPUs).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Without --address: CPUs of the local Ray instance (default all).")
@click.option("--gpu", "gpus", help="Hardware profiles, comma-separated names or aliases.")
@click.option("--profile", "profile_paths", multiple=True, type=click.Path(dir_okay=False))
@click.option("--model", "models", help="Models, comma-separated.")
@click.option("--precision", "precisions", default="fp16,int8,nf4", show_default=True)
@click.option("--batch", "batches", default="1,2,4,8,16,32,64,128", show_default=True,
              help="Batch sizes: a comma list, or LO:HI:N geometric.")
@click.option("--tokens", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--prompt-tokens", default=128, show_default=True, type=click.IntRange(min=0))
@click.option("--sizes", help="Synthetic sizes LO:HI:N of --family, appended to the model axis.")
@click.option("--family", help="Architecture scaled for --sizes and N* (default: the first --model).")
@click.option("--draws", default=0, show_default=True, type=click.IntRange(min=0, max=100000))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--chunk-models", type=click.IntRange(min=1), help="Models per Ray task.")
@click.option("--chunk-batches", type=click.IntRange(min=1), help="Batch sizes per Ray task.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False))
def simulate(address, workers, gpus, profile_paths, models, precisions, batches, tokens,
             prompt_tokens, sizes, family, draws, seed, chunk_models, chunk_batches, out, csv_path):
    """`qtsim simulate` over a very large grid, chunked over Ray workers (tiles of models x
    batches), assembled into the same HDF5 one machine writes, bit for bit.

    \b
    Example:
      qtsim fleet simulate --gpu l4,h100-sxm --family mistral-7b --sizes 0.5e9:80e9:400 \\
          --batch 1:512:40 --draws 200 --chunk-models 50 --out sweep.h5
    """
    import time

    from qtsim.calibration.fleet import fleet_simulate
    from qtsim.cli.simulate import parse_batches
    from qtsim.errors import QtsimError
    from qtsim.model.architecture import load_architecture
    from qtsim.profiles.hardware import load_profile
    from qtsim.simulate.dataset import DIMS, n_points, quantities, write_csv, write_hdf5
    from qtsim.simulate.surface import parse_sizes

    if not gpus and not profile_paths:
        raise QtsimError("give --gpu GPU[,GPU...] or --profile FILE")
    profiles = [load_profile(g) for g in (split_list(gpus, "--gpu") if gpus else [])]
    profiles += [load_profile(path=p) for p in profile_paths]
    archs = [load_architecture(m) for m in split_list(models, "--model")] if models else []
    fam = load_architecture(family) if family else None
    size_grid = parse_sizes(sizes) if sizes else None
    _connect(address, workers)
    t0 = time.perf_counter()
    surface = fleet_simulate(profiles, archs, size_grid, parse_batches(batches), family=fam,
                             chunk_models=chunk_models, chunk_batches=chunk_batches,
                             precisions=precision_list(precisions), new_tokens=tokens,
                             prompt_tokens=prompt_tokens, n_draws=draws, seed=seed)
    elapsed = time.perf_counter() - t0
    write_hdf5(surface, out, "qtsim fleet simulate")
    g, p, m, nb = (surface.sizes[d] for d in DIMS)
    click.echo(f"{g} GPU x {p} precision x {m} model x {nb} batch = {n_points(surface)} points"
               f"{f', {draws} draws' if draws else ''} in {elapsed:.2f} s over Ray")
    click.echo(f"wrote {out} ({len(quantities(surface))} quantities)")
    if csv_path:
        click.echo(f"wrote {csv_path} ({write_csv(surface, csv_path)} rows)")
