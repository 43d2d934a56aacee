"""Thresholds: where quantized and native energy-per-query curves cross (B*, N*), vectorised.

Shared by :class:`qtsim.simulate.simulator.Simulator` (one model) and :mod:`qtsim.simulate.surface` (whole grids):
the batch grid, the memory limit, the kernel-switch rule at batch 1 -> 2 and the uncertainty
bands live here once.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from qtsim.model import physical
from qtsim.model.architecture import ArchCounts, Architecture

if TYPE_CHECKING:
    from qtsim.simulate.simulator import Simulator

GIB = 2**30
BAND = (16.0, 84.0)  # percentiles of the draws: a 68% band, one sigma for a normal
KIND_NAMES = {0: "crossing", 1: "reverse", 2: "trapped_everywhere", 3: "never_trapped"}
KIND_CODES = {**KIND_NAMES, 4: "native_oom"}
B_MAX = 4096.0  # B* search range
B_GRID = 200
N_RANGE = (1e8, 1e12)  # N* search range, parameters
N_GRID = 160


def map_counts(counts: ArchCounts, fn) -> ArchCounts:
    return ArchCounts(**{f.name: fn(np.asarray(getattr(counts, f.name), float))
                         for f in dataclasses.fields(ArchCounts)})


def grid_eval(sim: Simulator, counts: ArchCounts, precision: str, batch, new_tokens,
              prompt_tokens, draws: bool = False) -> dict:
    """``sim.evaluate`` on the outer grid models x batches: arrays (M, B), or (n, M, B) with draws.

    ``counts`` fields are 1-D (M,); ``batch`` is (B,) or per-model (M, B). Central values
    broadcast without copies; draws (whose parameters carry shape (n, 1)) evaluate the flattened
    grid and reshape.
    """
    b = np.asarray(batch, float)
    m = np.size(np.asarray(counts.n_params))
    shape = (m, b.shape[-1])
    if not draws:
        col = map_counts(counts, lambda a: a.reshape(-1, 1) if a.size == m else a)
        out = sim.evaluate(col, precision, b, new_tokens, prompt_tokens)
        return {k: np.broadcast_to(v, shape) for k, v in out.items()}
    flat = map_counts(counts, lambda a: np.broadcast_to(a.reshape(-1, 1) if a.size == m else a,
                                                         shape).ravel())
    out = sim.evaluate(flat, precision, np.broadcast_to(b, shape).ravel(), new_tokens,
                       prompt_tokens, draws=True)
    return {k: np.asarray(v).reshape(np.shape(v)[:-1] + shape) for k, v in out.items()}


def crossing(x, delta):
    """First sign change of ``delta`` along its last axis, interpolated in log x.

    ``x`` is increasing along the last axis and may differ per row (broadcastable to ``delta``).
    Returns (value, kind) with kind codes 0 crossing (+ to -), 1 reverse (- to +),
    2 positive everywhere (value inf), 3 negative everywhere (value 0).
    """
    d = np.asarray(delta, float)
    lx = np.broadcast_to(np.log(np.asarray(x, float)), d.shape)
    pos = d > 0
    change = pos[..., 1:] != pos[..., :1]
    has = change.any(axis=-1)
    i = np.where(has, change.argmax(axis=-1), 0)
    j = np.minimum(i + 1, d.shape[-1] - 1)

    def take(a, k):
        return np.take_along_axis(a, k[..., None], -1)[..., 0]

    d0, d1, x0, x1 = take(d, i), take(d, j), take(lx, i), take(lx, j)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        frac = np.where(d0 != d1, d0 / (d0 - d1), 0.0)
        val = np.where(has, np.exp(x0 + frac * (x1 - x0)), np.where(pos[..., 0], np.inf, 0.0))
    kind = np.where(has, np.where(pos[..., 0], 0, 1), np.where(pos[..., 0], 2, 3))
    return val, kind


def nan_percentiles(x, qs=BAND):
    """Percentiles along axis 0 ignoring NaN and inf (numpy's linear method), vectorised.

    ``np.nanpercentile`` loops over columns in Python once any NaN is present; this sorts once.
    Columns with no finite value give NaN.
    """
    x = np.asarray(x, float)
    x = np.where(np.isfinite(x), x, np.nan)
    s = np.sort(x, axis=0)  # NaN last
    n = np.sum(~np.isnan(x), axis=0)
    top = np.maximum(n - 1, 0)
    out = []
    for q in qs:
        pos = q / 100.0 * top
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, top)
        v_lo = np.take_along_axis(s, lo[None], 0)[0]
        v_hi = np.take_along_axis(s, hi[None], 0)[0]
        out.append(np.where(n > 0, v_lo + (pos - lo) * (v_hi - v_lo), np.nan))
    return out


def censored_band(val_draws, kind_draws, kind_central=0, qs=(BAND[0], 50.0, BAND[1])):
    """Percentiles of a threshold over *all* draws, no-crossing draws counted as censored.

    A draw whose curves never cross in the searched range is censored where the central
    curve's kind puts its threshold: for a ``crossing`` (trapped below the threshold, also
    used when the central curve does not cross) a draw trapped everywhere counts at +inf
    (threshold above the range) and one never trapped at 0 (below it); for a ``reverse``
    (trapped above) the other way round. A percentile that falls among them is reported as
    inf (above the search range) or 0 (below it) instead of being dropped. Returns the list of
    percentiles along axis 0.
    """
    k = np.asarray(kind_draws)
    rev = np.asarray(kind_central) == 1
    above = np.where(rev, k == 3, k == 2)
    below = np.where(rev, k == 2, k == 3)
    v = np.where(above, np.inf, np.where(below, 0.0, np.asarray(val_draws, float)))
    return list(np.percentile(v, qs, axis=0, method="inverted_cdf"))


def threshold_draw_stats(val_draws, kind_draws, n_cross) -> dict:
    """Shares over the draws: no crossing (above / below the range), more than one crossing."""
    k = np.asarray(kind_draws)
    return {"p_no_crossing": np.mean(np.isin(k, (2, 3)), axis=0),
            "p_trapped_everywhere": np.mean(k == 2, axis=0),
            "p_never_trapped": np.mean(k == 3, axis=0),
            "p_multiple_crossings": np.mean(np.asarray(n_cross) > 1, axis=0)}


def all_crossings(x, delta) -> list[tuple[float, str]]:
    """Every sign change of a 1-D ``delta`` over increasing ``x``, interpolated in log x.

    Returns ``[(value, "trapped below" | "trapped above"), ...]`` in increasing order:
    "trapped below" where quantized goes from costing more to costing less.
    """
    d = np.asarray(delta, float).ravel()
    lx = np.log(np.asarray(x, float).ravel())
    pos = d > 0
    out = []
    for i in np.flatnonzero(pos[1:] != pos[:-1]):
        frac = d[i] / (d[i] - d[i + 1]) if d[i] != d[i + 1] else 0.0
        out.append((float(np.exp(lx[i] + frac * (lx[i + 1] - lx[i]))),
                    "trapped below" if pos[i] else "trapped above"))
    return out


def n_sign_changes(delta):
    """Number of sign changes of ``delta`` along its last axis."""
    pos = np.asarray(delta, float) > 0
    return np.sum(pos[..., 1:] != pos[..., :-1], axis=-1)


def batch_limit(sim: Simulator, counts: ArchCounts, precision: str, new_tokens, prompt_tokens):
    """Largest batch whose peak memory fits the device, vectorised over models (0: none fits)."""
    prof = sim.profile
    overhead = float(prof.hardware.get("runtime_overhead_gib", 0.0)) * GIB
    fixed = physical.peak_memory_bytes(counts, precision, 0.0, new_tokens, prompt_tokens,
                                       False, overhead)
    per_seq = (prompt_tokens + new_tokens) * np.asarray(counts.kv_bytes_per_token, float)
    return np.floor(np.maximum(prof.memory_bytes - fixed, 0.0) / per_seq)


def b_star_rows(sim: Simulator, counts: ArchCounts, precision: str, new_tokens, prompt_tokens,
                b_max: float = B_MAX, n_grid: int = B_GRID, draws: bool = False,
                details: bool = False) -> dict:
    """B* for every model at once: where quantized J/query equals native (physical model).

    Grid: integer batches rounded from a geometric grid 1..limit, limit = min(b_max, the native
    configuration's memory limit). A sign flip between batch 1 and 2 is bitsandbytes leaving its
    batch-1 GEMV kernel, not a smooth crossing: B* is reported as 2 (in the draws too). Returns
    ``b_star`` (the first crossing), ``b_star_kind`` (codes of ``KIND_CODES``), ``b_star_max``
    and with draws ``b_star_low``, ``b_star_high``: 16/84% over all draws, no-crossing draws
    censored (:func:`censored_band`). With ``details`` also ``b_star_n_crossings``, the grid
    and central delta (for :func:`all_crossings`), ``b_star_median`` and the shares of
    :func:`threshold_draw_stats`.
    """
    lim = np.atleast_1d(np.minimum(b_max, batch_limit(sim, counts, sim.profile.native,
                                                      new_tokens, prompt_tokens)))
    top = np.maximum(lim, 1.0)
    grid = np.round(np.exp(np.linspace(0.0, 1.0, n_grid)[None, :] * np.log(top)[:, None]))
    out = {"b_star_max": lim}

    def delta(d):
        q = grid_eval(sim, counts, precision, grid, new_tokens, prompt_tokens, d)
        n = grid_eval(sim, counts, sim.profile.native, grid, new_tokens, prompt_tokens, d)
        return q["j_per_query"] - n["j_per_query"]

    dc = delta(False)
    val, kind = crossing(grid, dc)
    oom = lim < 1
    jump = np.isin(kind, (0, 1)) & (val < 2.0)  # kernel switch between batch 1 and 2
    out["b_star"] = np.where(oom, np.nan, np.where(jump, 2.0, val))
    out["b_star_kind"] = np.where(oom, 4, kind)
    if details:
        out.update(b_star_n_crossings=n_sign_changes(dc), b_star_grid=grid, b_star_delta=dc)
    if draws:
        dd = delta(True)
        vd, kd = crossing(grid, dd)
        vd = np.where(np.isin(kd, (0, 1)) & (vd < 2.0), 2.0, vd)
        lo, med, hi = censored_band(vd, kd, kind)
        out["b_star_low"] = np.where(oom, np.nan, lo)
        out["b_star_high"] = np.where(oom, np.nan, hi)
        if details:
            out["b_star_median"] = np.where(oom, np.nan, med)
            for k, v in threshold_draw_stats(vd, kd, n_sign_changes(dd)).items():
                out[f"b_star_{k}"] = v
    return out


def n_star_rows(sim: Simulator, arch: Architecture, precision: str, batch, new_tokens,
                prompt_tokens, n_range=N_RANGE, n_grid: int = N_GRID, draws: bool = False,
                details: bool = False) -> dict:
    """N* for every batch at once along ``arch``'s synthetic family (width and depth scaled).

    Same fields and censoring as :func:`b_star_rows` (``n_star_*``).
    """
    sizes = np.geomspace(n_range[0], n_range[1], n_grid)
    fam = arch.scaled(sizes)
    b = np.atleast_1d(np.asarray(batch, float))

    def delta(d):
        q = grid_eval(sim, fam, precision, b, new_tokens, prompt_tokens, d)
        n = grid_eval(sim, fam, sim.profile.native, b, new_tokens, prompt_tokens, d)
        return np.swapaxes(q["j_per_query"] - n["j_per_query"], -1, -2)  # (..., B, S)

    dc = delta(False)
    val, kind = crossing(sizes, dc)
    out = {"n_star": val, "n_star_kind": kind}
    if details:
        out.update(n_star_n_crossings=n_sign_changes(dc), n_star_sizes=sizes, n_star_delta=dc)
    if draws:
        dd = delta(True)
        vd, kd = crossing(sizes, dd)
        lo, med, hi = censored_band(vd, kd, kind)
        out["n_star_low"], out["n_star_high"] = lo, hi
        if details:
            out["n_star_median"] = med
            for k, v in threshold_draw_stats(vd, kd, n_sign_changes(dd)).items():
                out[f"n_star_{k}"] = v
    return out


