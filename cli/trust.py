"""``qtsim trust``: train the probe's small model, probe it per precision, report a probe."""

from __future__ import annotations

import json
from dataclasses import fields

import click

from qtsim.calibration.measure.device import require_measurement_stack
from qtsim.calibration.trust.hops_probe import check_settings
from qtsim.calibration.trust.hops_probe import probe as run_probe
from qtsim.calibration.trust.hops_train import Recipe
from qtsim.calibration.trust.hops_train import train as run_train
from qtsim.cli.options import FORMATS, int_list, split_list
from qtsim.cli.simulate import LateBar
from qtsim.errors import QtsimError
from qtsim.trust import report
from qtsim.trust.shipped import shipped_checkpoint, shipped_record


@click.group()
def trust():
    """Trust measured, not cited: a multi-hop reasoning probe on a small model trained here.

    A decoder-only transformer (LlamaForCausalLM, ~3M parameters) learns pointer chasing: follow
    a random map k hops, writing one node per generated token. `probe` loads it at fp32, fp16,
    bf16, LLM.int8() (threshold 6 and 0), NF4 and NF4 + double quant with bitsandbytes on this
    CPU and measures accuracy per hop count k with 95% intervals, the per-hop reliability and
    eps of eq. 7 (T = T_ref (1 - eps)^k) and Theorem 4.5 (batch 1 vs 8). Its trust.csv feeds
    `qtsim trap --trust`. `train` and `probe` need the calibrate extra (torch); `report` does not.

    \b
    Examples:
      qtsim trust report                          # the shipped probe (no torch)
      qtsim trust probe --out my-probe/           # re-measure the shipped checkpoint
      qtsim trust train --out my-model/           # retrain it (a few minutes of CPU)
      qtsim trap --gpu l4 --model data/trust/hops-llama-3m/config.json --precision nf4 \\
          --prompt-tokens 19 --tokens 8 --trust data/trust/probe-cpu/trust.csv
    """


@trust.command()
@click.option("--out", "out_dir", default="hops-llama-3m", show_default=True,
              type=click.Path(file_okay=False),
              help="Folder for the checkpoint (safetensors, config.json, recipe.json); its name "
                   "is the model's name in the trust table.")
@click.option("--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Change one recipe field (repeatable), e.g. --set steps=400 --set seed=1. "
                   "Fields: n_nodes, train_hops, hidden_size, intermediate_size, "
                   "num_hidden_layers, num_attention_heads, steps, batch, lr, warmup_steps, "
                   "weight_decay, seed, threads, save_dtype, ...")
@click.option("--format", "fmt", default="text", show_default=True, type=FORMATS)
@click.option("--no-progress", is_flag=True)
def train(out_dir, overrides, fmt, no_progress):
    """Train the probe's model on this CPU and write its checkpoint (reproduces the shipped one).

    The default recipe (seed 0, 1 thread, 130 steps of 64 chains of 8 hops over 16-node maps)
    is the shipped checkpoint's; recipe.json records it with the versions, the loss curve,
    the CPU time and the teacher-forced accuracy per hop on held-out problems.

    \b
    Example:
      qtsim trust train --out data/trust/hops-llama-3m      # the shipped checkpoint
      qtsim trust train --out quick/ --set steps=20 --set hidden_size=64 --set num_hidden_layers=1
    """
    require_measurement_stack()

    recipe = _recipe(Recipe, overrides)
    with LateBar(recipe.steps, "training", after_s=0 if not no_progress else float("inf")) as bar:
        rec = run_train(recipe, out_dir, progress=bar.update)
    if fmt == "json":
        click.echo(json.dumps(rec, indent=2))
    elif fmt == "csv":
        click.echo("step,loss")
        for step, loss in rec["loss_curve"]["rows"]:
            click.echo(f"{step},{loss}")
    else:
        tf = rec["teacher_forced_accuracy_per_hop"]
        click.echo(f"trained {rec['model']}: {rec['n_params'] / 1e6:.2f}M parameters, "
                   f"{recipe.steps} steps in {rec['train_cpu_s']:.0f} s of CPU "
                   f"({rec['train_wall_s']:.0f} s wall, {recipe.threads} thread(s)); final loss "
                   f"{rec['loss_curve']['rows'][-1][1]:.4f}")
        click.echo(f"  held-out next-hop accuracy (teacher forced), hops 1..{len(tf)}: "
                   + " ".join(f"{100 * a:.1f}" for a in tf) + " %")
        click.echo(f"  wrote {out_dir} (weights sha256 {rec['weights_sha256'][:16]}); probe it "
                   f"with `qtsim trust probe --checkpoint {out_dir}`")


