"""Thresholds: where quantized and native energy-per-query curves cross (B*, N*), vectorised.

Used by :class:`qtsim.simulate.simulator.Simulator` (one model) and :mod:`qtsim.simulate.surface`
(whole grids): the batch grid, the memory limit, the kernel-switch rule at batch 1 -> 2 and the
uncertainty bands live here once. Every function takes the simulator as an :class:`Evaluator`
(anything with a ``profile`` and ``evaluate(counts, workload, draws)``), so this module does not
import the simulator, and the served workload as a :class:`~qtsim.model.workload.Workload`.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from qtsim.model import physical
from qtsim.model.architecture import ArchCounts, Architecture
from qtsim.model.results import Evaluation
from qtsim.model.stats import BAND, GIB
from qtsim.model.workload import Workload

KIND_NAMES = {0: "crossing", 1: "reverse", 2: "trapped_everywhere", 3: "never_trapped"}
KIND_CODES = {**KIND_NAMES, 4: "native_oom"}
B_MAX = 4096.0  # B* search range
B_GRID = 200
N_RANGE = (1e8, 1e12)  # N* search range, parameters
N_GRID = 160
#: the draws' thresholds are searched on every COARSE-th grid point first, then on every grid
#: point inside each coarse interval where a draw changes sign (:func:`refined_crossings`);
#: 1 evaluates every grid point of every draw
COARSE = 4
#: ... and also refines a coarse interval whose ends lie within NEAR times the neighbouring
#: coarse steps of zero, where a draw's curve may dip across zero and back between them
NEAR = 0.5


class Evaluator(Protocol):
    """What the thresholds need of a simulator: its profile and a vectorised evaluation."""

    profile: object

    def evaluate(self, counts: ArchCounts, workload: Workload, draws: bool = False) -> dict: ...


def map_counts(counts: ArchCounts, fn) -> ArchCounts:
    return ArchCounts(**{f.name: fn(np.asarray(getattr(counts, f.name), float))
                         for f in dataclasses.fields(ArchCounts)})


def grid_eval(sim: Evaluator, counts: ArchCounts, workload: Workload, draws: bool = False,
              keys=None) -> dict:
    """``sim.evaluate`` on the outer grid models x batches: an
    :class:`~qtsim.model.results.Evaluation` of arrays (M, B), or (n, M, B) with draws (a dict
    of the quantities ``keys`` where given).

    ``counts`` fields are 1-D (M,); ``workload.batch`` is (B,) or per-model (M, B). Models go on
    a column axis and the batch broadcasts along rows, so each model's batch-independent part
    (its timelines' prefix and suffix sums) is computed once per model (and draw), not once
    per grid point; the draws' constants take shape (n, 1, 1) for it. A batch axis shared by
    every model is evaluated at its distinct batches (B* rounds a geometric grid to integers,
    which repeats the small ones) and spread back. ``keys``: only these quantities (default all).
    """
    b = np.asarray(workload.batch, float)
    m = np.size(np.asarray(counts.n_params))
    shape = (m, b.shape[-1])
    col = map_counts(counts, lambda a: a.reshape(-1, 1) if a.size == m else a)
    back = None
    if b.size == b.shape[-1]:  # one batch axis for every model: each distinct batch once
        uniq, back = np.unique(b.ravel(), return_inverse=True)
        b, back = (uniq, back) if uniq.size < b.size else (b, None)
    out = sim.evaluate(col, workload.replace(batch=b), draws=draws)
    grid = {k: _broadcast(np.take(v, back, axis=-1) if back is not None
                          and np.shape(v)[-1:] == b.shape else v, np.shape(v)[:-2] + shape)
            for k, v in out.items() if keys is None or k in keys}
    return grid if keys is not None or not isinstance(out, Evaluation) else Evaluation(**grid)


def _broadcast(v, shape):
    return v if np.shape(v) == shape else np.broadcast_to(v, shape)


def delta_j(sim: Evaluator, counts: ArchCounts, workload: Workload, draws: bool = False):
    """Quantized minus native J/query on the grid models x batches (:func:`grid_eval`), J.

    Positive where the quantized ``workload`` costs more energy per query than the same
    workload at the profile's native dtype (trapped on energy).
    """
    keys = ("j_per_query",)
    q = grid_eval(sim, counts, workload, draws, keys)
    n = grid_eval(sim, counts, workload.replace(precision=sim.profile.native), draws, keys)
    return q["j_per_query"] - n["j_per_query"]


def delta_j_points(sim: Evaluator, counts: ArchCounts, workload: Workload, draw_index=None):
    """Quantized minus native J/query at points (``counts`` fields and ``workload.batch``
    broadcasting to any shape), J; with ``draw_index`` of the draws, the points' first axis
    running over those draws (entry i taking draw ``draw_index[i]``:
    :meth:`~qtsim.simulate.simulator.Simulator.evaluate`)."""
    native = workload.replace(precision=sim.profile.native)
    draws = draw_index is not None
    q = sim.evaluate(counts, workload, draws=draws, draw_index=draw_index)["j_per_query"]
    return q - sim.evaluate(counts, native, draws=draws, draw_index=draw_index)["j_per_query"]


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


def refined_crossings(x, delta_at, delta_picked, coarse: int = COARSE, keep=(),
                      near: float = NEAR):
    """:func:`crossing` and :func:`n_sign_changes` of every draw on the grid ``x`` from
    :func:`refined_delta` (the arguments are its). Returns (value, kind, number of sign
    changes), each (n, rows)."""
    d = refined_delta(x, delta_at, delta_picked, coarse, keep, near)
    val, kind = crossing(np.broadcast_to(np.asarray(x, float), d.shape), d)
    return val, kind, n_sign_changes(d)


def refined_delta(x, delta_at, delta_picked, coarse: int = COARSE, keep=(),
                  near: float = NEAR):
    """Delta J/query of every draw on the grid ``x`` without evaluating every grid point of
    every draw (bracket and refine), as :func:`crossing` and :func:`n_sign_changes` read it.

    ``x`` (rows x S, or S) is the grid, increasing along its last axis; ``delta_at(idx)``
    returns the draws' delta (n, rows, len(idx)) at grid indices ``idx`` shared by all draws,
    ``delta_picked(draw, row, idx)`` the delta (F, K) of draw ``draw[f]`` and row ``row[f]`` at
    grid indices ``idx[f]`` (F x K). Every ``coarse``-th grid point (both ends and the indices
    ``keep``, e.g. either side of a kernel switch, included) is evaluated for every draw; then,
    for each draw and row, every grid point inside each coarse interval whose ends differ in
    sign or come within ``near`` times the neighbouring coarse steps of zero (where the curve
    may dip across zero and back). Unevaluated points take the value of the evaluated point
    before them (they lie inside intervals whose ends agree in sign, so they add no sign
    change). Read by :func:`crossing`, the first crossing, its kind, its interpolation and the
    number of sign changes are the whole grid's unless a pair of sign changes hides strictly
    inside an interval not refined (``coarse`` = 1 evaluates every point). Returns (n, rows, S).
    """
    s_len = np.shape(x)[-1]
    cidx = np.unique(np.concatenate([np.arange(0, s_len, max(int(coarse), 1)), [s_len - 1],
                                     np.asarray(keep, int).ravel()]))
    dc = np.asarray(delta_at(cidx), float)
    if cidx.size == s_len:
        return dc
    d = np.full(dc.shape[:-1] + (s_len,), np.nan)
    d[..., cidx] = dc
    draw, row, j = np.nonzero(_refine(dc, near))
    if draw.size:
        lo, hi = cidx[j], cidx[j + 1]
        fine = lo[:, None] + np.arange(1, int(np.diff(cidx).max()))
        fine = np.maximum(np.minimum(fine, hi[:, None] - 1), lo[:, None])
        d[draw[:, None], row[:, None], fine] = delta_picked(draw, row, fine)
    known = np.where(np.isnan(d), 0, np.arange(s_len))
    return np.take_along_axis(d, np.maximum.accumulate(known, axis=-1), -1)  # forward fill


def _refine(dc, near: float):
    """Coarse intervals to refine (n, rows, C - 1): a sign change, or both ends near zero
    relative to the largest of this and the neighbouring coarse steps."""
    pos = dc > 0
    change = pos[..., 1:] != pos[..., :-1]
    step = np.abs(np.diff(dc, axis=-1))
    local = step.copy()
    local[..., 1:] = np.maximum(local[..., 1:], step[..., :-1])
    local[..., :-1] = np.maximum(local[..., :-1], step[..., 1:])
    close = np.minimum(np.abs(dc[..., 1:]), np.abs(dc[..., :-1])) <= near * local
    return change | close


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


def batch_limit(sim: Evaluator, counts: ArchCounts, workload: Workload):
    """Largest batch whose peak memory fits the device, vectorised over models (0: none fits).

    ``workload.batch`` is ignored: the memory left after the batch-independent part (weights,
    workspace, runtime overhead) is divided by one sequence's KV cache.
    """
    prof = sim.profile
    overhead = float(prof.hardware.get("runtime_overhead_gib", 0.0)) * GIB
    w = workload
    fixed = physical.peak_memory_bytes(counts, w.precision, 0.0, w.new_tokens, w.prompt_tokens,
                                       w.double_quant, overhead)
    per_seq = (w.prompt_tokens + w.new_tokens) * np.asarray(counts.kv_bytes_per_token, float)
    return np.floor(np.maximum(prof.memory_bytes - fixed, 0.0) / per_seq)


def b_star_rows(sim: Evaluator, counts: ArchCounts, workload: Workload, b_max: float = B_MAX,
                n_grid: int = B_GRID, draws: bool = False, details: bool = False,
                coarse: int = COARSE) -> dict:
    """B* for every model at once: where quantized J/query equals native (physical model).

    ``workload`` gives the quantized precision, its bitsandbytes settings and the tokens; its
    batch is ignored. Grid: integer batches rounded from a geometric grid 1..limit, limit =
    min(b_max, the native configuration's memory limit). A sign flip between batch 1 and 2 is
    bitsandbytes leaving its batch-1 GEMV kernel, not a smooth crossing: B* is reported as 2
    (in the draws too). Returns ``b_star`` (the first crossing), ``b_star_kind`` (codes of
    ``KIND_CODES``), ``b_star_max`` and with draws ``b_star_low``, ``b_star_high``: 16/84% over
    all draws, no-crossing draws censored (:func:`censored_band`). With ``details`` also
    ``b_star_n_crossings``, the grid and central delta (for :func:`all_crossings`),
    ``b_star_median`` and the shares of :func:`threshold_draw_stats`. The central curve is
    evaluated on the whole grid; the draws are bracketed and refined (:func:`refined_crossings`
    with ``coarse``; 1: the whole grid for every draw).
    """
    native = workload.replace(precision=sim.profile.native)
    lim = np.atleast_1d(np.minimum(b_max, batch_limit(sim, counts, native)))
    top = np.maximum(lim, 1.0)
    grid = np.round(np.exp(np.linspace(0.0, 1.0, n_grid)[None, :] * np.log(top)[:, None]))
    on_grid = workload.replace(batch=grid)
    out = {"b_star_max": lim}
    dc = delta_j(sim, counts, on_grid)
    val, kind = crossing(grid, dc)
    oom = lim < 1
    jump = np.isin(kind, (0, 1)) & (val < 2.0)  # kernel switch between batch 1 and 2
    val = _snap_to_switch(sim, counts, workload, val, kind, top, n_grid)
    out["b_star"] = np.where(oom, np.nan, np.where(jump, 2.0, val))
    out["b_star_kind"] = np.where(oom, 4, kind)
    if details:
        out.update(b_star_n_crossings=n_sign_changes(dc), b_star_grid=grid, b_star_delta=dc)
    if draws:
        def at(idx):
            return delta_j(sim, counts, workload.replace(batch=grid[:, idx]), True)

        def picked(draw, row, idx):
            cnt = _take_counts(counts, row[:, None])
            return delta_j_points(sim, cnt, workload.replace(batch=grid[row[:, None], idx]), draw)

        vd, kd, nd = refined_crossings(grid, at, picked, coarse,
                                       _switch_indices(sim, workload, grid))
        vd = _snap_to_switch(sim, counts, workload, vd, kd, top, n_grid, draws=True)
        vd = np.where(np.isin(kd, (0, 1)) & (vd < 2.0), 2.0, vd)
        out.update(_draw_band("b_star", vd, kd, kind, nd, details, mask=oom))
    return out


def _switch_indices(sim: Evaluator, workload: Workload, grid) -> np.ndarray:
    """Indices of the B* grid around each kernel switch (batch 1 / 2; the last fused 4-bit batch
    / the first dequantising one): the two grid points on either side of the switch and their
    neighbours, always evaluated by :func:`refined_crossings`, as delta J/query jumps there."""
    g = np.asarray(grid, float).reshape(-1, np.shape(grid)[-1])
    switches = [2.0]
    s = dequantise_switch(sim, workload.family)
    if s is not None:
        switches.append(s)
    out = []
    for sw in switches:
        first = np.argmax(g >= sw, axis=-1)  # first grid point at or above the switch, per row
        out += [first - 2, first - 1, first, first + 1]
    idx = np.concatenate(out)
    return np.unique(idx[(idx >= 0) & (idx < g.shape[-1])])


def dequantise_switch(sim: Evaluator, family: str, b_max: float = B_MAX) -> float | None:
    """The first batch above 1 at which a 4-bit path dequantises again (bitsandbytes' fused
    4-bit GEMM ends: :func:`qtsim.model.physical.dequantizes` with the profile's stack), or None
    when no batch up to ``b_max`` switches (not 4-bit, a CPU, or a stack that never fuses)."""
    grid = np.arange(2.0, b_max + 1.0)
    deq = physical.dequantizes(sim.profile.values(), family, grid, sim.profile.overlap)
    if deq[0] > 0 or not np.any(deq > 0):
        return None
    return float(grid[np.argmax(deq > 0)])


def _snap_to_switch(sim: Evaluator, counts, workload: Workload, val, kind, top, n_grid: int,
                    draws: bool = False):
    """B* values whose crossing is the jump at :func:`dequantise_switch` (the sign of quantized
    minus native J/query flips between the last fused batch and the first dequantising one),
    reported at that first dequantising batch as the batch 1 -> 2 switch is reported at 2,
    rather than interpolated across the jump on the coarse grid."""
    switch = dequantise_switch(sim, workload.family)
    if switch is None:
        return val
    pair = delta_j(sim, counts, workload.replace(batch=np.array([switch - 1.0, switch])), draws)
    flips = (pair[..., 0] > 0) != (pair[..., 1] > 0)
    step = np.exp(np.log(np.maximum(top, 2.0)) / max(n_grid - 1, 1))  # grid ratio per model
    near = np.abs(np.log(np.maximum(np.asarray(val, float), 1e-300) / switch)) <= 1.5 * np.log(step)
    return np.where(np.isin(kind, (0, 1)) & flips & near, switch, val)


def _draw_band(prefix: str, vd, kd, kind, n_cross, details: bool, mask=False) -> dict:
    """``<prefix>_low``/``_high`` (and with ``details`` the median and draw shares) of the
    thresholds ``vd`` (kinds ``kd``, ``n_cross`` sign changes) of the draws; NaN where ``mask``."""
    lo, med, hi = censored_band(vd, kd, kind)
    out = {f"{prefix}_low": np.where(mask, np.nan, lo), f"{prefix}_high": np.where(mask, np.nan, hi)}
    if details:
        out[f"{prefix}_median"] = np.where(mask, np.nan, med)
        for k, v in threshold_draw_stats(vd, kd, n_cross).items():
            out[f"{prefix}_{k}"] = v
    return out


def n_star_rows(sim: Evaluator, arch: Architecture, workload: Workload, n_range=N_RANGE,
                n_grid: int = N_GRID, draws: bool = False, details: bool = False,
                coarse: int = COARSE, central_coarse: int = 1) -> dict:
    """N* for every batch of ``workload.batch`` at once along ``arch``'s synthetic family (width
    and depth scaled).

    Same fields, censoring and search of the draws as :func:`b_star_rows` (``n_star_*``);
    ``central_coarse`` > 1 brackets and refines the central curves too
    (:func:`refined_delta`; ``n_star_delta`` then holds the refined delta).
    """
    sizes = np.geomspace(n_range[0], n_range[1], n_grid)
    fam = arch.scaled(sizes)
    w = workload.replace(batch=np.atleast_1d(np.asarray(workload.batch, float)))

    def at(draws):
        def delta(idx):  # (..., B, len(idx)): rows are batches, the grid the sizes
            d = np.swapaxes(delta_j(sim, _take_counts(fam, idx), w, draws), -1, -2)
            return d if draws else d[None]
        return delta

    def picked(draws):
        def delta(draw, row, idx):
            return delta_j_points(sim, _take_counts(fam, idx),
                                  w.replace(batch=w.batch[row][:, None]), draw if draws else None)
        return delta

    dc = refined_delta(sizes, at(False), picked(False), central_coarse)[0]
    val, kind = crossing(sizes, dc)
    out = {"n_star": val, "n_star_kind": kind}
    if details:
        out.update(n_star_n_crossings=n_sign_changes(dc), n_star_sizes=sizes, n_star_delta=dc)
    if draws:
        vd, kd, nd = refined_crossings(sizes, at(True), picked(True), coarse)
        out.update(_draw_band("n_star", vd, kd, kind, nd, details))
    return out


def _take_counts(counts: ArchCounts, idx) -> ArchCounts:
    """The models ``idx`` (any shape) of a 1-D family of counts."""
    m = np.size(np.asarray(counts.n_params))
    return map_counts(counts, lambda a: a[idx] if a.size == m else a)
