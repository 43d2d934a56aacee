"""``qtsim simulate``: whole grids into HDF5 (and CSV), with plots."""

from __future__ import annotations

import shlex
import sys
import time

import click
import numpy as np

from qtsim.cli.options import (
    StrictCommand,
    bnb_options,
    bnb_settings,
    int_list,
    precision_list,
    split_list,
    stack_option,
)
from qtsim.errors import QtsimError
from qtsim.model.workload import Workload
from qtsim.report.grid import simulate_to_files
from qtsim.simulate.memory import MAX_BATCHES


def parse_batches(text: str) -> list[int]:
    """``1,2,4``, ``LO:HI:N`` (N geometric steps, rounded to distinct integers) or ``LO:HI``
    (every integer from LO to HI)."""
    if ":" in text:
        try:
            parts = [float(x) for x in text.split(":")]
            lo, hi, n = parts if len(parts) == 3 else (*parts, None)
        except ValueError:
            raise QtsimError(f"--batch {text!r}: give LO:HI:N, e.g. 1:256:9, or LO:HI "
                             "(every integer)") from None
        if not (1 <= lo <= hi) or (n is not None and n < 1) or not np.isfinite(hi):
            raise QtsimError(f"--batch {text!r}: need 1 <= LO <= HI and N >= 1")

        span = np.floor(hi) - np.ceil(lo) + 1  # distinct integers it can round to
        most = span if n is None else min(n, span)
        if most > MAX_BATCHES:
            raise QtsimError(f"--batch {text!r}: up to {most:,.0f} batch sizes; give at "
                             f"most {MAX_BATCHES:,} (every batch holds dozens of "
                             "quantities per GPU, precision and model)")
        if n is None:
            return list(range(int(np.ceil(lo)), int(hi) + 1))
        return np.unique(np.round(np.geomspace(lo, hi, int(n)))).astype(int).tolist()
    return sorted(set(int_list(text, "--batch")))


class LateBar:
    """A progress bar on stderr that appears only once the work has taken ``after_s`` seconds
    (short runs stay quiet; anything longer shows how far it got and how long is left)."""

    def __init__(self, length: int, label: str, after_s: float = 2.0):
        self.length, self.label, self.after_s = length, label, after_s
        self.done, self.bar, self.t0 = 0, None, time.perf_counter()

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is None and time.perf_counter() - self.t0 >= self.after_s:
            self.bar = click.progressbar(length=self.length, label=self.label, file=sys.stderr)
            self.bar.__enter__()
            self.bar.update(self.done)
        elif self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False


def _command_line(ctx) -> str:
    """The invocation, rebuilt from the parsed options (recorded in the HDF5 file)."""
    parts = ["qtsim", ctx.info_name]
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v in (None, False, ()) or not getattr(p, "opts", None):
            continue
        if v is True:
            parts.append(p.opts[0])
            continue
        for x in v if isinstance(v, tuple) else (v,):
            parts += [p.opts[0], shlex.quote(str(x))]
    return " ".join(parts)


@click.command(cls=StrictCommand)
@click.option("--gpu", "gpus", help="Hardware profiles, comma-separated names or aliases.")
@click.option("--profile", "profile_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A profile TOML file (repeatable); added after --gpu.")
@click.option("--model", "models", help="Models, comma-separated: shipped names or config.json paths.")
@click.option("--precision", "precisions", default="fp16,int8,nf4", show_default=True,
              help="Weight precisions, comma-separated (each compared with the native 16-bit run).")
@click.option("--batch", "batches", default="1,2,4,8,16,32,64,128", show_default=True,
              help="Batch sizes: a comma list, LO:HI:N geometric (rounded to integers) or LO:HI "
                   "(every integer).")
@click.option("--tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="New tokens per query K (the paper's atomic hops).")
@click.option("--prompt-tokens", default=128, show_default=True, type=click.IntRange(min=0),
              help="Prompt length per query.")
@click.option("--sizes", help="Synthetic model sizes LO:HI:N (parameters, geometric) of --family, "
                              "e.g. 0.5e9:80e9:40; appended to the model axis.")
@click.option("--family", help="Architecture scaled for --sizes and N* (default: the first --model).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write.")
@click.option("--force", is_flag=True,
              help="Replace existing output files (--out, --csv, figures); refused otherwise.")
@click.option("--compress", is_flag=True,
              help="gzip the HDF5 datasets (level 1, shuffled): about 3.5x smaller, about 1.3 s "
                   "slower per 10^6 points.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False),
              help="Also write every value in long format (gpu,precision,model,n_params,batch,quantity,value,unit).")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG figures here.")
@click.option("--plots", "which_plots", default="trap,fig1,cor", show_default=True,
              help="Figures to write with --plot: trap (trap map), fig1 (paper Fig. 1 panel), cor (COR vs batch).")
@click.option("--draws", default=0, show_default=True, type=click.IntRange(min=0, max=100000),
              help="Monte-Carlo draws of the profile's constants: adds 16/84% bands and p_trapped_*.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the draws.")
@click.option("--trust", "trust_table", type=click.Path(dir_okay=False),
              help="CSV of accuracies (model,task,precision,accuracy,source) for the trust pillar.")
@click.option("--depth", type=click.FloatRange(min=0, min_open=True),
              help="Reasoning depth M (logical steps) to move published accuracies to: "
                   "T_SI = (1 - eps_p)^M, flagged extrapolated.")
@click.option("--policy", default="linear", show_default=True, type=click.Choice(["linear", "geometric"]),
              help="SI aggregation: linear (eq. 6) or geometric (Remark 3.1).")
@bnb_options
@stack_option
def simulate(gpus, profile_paths, models, precisions, batches, tokens, prompt_tokens, sizes, family,
             out, force, compress, csv_path, plot_dir, which_plots, draws, seed, trust_table, depth, policy,
             double_quant, int8_threshold, compute_dtype, bnb_version):
    """Evaluate J/query (power model, HLI and eq. 19), latency, tok/s, COR, B*, N* and the SI
    pillars over the whole grid GPU x precision x model x batch, in one vectorised pass per
    (GPU, precision), into HDF5 (dimension scales, units, provenance).

    \b
    Examples:
      qtsim simulate --gpu l4,h100-sxm --model mistral-7b,qwen3-0.6b --batch 1:256:9 --out grid.h5
      qtsim simulate --gpu h100 --family mistral-7b --sizes 0.5e9:80e9:40 --precision int8,nf4 \\
          --draws 200 --out sweep.h5 --csv sweep.csv --plot figs/
    """
    workload = Workload(batch=parse_batches(batches), new_tokens=tokens,
                        prompt_tokens=prompt_tokens,
                        bnb=bnb_settings(double_quant, int8_threshold, compute_dtype))
    simulate_to_files(split_list(gpus, "--gpu") if gpus else [], profile_paths,
                      split_list(models, "--model") if models else [],
                      precision_list(precisions), workload, out, sizes=sizes, family=family,
                      csv_path=csv_path, plot_dir=plot_dir,
                      plots=split_list(which_plots, "--plots"), compress=compress,
                      trust_table=trust_table, depth=depth, policy=policy, n_draws=draws,
                      seed=seed, command=_command_line(click.get_current_context()),
                      progress_bar=lambda total: LateBar(total, "simulating"), echo=click.echo,
                      force=force, bnb_release=bnb_version)
