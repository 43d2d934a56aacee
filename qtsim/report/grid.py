"""``qtsim simulate``'s run: a surface computed, written to HDF5 (and CSV) all or nothing, its
figures drawn and a short summary, from names and a :class:`~qtsim.model.workload.Workload`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from qtsim.errors import QtsimError
from qtsim.model.architecture import check_context, load_architecture
from qtsim.model.precision import get_precision
from qtsim.model.stats import check_draws
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import load_profile
from qtsim.report import plots as qp
from qtsim.report.plots import save
from qtsim.simulate.dataset import (
    DIMS,
    grid_line,
    profiles,
    quantities,
    trust_status,
    write_csv,
    write_hdf5,
)
from qtsim.simulate.memory import check_surface
from qtsim.simulate.surface import n_blocks, parse_sizes, simulate, trap_map
from qtsim.simulate.surface import simulate as simulate_grid
from qtsim.simulate.thresholds import KIND_CODES

#: the figures ``--plots`` may ask for
PLOTS = ("trap", "fig1", "cor")


def simulate_to_files(gpus: Sequence[str], profile_paths: Sequence[str], models: Sequence[str],
                      precisions: Sequence[str], workload: Workload, out: str, *,
                      sizes: str | None = None, family: str | None = None,
                      csv_path: str | None = None, plot_dir: str | None = None,
                      plots: Sequence[str] = PLOTS, compress: bool = False,
                      trust_table: str | None = None, depth: float | None = None,
                      policy: str = "linear", n_draws: int = 0, seed: int = 0,
                      command: str = "", progress_bar: Callable | None = None,
                      echo: Callable[[str], None] = print, force: bool = False,
                      bnb_release: str | None = None) -> None:
    """Load the profiles (``gpus`` names, then ``profile_paths``) and ``models`` (names or
    config paths; ``family`` scaled to ``sizes``, ``"LO:HI:N"``), simulate the grid over
    ``workload.batch`` (:func:`qtsim.simulate.surface.simulate`) and write ``out`` (HDF5),
    ``csv_path`` and the ``plots`` into ``plot_dir``: every target is checked before computing
    and renamed into place only when all were written; an existing file is refused unless
    ``force``. ``progress_bar(total)`` gives a context manager with ``update(n)``; ``echo``
    receives the report lines.
    """
    profiles, archs, fam, size_grid = load_grid_inputs(gpus, profile_paths, models, family, sizes,
                                              workload, plots, bnb_release)
    _check_targets(out, csv_path, plot_dir, force)  # refuse before computing, not after
    n_models = len(archs) + (len(size_grid) if size_grid is not None else 0)
    check_grid_size(len(profiles), len(precisions), n_models, len(workload.batch), n_draws)
    total = len(profiles) * len(precisions) * n_blocks(max(n_models, 1),
                                                       len(workload.batch), n_draws)
    t0 = time.perf_counter()
    with (progress_bar or NoBar)(total) as bar:
        surface = simulate(profiles, archs, precisions, workload, size_grid, fam, trust_table,
                           depth, policy, n_draws=n_draws, seed=seed, progress=bar.update)
    echo(grid_line(surface, n_draws, time.perf_counter() - t0))
    with Outputs(force) as o:  # all or nothing: a failing figure leaves no half-written set behind
        write_hdf5(surface, o.tmp(out), command, compress=compress)
        done = [f"wrote {out} ({len(quantities(surface))} quantities)"]
        if csv_path:
            n = write_csv(surface, o.tmp(csv_path))
            done.append(f"wrote {csv_path} ({n} rows)")
        if plot_dir:
            for name, fig in _plots(surface, plots, profiles, archs, fam, size_grid, workload,
                                    n_draws, seed):
                path = str(Path(plot_dir) / name)
                save(fig, o.tmp(path))
                done.append(f"wrote {path}")
    for line in done:
        echo(line)
    echo(_summary(surface))


def check_grid_size(n_gpus: int, n_precisions: int, n_models: int, n_batches: int,
                    n_draws: int) -> None:
    """Refuse, before any work, too few draws for a band (:func:`qtsim.model.stats.check_draws`)
    and a grid whose surface cannot fit in this machine's memory
    (:func:`qtsim.simulate.memory.check_surface`)."""
    check_draws(n_draws)
    check_surface(n_gpus * n_precisions * max(n_models, 1) * n_batches, n_draws)


def load_grid_inputs(gpus, profile_paths, models, family, sizes, workload: Workload, plots=(),
                     bnb_release: str | None = None):
    """(profiles, architectures, family, size grid) of a simulate run (one machine or a fleet),
    refused with one line when a GPU is listed twice, a context is too long or a figure is
    unknown. Each profile comes with its host part and bitsandbytes stack (``bnb_release``:
    :meth:`~qtsim.profiles.hardware.HardwareProfile.for_serving`)."""
    if not gpus and not profile_paths:
        raise QtsimError("give --gpu GPU[,GPU...] or --profile FILE")
    profiles = [load_profile(g) for g in gpus] + [load_profile(path=p) for p in profile_paths]
    profiles = [p.for_serving(None, bnb_release) for p in profiles]
    names = [p.name for p in profiles]
    if len(set(names)) != len(names):
        raise QtsimError(f"GPU listed twice: {', '.join(names)}")
    archs = [load_architecture(m) for m in models]
    fam = load_architecture(family) if family else None
    for a in [*archs, *([fam] if fam else [])]:
        check_context(a, workload.prompt_tokens, workload.new_tokens)
    bad = [p for p in plots if p not in PLOTS]
    if bad:
        raise QtsimError(f"--plots: unknown figure {bad[0]!r} (choose from {', '.join(PLOTS)})")
    return profiles, archs, fam, parse_sizes(sizes) if sizes else None


class NoBar:
    """A progress bar that shows nothing."""

    def __init__(self, total: int):
        self.total = total

    def __enter__(self):
        return self

    def update(self, n: int = 1) -> None:
        pass

    def __exit__(self, *exc):
        return False


def _plots(surface, plots, profiles, archs, fam, size_grid, workload: Workload, draws, seed):
    """(file name, figure) for every figure asked for."""
    out = []
    batches = [float(x) for x in workload.batch]
    c = {k: surface[k].values.tolist() for k in ("precision", "model", "synthetic", "batch")}
    quant = [p for p in c["precision"] if get_precision(p).quantized]
    family = fam or (archs[0] if archs else None)
    if "trap" in plots and family is not None and quant:
        lo, hi = (size_grid.min(), size_grid.max()) if size_grid is not None else (3e8, 1e11)
        sizes = np.geomspace(lo, hi, 60)
        b_lo, b_hi = (min(batches), max(batches)) if max(batches) >= 16 * min(batches) else (1, 512)
        grid = np.unique(np.round(np.geomspace(b_lo, b_hi, 48)))
        maps = [trap_map(prof, family, workload.replace(precision=p, batch=grid), sizes,
                         draws or 200, seed)
                for prof in profiles for p in quant]
        marks = [(a.name, a.n_params) for a in archs]
        out.append(("trap_map.png", qp.plot_trap_maps(maps, ncols=len(quant), marks=marks)))
    named = [m for m, syn in zip(c["model"], c["synthetic"], strict=True) if not syn]
    if "fig1" in plots and named:
        # the native 16-bit bars are the comparison Fig. 1 exists for: evaluate them at the
        # figure's batch when the grid did not ask for the native precision
        missing = sorted({p.native for p in profiles} - set(c["precision"]))
        at = Workload(batch=[c["batch"][0]], new_tokens=workload.new_tokens,
                      prompt_tokens=workload.prompt_tokens)
        native = (simulate_grid(profiles, archs, missing, at, n_draws=draws, seed=seed,
                                thresholds=False)
                  if missing and archs else None)
        for m in named:
            out.append((f"fig1_{_safe(m)}.png", qp.plot_fig1_panel(surface, m, native=native)))
    if "cor" in plots and len(batches) > 1 and quant:
        out.append(("cor_vs_batch.png", qp.plot_cor_vs_batch(surface, named or None)))
    return out


def refuse_existing(path, force: bool, option: str = "") -> None:
    """A one-line refusal to replace an existing file unless ``force`` (``--force``)."""
    if path and not force and Path(path).is_file():
        raise QtsimError(f"{path} exists{f' ({option})' if option else ''}: pass --force to "
                         "replace it, or choose another name")


def _check_targets(out, csv_path, plot_dir, force: bool = False) -> None:
    """Create the output folders and refuse targets that cannot be written (or that exist,
    unless ``force``), before any work."""
    refuse_existing(out, force, "--out")
    refuse_existing(csv_path, force, "--csv")
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
    return re.sub(r"[^A-Za-z0-9._~+-]+", "_", name).strip("_") or "model"


class Outputs:
    """Write every output under a temporary name beside its target, and rename them all into
    place only when every one succeeded (folders are created as needed); on any failure the
    temporaries are removed and no target is touched."""

    def __init__(self, force: bool = True):
        self.pending: list[tuple[Path, Path]] = []
        self.force = force

    def tmp(self, target) -> str:
        t = Path(target)
        try:
            t.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QtsimError(f"{t.parent}: cannot create the folder ({e.strerror or e})") from None
        if t.is_dir():
            raise QtsimError(f"{t}: is a folder, give a file name")
        refuse_existing(t, self.force)
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
    c = {d: surface[d].values.tolist() for d in DIMS}
    quant = [p for p in c["precision"] if get_precision(p).quantized]
    rows = len(c["gpu"]) * len(quant) * len(c["model"])
    b0 = c["batch"][0]
    foot = (f"{surface.attrs['note']}; profiles: "
            + ", ".join(f"{p['name']} ({p['source']}, {p['priors']} priors, "
                        f"{p.get('bitsandbytes', 'bitsandbytes not stated')}"
                        + ("" if p.get("origin", "shipped") == "shipped" else f"; {p['origin']}")
                        + ")" for p in profiles(surface)))
    foot += "".join(f"\nprofile {p['name']}: {n}" for p in profiles(surface)
                    for n in p.get("notes", []))
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
                si_ = v("si")
                if not v("fits"):  # nothing to compare: it cannot run (its figures are NaN)
                    lines.append(f"{g:24s} {p:5s} {m[:18]:18s} {'DOES NOT FIT':>20s} "
                                 f"({v('peak_memory_gib'):.3g} GiB)  {trust[(p, m)]}")
                    continue
                if not v("native_fits"):
                    lines.append(f"{g:24s} {p:5s} {m[:18]:18s} {'ONLY OPTION':>20s} "
                                 f"(16-bit does not fit)  {trust[(p, m)]}")
                    continue
                tr = ("yes" if v("trapped_energy") else "no") + "|" + (
                    "yes" if v("trapped_energy_hli") else "no")
                ratio = f"{v('energy_ratio'):.2f}|{v('energy_ratio_hli'):.2f}"
                lines.append(f"{g:24s} {p:5s} {m[:18]:18s} {ratio:>11s} {tr:>8s} "
                             f"{si_ if np.isfinite(si_) else float('nan'):6.3f}  {bstar:16s} "
                             f"{trust[(p, m)]}")
    return "\n".join([*lines, foot])
