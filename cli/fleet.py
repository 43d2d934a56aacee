"""``qtsim fleet calibrate|validate|simulate``: campaigns over many GPU nodes on Ray (a thin
layer over :mod:`qtsim.calibration.fleet`)."""

from __future__ import annotations

import click

from qtsim.calibration.fleet.campaigns import calibrate_fleet, simulate_fleet, validate_fleet
from qtsim.cli.options import StrictGroup, int_list, precision_list, split_list, stack_option
from qtsim.cli.simulate import parse_batches
from qtsim.model.workload import Workload
from qtsim.report.grid import load_grid_inputs, refuse_existing
from qtsim.validate.plan import ValidationRequest

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


@click.group(cls=StrictGroup)
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
    calibrate_fleet(address, gpu, nodes, plan_name, tdp_w, out_dir, resume=resume,
                    work_dir=work_dir, max_retries=max_retries, cpu_threads=cpu_threads,
                    crash=crash, echo=click.echo)


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
    request = ValidationRequest(
        plan_path, tuple(split_list(model, "--model")) if model else (),
        tuple(precision_list(precisions)), tuple(int_list(batches, "--batch")),
        Workload(new_tokens=tokens, prompt_tokens=prompt_tokens), reps)
    validate_fleet(address, request, out_dir, from_dir=from_dir, profile_path=profile_path,
                   gpu=gpu, nodes=nodes, resume=resume, work_dir=work_dir,
                   max_retries=max_retries, cpu_threads=cpu_threads, crash=crash, echo=click.echo)


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
@click.option("--force", is_flag=True, help="Replace existing --out and --csv files.")
@stack_option
def simulate(address, workers, gpus, profile_paths, models, precisions, batches, tokens,
             prompt_tokens, sizes, family, draws, seed, chunk_models, chunk_batches, out, csv_path,
             force, bnb_version):
    """`qtsim simulate` over a very large grid, chunked over Ray workers (tiles of models x
    batches), assembled into the same HDF5 one machine writes, bit for bit.

    \b
    Example:
      qtsim fleet simulate --gpu l4,h100-sxm --family mistral-7b --sizes 0.5e9:80e9:400 \\
          --batch 1:512:40 --draws 200 --chunk-models 50 --out sweep.h5
    """
    refuse_existing(out, force, "--out")
    refuse_existing(csv_path, force, "--csv")
    profiles, archs, fam, size_grid = load_grid_inputs(
        split_list(gpus, "--gpu") if gpus else [], profile_paths,
        split_list(models, "--model") if models else [], family, sizes,
        Workload(new_tokens=tokens, prompt_tokens=prompt_tokens), bnb_release=bnb_version)
    simulate_fleet(address, workers, profiles, archs, size_grid, parse_batches(batches), out,
                   family=fam, chunk_models=chunk_models, chunk_batches=chunk_batches,
                   precisions=precision_list(precisions), new_tokens=tokens,
                   prompt_tokens=prompt_tokens, n_draws=draws, seed=seed, csv_path=csv_path,
                   echo=click.echo)