def _recipe(cls, overrides):
    types = {f.name: f.type for f in fields(cls)}
    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise QtsimError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(types)}")
        conv = {"int": int, "float": float}.get(str(types[key]), str)
        try:
            values[key] = conv(value)
        except ValueError:
            raise QtsimError(f"--set {item!r}: {value!r} is not a valid {types[key]}") from None
    return cls(**values)


@trust.command()
@click.option("--checkpoint", type=click.Path(file_okay=False),
              help="A `qtsim trust train` folder (default: the shipped data/trust/hops-llama-3m).")
@click.option("--settings", default="fp32,fp16,bf16,int8,int8_t0,nf4,nf4dq", show_default=True,
              help="Comma-separated: fp32, fp16, bf16, int8 (LLM.int8() threshold 6), int8_t0 "
                   "(threshold 0), nf4, nf4dq (NF4 + double quant).")
@click.option("--max-hops", default=8, show_default=True, type=click.IntRange(min=1),
              help="Probe k = 1..K hops.")
@click.option("--problems", "n_per_hop", default=1000, show_default=True,
              type=click.IntRange(min=1), help="Problems per hop count (fresh ones for each k).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of the test problems (the task family's test split).")
@click.option("--batch", default=250, show_default=True, type=click.IntRange(min=1),
              help="Batch for the accuracy runs.")
@click.option("--check-batch", default="1,8", show_default=True,
              help="Batch sizes of the Theorem 4.5 check (same problems at each).")
@click.option("--check-problems", default=96, show_default=True, type=click.IntRange(min=1),
              help="Problems (at k = K) decoded at every --check-batch.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="torch intra-op threads.")
@click.option("--compute-dtype", default="fp16", show_default=True,
              type=click.Choice(["fp16", "bf16", "fp32"]), help="bnb_4bit_compute_dtype.")
@click.option("--reference", default=None,
              help="Setting eps is measured against (default fp16, T_SI's reference).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write probe.json, trust.csv (for --trust), table.csv and accuracy_vs_hops.png.")
@click.option("--format", "fmt", default="text", show_default=True, type=FORMATS)
@click.option("--no-progress", is_flag=True)
def probe(checkpoint, settings, max_hops, n_per_hop, seed, batch, check_batch, check_problems,
          threads, compute_dtype, reference, out_dir, fmt, no_progress):
    """Measure accuracy per hop count for each precision and bitsandbytes setting on this CPU.

    Every figure is measured: greedy decoding of fresh seeded problems, answers checked
    exactly. Reports accuracy per k with 95% Clopper-Pearson intervals, the per-hop
    reliability r (accuracy = r^k) with its goodness of fit, eps against the reference with
    eq. 7's curve, and Theorem 4.5's batch check. A few minutes with the defaults (the shipped probe: 290 s on 1 thread).

    \b
    Example:
      qtsim trust probe --out my-probe/
      qtsim trust probe --settings fp16,nf4 --max-hops 4 --problems 100 --format json
    """
    require_measurement_stack()

    names = check_settings(split_list(settings, "--settings"))
    ckpt = checkpoint or shipped_checkpoint()
    with LateBar(len(names) * (max_hops + 1), "probing",
                 after_s=0 if not no_progress else float("inf")) as bar:
        rec = run_probe(ckpt, names, max_hops, n_per_hop, seed, batch,
                        tuple(int_list(check_batch, "--check-batch")), check_problems,
                        None, threads, compute_dtype, progress=bar.update)
    _emit(rec, reference, out_dir, fmt, report)


@trust.command("report")
@click.argument("record", required=False, type=click.Path(dir_okay=False))
@click.option("--reference", default=None,
              help="Setting eps is measured against (default fp16, T_SI's reference).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write probe.json, trust.csv, table.csv and accuracy_vs_hops.png here.")
@click.option("--format", "fmt", default="text", show_default=True, type=FORMATS)
def report_cmd(record, reference, out_dir, fmt):
    """Report a recorded probe (probe.json; default the shipped one) without torch.

    \b
    Example:
      qtsim trust report --format csv
      qtsim trust report my-probe/probe.json --out my-probe/
    """
    rec = report.read_record(record or shipped_record())
    _emit(rec, reference, out_dir, fmt, report)


def _emit(rec, reference, out_dir, fmt, report):
    an = report.analyse(rec, reference)
    click.echo(report.render(rec, an, fmt))
    if out_dir:
        written = report.write_outputs(rec, an, out_dir)
        click.echo("wrote " + ", ".join(written.values()), err=True)
