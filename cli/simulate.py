"""``qtsim simulate``: whole grids into HDF5 (and CSV), with plots."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from qtsim.cli.options import bnb_options, bnb_settings, int_list, precision_list, split_list

PLOTS = ("trap", "fig1", "cor")


def parse_batches(text: str) -> list[int]:
    """``1,2,4`` or ``LO:HI:N`` (N geometric steps, rounded to distinct integers)."""
    import numpy as np

    if ":" in text:
        try:
            lo, hi, n = (float(x) for x in text.split(":"))
        except ValueError:
            raise click.BadParameter(f"--batch {text!r}: give LO:HI:N, e.g. 1:256:9") from None
        if not (1 <= lo <= hi) or n < 1:
            raise click.BadParameter(f"--batch {text!r}: need 1 <= LO <= HI and N >= 1")
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
    import shlex

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


@click.command()
@click.option("--gpu", "gpus", help="Hardware profiles, comma-separated names or aliases.")
@click.option("--profile", "profile_paths", multiple=True, type=click.Path(dir_okay=False),
              help="A profile TOML file (repeatable); added after --gpu.")
@click.option("--model", "models", help="Models, comma-separated: shipped names or config.json paths.")
@click.option("--precision", "precisions", default="fp16,int8,nf4", show_default=True,
              help="Weight precisions, comma-separated (each compared with the native 16-bit run).")
@click.option("--batch", "batches", default="1,2,4,8,16,32,64,128", show_default=True,
              help="Batch sizes: a comma list, or LO:HI:N geometric (rounded to integers).")
@click.option("--tokens", default=256, show_default=True, type=click.IntRange(min=1),
              help="New tokens per query K (the paper's atomic hops).")
@click.option("--prompt-tokens", default=128, show_default=True, type=click.IntRange(min=0),
              help="Prompt length per query.")
@click.option("--sizes", help="Synthetic model sizes LO:HI:N (parameters, geometric) of --family, "
                              "e.g. 0.5e9:80e9:40; appended to the model axis.")
@click.option("--family", help="Architecture scaled for --sizes and N* (default: the first --model).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="HDF5 file to write.")
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
def simulate(gpus, profile_paths, models, precisions, batches, tokens, prompt_tokens, sizes, family,
             out, compress, csv_path, plot_dir, which_plots, draws, seed, trust_table, depth, policy,
             double_quant, int8_threshold, compute_dtype):
    """Evaluate J/query (power model, HLI and eq. 19), latency, tok/s, COR, B*, N* and the SI
    pillars over the whole grid GPU x precision x model x batch, in one vectorised pass per
    (GPU, precision), into HDF5 (dimension scales, units, provenance).

    \b
    Examples:
      qtsim simulate --gpu l4,h100-sxm --model mistral-7b,qwen3-0.6b --batch 1:256:9 --out grid.h5
      qtsim simulate --gpu h100 --family mistral-7b --sizes 0.5e9:80e9:40 --precision int8,nf4 \\
          --draws 200 --out sweep.h5 --csv sweep.csv --plot figs/
    """
    from qtsim.errors import QtsimError
    from qtsim.model.architecture import check_context, load_architecture
    from qtsim.profiles.hardware import load_profile
    from qtsim.report.plots import save
    from qtsim.simulate.dataset import DIMS, n_points, quantities, write_csv, write_hdf5
    from qtsim.simulate.surface import n_blocks, parse_sizes
    from qtsim.simulate.surface import simulate as run

    ctx = click.get_current_context()
    bnb = bnb_settings(double_quant, int8_threshold, compute_dtype)
    if not gpus and not profile_paths:
        raise QtsimError("give --gpu GPU[,GPU...] or --profile FILE")
    profiles = [load_profile(g) for g in (split_list(gpus, "--gpu") if gpus else [])]
    profiles += [load_profile(path=p) for p in profile_paths]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise QtsimError(f"GPU listed twice: {', '.join(names)}")
    archs = [load_architecture(m) for m in split_list(models, "--model")] if models else []
    fam = load_architecture(family) if family else None
    for a in [*archs, *([fam] if fam else [])]:
        check_context(a, prompt_tokens, tokens)
    size_grid = parse_sizes(sizes) if sizes else None
    b = parse_batches(batches)
    precs = precision_list(precisions)
    plots = split_list(which_plots, "--plots")
    bad = [p for p in plots if p not in PLOTS]
    if bad:
        raise QtsimError(f"--plots: unknown figure {bad[0]!r} (choose from {', '.join(PLOTS)})")

    _check_targets(out, csv_path, plot_dir)  # refuse before computing, not after
    n_models = len(archs) + (len(size_grid) if size_grid is not None else 0)
    total = len(profiles) * len(precs) * n_blocks(max(n_models, 1), len(b), draws)
    t0 = time.perf_counter()
    with LateBar(total, "simulating") as bar:
        surface = run(profiles, archs, precs, b, tokens, prompt_tokens, size_grid, fam,
                      trust_table, depth, policy, n_draws=draws, seed=seed, progress=bar.update,
                      bnb=bnb)
    elapsed = time.perf_counter() - t0
    g, p, m, nb = (surface.sizes[d] for d in DIMS)
    click.echo(f"{g} GPU x {p} precision x {m} model x {nb} batch = {n_points(surface)} points"
               f"{f', {draws} draws' if draws else ''} in {elapsed:.2f} s")
    with Outputs() as o:  # all or nothing: a failing figure leaves no half-written set behind
        write_hdf5(surface, o.tmp(out), _command_line(ctx), compress=compress)
        done = [f"wrote {out} ({len(quantities(surface))} quantities)"]
        if csv_path:
            n = write_csv(surface, o.tmp(csv_path))
            done.append(f"wrote {csv_path} ({n} rows)")
        if plot_dir:
            for name, fig in _plots(surface, plots, profiles, archs, fam, size_grid, b, tokens,
                                    prompt_tokens, draws, seed, bnb):
                path = str(Path(plot_dir) / name)
                save(fig, o.tmp(path))
                done.append(f"wrote {path}")
    for line in done:
        click.echo(line)
    click.echo(_summary(surface))


def _plots(surface, plots, profiles, archs, fam, size_grid, batches, tokens, prompt_tokens,
           draws, seed, bnb=None):
    """(file name, figure) for every figure asked for."""
    import numpy as np

    from qtsim.model.precision import get_precision
    from qtsim.report import plots as qp
    from qtsim.simulate.surface import simulate as simulate_grid
    from qtsim.simulate.surface import trap_map

    out = []
    c = {k: surface[k].values.tolist() for k in ("precision", "model", "synthetic", "batch")}
    quant = [p for p in c["precision"] if get_precision(p).quantized]
    family = fam or (archs[0] if archs else None)
    if "trap" in plots and family is not None and quant:
        lo, hi = (size_grid.min(), size_grid.max()) if size_grid is not None else (3e8, 1e11)
        sizes = np.geomspace(lo, hi, 60)
        b_lo, b_hi = (min(batches), max(batches)) if max(batches) >= 16 * min(batches) else (1, 512)
        grid = np.unique(np.round(np.geomspace(b_lo, b_hi, 48)))
        maps = [trap_map(prof, family, p, sizes, grid, tokens, prompt_tokens, draws or 200, seed, bnb)
                for prof in profiles for p in quant]
        marks = [(a.name, a.n_params) for a in archs]
        out.append(("trap_map.png", qp.plot_trap_maps(maps, ncols=len(quant), marks=marks)))
    named = [m for m, syn in zip(c["model"], c["synthetic"], strict=True) if not syn]
    if "fig1" in plots and named:
        # the native 16-bit bars are the comparison Fig. 1 exists for: evaluate them at the
        # figure's batch when the grid did not ask for the native precision
        missing = sorted({p.native for p in profiles} - set(c["precision"]))
        native = (simulate_grid(profiles, archs, missing, [c["batch"][0]], tokens,
                                prompt_tokens, n_draws=draws, seed=seed, thresholds=False)
                  if missing and archs else None)
        for m in named:
            out.append((f"fig1_{_safe(m)}.png", qp.plot_fig1_panel(surface, m, native=native)))
    if "cor" in plots and len(batches) > 1 and quant:
        out.append(("cor_vs_batch.png", qp.plot_cor_vs_batch(surface, named or None)))
    return out


def _check_targets(out, csv_path, plot_dir) -> None:
    """Create the output folders and refuse targets that cannot be written, before any work."""
    from qtsim.errors import QtsimError

    folders = [Path(p).parent for p in (out, csv_path) if p] + ([Path(plot_dir)] if plot_dir else [])
    for f in folders:
        try:
            f.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QtsimError(f"{f}: cannot create the folder ({e.strerror or e})") from None
        if not os.access(f, os.W_OK):
            raise QtsimError(f"{f}: folder is not writable")
    for p in (out, csv_path):
        if p and Path(p).is_dir():
            raise QtsimError(f"{p}: is a folder, give a file name")


def _safe(name: str) -> str:
    """A model name as a file-name part (user names may hold '/', spaces, ...)."""
    import re

    return re.sub(r"[^A-Za-z0-9._~+-]+", "_", name).strip("_") or "model"


class Outputs:
    """Write every output under a temporary name beside its target, and rename them all into
    place only when every one succeeded (folders are created as needed); on any failure the
    temporaries are removed and no target is touched."""

    def __init__(self):
        self.pending: list[tuple[Path, Path]] = []

    def tmp(self, target) -> str:
        from qtsim.errors import QtsimError

        t = Path(target)
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QtsimError(f"{t.parent}: cannot create the folder ({e.strerror or e})") from None
        if t.is_dir():
            raise QtsimError(f"{t}: is a folder, give a file name")
        tmp = t.with_name(f".{t.stem}.{os.getpid()}.partial{t.suffix}")
        self.pending.append((tmp, t))
        return str(tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for tmp, target in self.pending:
                os.replace(tmp, target)
        else:
            for tmp, _ in self.pending:
                tmp.unlink(missing_ok=True)
        return False


def _summary(surface) -> str:
    """A few lines per (GPU, quantized precision, model) at the smallest batch; large grids skip it."""
    import numpy as np

    from qtsim.model.precision import get_precision
    from qtsim.simulate.dataset import DIMS, profiles, trust_status
    from qtsim.simulate.surface import KIND_CODES

    c = {d: surface[d].values.tolist() for d in DIMS}
    quant = [p for p in c["precision"] if get_precision(p).quantized]
    rows = len(c["gpu"]) * len(quant) * len(c["model"])
    b0 = c["batch"][0]
    foot = (f"{surface.attrs['note']}; profiles: "
            + ", ".join(f"{p['name']} ({p['source']}, {p['priors']} priors)"
                        for p in profiles(surface)))
    if rows == 0 or rows > 40:
        return foot
    trust = trust_status(surface)
    lines = [f"at batch {b0:g}: J/query ratio and trapped on energy by the power model | HLI; "
             "SI; batches trapped (B*)",
             f"{'gpu':24s} {'prec':5s} {'model':18s} {'E ratio':>11s} {'trapped':>8s} {'SI':>6s}  "
             f"{'trapped at':16s} trust"]
    for g in c["gpu"]:
        for p in quant:
            for m in c["model"]:
                def v(name, g=g, p=p, m=m):
                    return float(surface[name].sel(gpu=g, precision=p, model=m, batch=b0))

                bs = float(surface["b_star"].sel(gpu=g, precision=p, model=m))
                top = float(surface["b_star_max"].sel(gpu=g, precision=p, model=m))
                kind = KIND_CODES[int(surface["b_star_kind"].sel(gpu=g, precision=p, model=m))]
                bstar = {"crossing": f"B < {bs:.3g}", "reverse": f"B >= {bs:.3g}",
                         "trapped_everywhere": f"all B <= {top:g}",
                         "never_trapped": f"none B <= {top:g}",
                         "native_oom": "native OOM"}[kind]
                tr = ("yes" if v("trapped_energy") else "no") + "|" + (
                    "yes" if v("trapped_energy_hli") else "no")
                ratio = f"{v('energy_ratio'):.2f}|{v('energy_ratio_hli'):.2f}"
                si_ = v("si")
                lines.append(f"{g:24s} {p:5s} {m[:18]:18s} {ratio:>11s} {tr:>8s} "
                             f"{si_ if np.isfinite(si_) else float('nan'):6.3f}  {bstar:16s} "
                             f"{trust[(p, m)]}")
    return "\n".join([*lines, foot])
