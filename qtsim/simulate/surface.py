"""Surfaces: the simulator evaluated over whole grids of GPU x precision x model x batch.

:func:`simulate` evaluates, in one vectorised pass per (GPU, precision), everything ``qtsim
trap`` reports for one point: latency, tok/s, energy per query three ways, COR (eq. 8/9), the SI
pillars and SI (eq. 1-6), trap verdicts, B* per model and N* per batch. Model counts are stacked
(:func:`stack_counts`: an :class:`~qtsim.model.architecture.ArchCounts` whose fields are arrays, one
entry per model, shipped or a synthetic size sweep from ``Architecture.scaled``). The result is
an ``xarray.Dataset`` (:mod:`qtsim.simulate.dataset`: quantities, units, file formats).

Energy per query, side by side (DESIGN.md sec. 2):

- ``j_per_query``: the power model integrated over the query (what an NVML total-energy counter
  would read, eq. 4);
- ``j_per_query_hli``: the paper's Hardware-Latency Integration, TDP x latency / B (sec. 3.1);
  it is latency times a constant, so HLI energy ratios are latency ratios;
- ``j_per_query_paper``: the paper's energy functional, eq. 19, K [gamma + alpha p / B + phi],
  with alpha, gamma, phi derived from the profile at batch 1 (:meth:`Simulator.paper_constants`);
  prefill is not in eq. 19.

Everything here is a prediction from a hardware profile, not a measurement. With draws, every
key quantity also gets its 16th/84th percentiles (``*_low``, ``*_high``) over Monte-Carlo draws
of the profile's constants, and the share of draws that are trapped (``p_trapped_*``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from qtsim import __version__
from qtsim.errors import QtsimError
from qtsim.model import paper, verdicts
from qtsim.model import sustainability as si
from qtsim.model.architecture import ArchCounts, Architecture
from qtsim.model.paths import path_family
from qtsim.model.precision import get_precision
from qtsim.model.stack import describe
from qtsim.model.stats import BAND, GIB, nan_percentiles
from qtsim.model.trust import TrustEstimate, lookup_trust
from qtsim.model.workload import Workload
from qtsim.profiles.hardware import profile_notes, profile_origin
from qtsim.profiles.profile import HardwareProfile
from qtsim.simulate.dataset import make_surface
from qtsim.simulate.simulator import Simulator
from qtsim.simulate.thresholds import (
    COARSE,
    N_GRID,
    N_RANGE,
    b_star_rows,
    crossing,
    delta_j,
    grid_eval,
    map_counts,
    n_star_rows,
)

if TYPE_CHECKING:
    from qtsim.simulate.dataset import Surface


# ---- counts -----------------------------------------------------------------------------------
def stack_counts(counts: Sequence[ArchCounts]) -> ArchCounts:
    """One ArchCounts whose fields are 1-D arrays, entry i from ``counts[i]``."""
    if not counts:
        raise QtsimError("no models to stack")
    return ArchCounts(**{f.name: np.concatenate([np.ravel(np.asarray(getattr(c, f.name), float))
                                                  for c in counts])
                         for f in dataclasses.fields(ArchCounts)})


def parse_sizes(text: str) -> np.ndarray:
    """``"LO:HI:N"`` -> N parameter counts spaced geometrically from LO to HI (or a comma list)."""
    try:
        if ":" in text:
            lo, hi, n = text.split(":")
            lo, hi, n = float(lo), float(hi), int(n)
            if not (0 < lo <= hi) or n < 1:
                raise ValueError
            return np.geomspace(lo, hi, n)
        vals = np.array([float(v) for v in text.split(",") if v.strip()])
        if vals.size == 0 or np.any(vals <= 0):
            raise ValueError
        return vals
    except ValueError:
        raise QtsimError(f"--sizes {text!r}: give LO:HI:N (e.g. 0.5e9:80e9:40) or a comma list of "
                         "positive parameter counts") from None


def size_label(family: str, n_params: float) -> str:
    """Coordinate label of a synthetic size, e.g. ``mistral-7b~1.2B``."""
    return f"{family}~{n_params / 1e9:.3g}B"


# ---- grid evaluation ----------------------------------------------------------------------------
derived = verdicts.ratios  # COR (eq. 9), energy, HLI and speed ratios, delta J


pillars = si.pillars  # one home: qtsim.model.sustainability


def paper_energy(sim: Simulator, counts: ArchCounts, workload: Workload,
                 draws: bool = False) -> dict:
    """Eq. 19 energy per query on models x batches, constants from the profile at batch 1.

    Returns ``alpha_j_per_bit``, ``gamma_j``, ``phi_j``, ``b_star_paper`` (per model, eq. 18) and
    ``j_per_query_paper`` (M, B) for ``workload`` (its precision, batch axis and new tokens);
    ``j_native`` the eq. 19 native energy K (gamma + 16 alpha / B) on the same grid. With
    draws, a leading axis of draws.
    """
    c = sim.paper_constants(counts, workload, draws=draws)
    bits = get_precision(workload.precision).bits
    quant = workload.quantized
    alpha, gamma = np.asarray(c["alpha_j_per_bit"]), np.asarray(c["gamma_j"])
    phi = np.asarray(c["phi_j"]) if quant else np.zeros_like(alpha)
    bits_eff = bits if quant else paper.NATIVE_BITS
    b = np.asarray(workload.batch, float)
    k = workload.new_tokens
    e_q = paper.energy_functional_j(k, gamma[..., None], alpha[..., None], bits_eff, b,
                                    phi[..., None])
    e_n = paper.energy_functional_j(k, gamma[..., None], alpha[..., None], paper.NATIVE_BITS, b,
                                    0.0)
    b_star = np.asarray(c["b_star_paper"]) if quant else np.zeros_like(alpha)
    return {"alpha_j_per_bit": alpha, "gamma_j": gamma, "phi_j": phi, "b_star_paper": b_star,
            "j_per_query_paper": e_q, "j_native": e_n}


def _trust_grid(precisions, names, synthetic, native, trust_table, depth, family, archs=(),
                bnb=None):
    """(T_SI array (P, M), list of TrustEstimate) for every precision and model (``archs``: the
    named models' architectures, in order, which published figures are matched by; ``bnb``: the
    workload's bitsandbytes settings, which pick a table's rows for that kernel-path family)."""
    by_name = {a.name: a for a in archs}
    t = np.ones((len(precisions), len(names)))
    est = []
    cache = {}
    for i, p in enumerate(precisions):
        for j, (name, syn) in enumerate(zip(names, synthetic, strict=True)):
            if syn and get_precision(p).quantized:
                e = TrustEstimate(1.0, "assumed",
                                  f"assumed: no accuracy loss (synthetic size of the {family} "
                                  "family: no model of this size was evaluated)", depth=depth)
            else:
                key = (name, p)
                if key not in cache:
                    fam = (path_family(p, bnb.double_quant, bnb.int8_threshold)
                           if bnb is not None else None)
                    cache[key] = lookup_trust(name, p, native, trust_table, depth=depth,
                                              arch=by_name.get(name), family=fam)
                e = cache[key]
            t[i, j] = e.t_si
            est.append({"precision": p, "model": name, **e.to_dict()})
    return t, est


# ---- the surface ----------------------------------------------------------------------------
@dataclass
class _GpuGrid:
    """One GPU's evaluation in :func:`evaluate_gpu`: what every precision shares, and the rows.

    ``put`` stores a value of precision ``i`` on the current block of batches ``sl`` (or whole,
    for per-model and per-batch quantities) into ``rows`` (precision first).
    """

    sim: Simulator
    counts: ArchCounts
    family: Architecture | None
    t_si: np.ndarray
    policy: str
    weights: tuple
    draws: bool
    thresholds: bool
    b_all: np.ndarray
    n_p: int
    rows: dict = field(default_factory=dict)
    i: int = 0
    sl: slice = field(default_factory=lambda: slice(None))

    @property
    def m(self) -> int:
        return int(np.size(np.asarray(self.counts.n_params)))

    def put(self, name, value, full=False):
        """Store precision i's value: a (M, chunk) block of a batch quantity, or whole."""
        v = np.asarray(value)
        arr = self.rows.get(name)
        if arr is None:
            shape = (self.n_p, *v.shape) if full else (self.n_p, *v.shape[:-1], self.b_all.size)
            arr = self.rows[name] = np.empty(shape, v.dtype)
        elif not np.can_cast(v.dtype, arr.dtype, "safe"):
            arr = self.rows[name] = arr.astype(np.result_type(arr.dtype, v.dtype))
        if full:
            arr[self.i] = v
        else:
            arr[self.i, ..., self.sl] = v


def evaluate_gpu(profile: HardwareProfile, counts: ArchCounts, names: Sequence[str],
                 precisions: Sequence[str], workload: Workload, t_si=None,
                 family: Architecture | None = None, policy: str = "linear",
                 weights=si.DEFAULT_WEIGHTS, n_draws: int = 0, seed: int = 0,
                 thresholds: bool = True, progress: Callable[[int], None] | None = None) -> dict:
    """Every quantity for one GPU: arrays (precision, model, batch) and per-model/per-batch ones.

    ``counts`` holds M models (1-D fields); ``workload`` the batch axis (B batch sizes), the
    tokens and the bitsandbytes settings every precision runs with (its own precision is
    replaced by each of ``precisions``, B* and N* included); ``t_si`` a (P, M) array of trust
    ratios (default 1). Native (16-bit) runs are evaluated once and shared by every precision.
    ``family`` is the architecture whose synthetic sizes N* is searched along (omitted: no N*).
    ``n_draws`` > 0 adds 16/84% bands and ``p_trapped_*`` shares.
    """
    sim = Simulator(profile, n_draws=max(n_draws, 1), seed=seed)
    b_all = np.atleast_1d(np.asarray(workload.batch, float))
    n_p = len(precisions)
    t_si = np.ones((n_p, len(names))) if t_si is None else np.asarray(t_si, float)
    g = _GpuGrid(sim, counts, family, t_si, policy, weights, n_draws > 0, thresholds, b_all, n_p)
    step = chunk_batches(len(names), b_all.size, n_draws)
    for start in range(0, b_all.size, step):
        g.sl = slice(start, start + step)
        w = workload.replace(precision=profile.native, batch=b_all[g.sl])
        nat = grid_eval(sim, counts, w)
        nat_d = grid_eval(sim, counts, w, True) if g.draws else None
        for i, p in enumerate(precisions):
            g.i = i
            _evaluate_precision(g, w.replace(precision=p), nat, nat_d, first=start == 0)
            if progress:
                progress(1)
    return g.rows


#: Values (model x batch x draw) per block of batches in :func:`evaluate_gpu`.
CHUNK_POINTS = 1 << 17


def chunk_batches(n_models: int, n_batches: int, n_draws: int = 0, points: int | None = None) -> int:
    """Batches evaluated at once: about ``points`` (model x batch x draw) values per block, so
    temporaries stay in cache-sized, reused memory instead of fresh pages for every quantity."""
    points = CHUNK_POINTS if points is None else points
    return max(1, min(n_batches, points // max(1, n_models * max(1, n_draws))))


def n_blocks(n_models: int, n_batches: int, n_draws: int = 0) -> int:
    """How many batch blocks :func:`evaluate_gpu` takes (progress ticks per GPU and precision)."""
    step = chunk_batches(n_models, n_batches, n_draws)
    return -(-n_batches // step)


def _evaluate_precision(g: _GpuGrid, w: Workload, nat: dict, nat_d, first: bool) -> None:
    """One precision on one block of batches (thresholds, on the whole axis, with the first)."""
    native = g.sim.profile.native
    if w.precision == native:
        q = ref = nat
    else:
        q = grid_eval(g.sim, g.counts, w)
        ref = nat if w.quantized else q
    _put_central(g, w, q, ref, nat)
    if g.thresholds and first:  # per model, and N* per batch on the whole axis at once
        _put_thresholds(g, w)
    if g.draws:
        qd = grid_eval(g.sim, g.counts, w, True)
        _put_bands(g, w, qd, nat_d if w.quantized else qd, runs(q, ref))


#: quantities of one configuration's own run: NaN where it does not fit in device memory
RUN_QUANTITIES = ("latency_s", "step_s", "tok_per_s", "j_per_query", "j_per_query_hli",
                  "avg_power_w", "j_per_query_paper")


def runs(q: dict, ref: dict) -> tuple[np.ndarray, np.ndarray]:
    """(the configuration runs, its comparison with ``ref`` means something): where it fits in
    device memory, and where both it and its 16-bit reference do. Everywhere else a surface
    holds NaN: nothing that cannot run is tabled or drawn as if it ran (``fits`` and
    ``native_fits`` say which)."""
    own = np.asarray(q["fits"], bool)
    return own, own & np.asarray(ref["fits"], bool)


def _masked(value, ok):
    """``value`` as floats, NaN where not ``ok``."""
    return np.where(ok, np.asarray(value, float), np.nan)


def _put_central(g: _GpuGrid, w: Workload, q: dict, ref: dict, nat: dict) -> None:
    """Central values of precision ``w`` against ``ref``: the runs, ratios, SI and verdicts
    (NaN where the run, or the comparison, cannot happen: :func:`runs`)."""
    run_ok, cmp_ok = runs(q, ref)
    d = derived(q, ref)
    pil = pillars(q, ref, g.t_si[g.i][:, None], g.policy, g.weights)
    pap = paper_energy(g.sim, g.counts, w)
    pap_n = pap["j_native"]
    for k in RUN_QUANTITIES[:-1]:
        g.put(k, _masked(q[k], run_ok))
    g.put("j_per_query_paper", _masked(pap["j_per_query_paper"], run_ok))
    g.put("peak_memory_gib", q["peak_bytes"] / GIB)
    g.put("fits", q["fits"].astype(np.uint8))
    g.put("native_fits", nat["fits"].astype(np.uint8))
    for k, v in d.items():
        g.put(k, _masked(v, cmp_ok))
    g.put("energy_ratio_paper", _masked(pap["j_per_query_paper"] / pap_n, cmp_ok))
    g.put("s_si_paper", _masked(pap_n / pap["j_per_query_paper"], cmp_ok))
    for k, v in pil.items():
        g.put(k, v if k == "t_si" else _masked(v, cmp_ok))
    trapped = {
        "trapped_energy": verdicts.costs_more(q["j_per_query"], ref["j_per_query"]),
        "trapped_energy_hli": verdicts.costs_more(q["j_per_query_hli"], ref["j_per_query_hli"]),
        "trapped_energy_paper": verdicts.costs_more(pap["j_per_query_paper"], pap_n * (1 + 1e-12)),
        "trapped_time": verdicts.slower(d["speed_ratio"]),
        "trapped_si": verdicts.si_trapped(pil["si"]),
    }
    for k, v in trapped.items():  # 1 trapped, 0 not, NaN: no verdict (it cannot run)
        g.put(k, _masked(v, cmp_ok))
    for k in ("alpha_j_per_bit", "gamma_j", "phi_j", "b_star_paper"):
        g.put(k, np.broadcast_to(pap[k], (g.m,)), full=True)


def _put_thresholds(g: _GpuGrid, w: Workload) -> None:
    """B* per model and N* per batch (the whole batch axis) of precision ``w``; NaN at native."""
    m, nb = g.m, g.b_all.size
    if w.quantized:
        bs = b_star_rows(g.sim, g.counts, w, draws=g.draws)
    else:
        bs = {"b_star": np.full(m, np.nan), "b_star_kind": np.full(m, 3),
              "b_star_max": np.full(m, np.nan)}
        if g.draws:
            bs["b_star_low"] = bs["b_star_high"] = np.full(m, np.nan)
    if g.family is not None and w.quantized:
        ns = n_star_fast(g.sim, g.family, w.replace(batch=g.b_all), draws=g.draws)
        ns.update(_n_star_fit(g, w, ns))
    else:
        ns = {"n_star": np.full(nb, np.nan), "n_star_kind": np.full(nb, 3),
              "n_star_fits": np.full(nb, np.nan)}
        if g.draws:
            ns["n_star_low"] = ns["n_star_high"] = np.full(nb, np.nan)
    for k, v in {**bs, **ns}.items():
        g.put(k, v, full=True)


def _n_star_fit(g: _GpuGrid, w: Workload, ns: dict) -> dict:
    """``n_star_fits`` (1 where a model of the family at N* fits the device at that batch, 0
    where it does not, NaN without a crossing) and N* (with its band) NaN where it does not
    fit: a crossing at a size that cannot run at that batch is no planner's answer."""
    val = np.asarray(ns["n_star"], float)
    cross = np.isin(ns["n_star_kind"], (0, 1)) & np.isfinite(val) & (val > 0)
    fits = np.zeros(val.shape, bool)
    if cross.any():
        sizes = val[cross]
        peak = g.sim.peak_bytes(g.family.scaled(sizes), w.replace(batch=g.b_all[cross]))
        fits[cross] = np.asarray(peak) <= g.sim.profile.memory_bytes
    out = {"n_star_fits": np.where(cross, fits.astype(float), np.nan)}
    for k in ("n_star", "n_star_low", "n_star_high"):
        if k in ns:
            out[k] = np.where(cross & ~fits, np.nan, np.asarray(ns[k], float))
    return out


def _put_bands(g: _GpuGrid, w: Workload, qd: dict, rd: dict, ok) -> None:
    """16/84% bands over the draws and the shares of draws trapped, precision ``w``; ``ok``:
    (the run fits, the comparison can happen) (:func:`runs`), NaN elsewhere."""
    run_ok, cmp_ok = ok
    dd = derived(qd, rd)
    pd = pillars(qd, rd, g.t_si[g.i][:, None], g.policy, g.weights)
    papd = paper_energy(g.sim, g.counts, w, draws=True)
    samples = {**{k: qd[k] for k in ("latency_s", "tok_per_s", "j_per_query",
                                     "j_per_query_hli")},
               "j_per_query_paper": papd["j_per_query_paper"], **dd,
               "energy_ratio_paper": papd["j_per_query_paper"] / papd["j_native"],
               "s_si_paper": papd["j_native"] / papd["j_per_query_paper"],
               **{k: pd[k] for k in ("e_si", "s_si", "s_si_hli", "si", "si_hli")}}
    for k, v in samples.items():
        lo, hi = nan_percentiles(v)
        mask = run_ok if k in RUN_QUANTITIES else cmp_ok
        g.put(f"{k}_low", _masked(lo, mask))
        g.put(f"{k}_high", _masked(hi, mask))
    shares = {
        "p_trapped_energy": verdicts.costs_more(qd["j_per_query"], rd["j_per_query"]),
        "p_trapped_energy_hli": verdicts.costs_more(qd["j_per_query_hli"], rd["j_per_query_hli"]),
        "p_trapped_energy_paper": verdicts.costs_more(papd["j_per_query_paper"],
                                                      papd["j_native"] * (1 + 1e-12)),
        "p_trapped_time": verdicts.slower(dd["speed_ratio"]),
        "p_trapped_si": verdicts.si_trapped(pd["si"]),
    }
    for k, v in shares.items():
        g.put(k, _masked(np.mean(v, axis=0) if w.quantized else np.zeros(np.shape(v)[1:]),
                         cmp_ok))


#: Batch axes longer than this get N* from anchors (:func:`n_star_fast`); shorter ones directly.
N_STAR_ANCHORS = 512


def n_star_fast(sim: Simulator, arch: Architecture, workload: Workload, draws: bool = False,
                anchors: int | None = None) -> dict:
    """:func:`qtsim.simulate.thresholds.n_star_rows` for long batch axes without 160 sizes per batch.

    N* at each batch of ``workload.batch`` is the first sign change of delta J/query along
    ``N_GRID`` synthetic sizes. With at most ``2 * anchors`` batches (or with draws) this is
    ``n_star_rows`` itself. Longer axes are solved exactly at about ``anchors`` batches spread
    evenly in log batch (4% apart for 512 anchors over 1..10^9; every batch below about 25,
    batch 2 where bitsandbytes switches kernels, and both ends). Every batch between two
    anchors that agree on the kind and on the bracketing pair of sizes is evaluated at that
    pair only (two sizes instead of 160; one, the smallest, where the anchors have no crossing)
    and kept when its signs confirm the bracket, with the same interpolation as
    :func:`qtsim.simulate.thresholds.crossing`, so the numbers are the ones the full grid gives.
    Batches whose anchors disagree, or whose signs do not confirm them, are solved on the full
    size grid. The one thing this cannot see is a sign change that appears and vanishes
    strictly between two anchors a few percent apart in batch without moving the smallest
    size's sign; ``tests/test_surface.py`` checks the result against the full grid.
    """
    b = np.atleast_1d(np.asarray(workload.batch, float))
    anchors = N_STAR_ANCHORS if anchors is None else anchors
    if draws or b.size <= 2 * anchors:
        return n_star_rows(sim, arch, workload, draws=draws)
    sizes = np.geomspace(N_RANGE[0], N_RANGE[1], N_GRID)
    fam = arch.scaled(sizes)

    def delta(idx, bb):  # delta J/query at sizes[idx] (one size, one per batch, or all)
        if idx is None:
            cnt = fam
        elif np.ndim(idx) == 0:
            cnt = map_counts(fam, lambda x: x[idx:idx + 1] if x.size == sizes.size else x)
        else:
            cnt = map_counts(fam, lambda x: x[idx] if x.size == sizes.size else x)
        return delta_j(sim, cnt, workload.replace(batch=bb))

    a_idx, a_val, a_kind, a_br = _n_star_anchors(sim, arch, workload, sizes, b, anchors)
    seg = np.clip(np.searchsorted(a_idx, np.arange(b.size), side="right") - 1, 0, a_idx.size - 2)
    left, right = seg, seg + 1
    same = (a_kind[left] == a_kind[right]) & (a_br[left] == a_br[right])
    kind = a_kind[left]
    out, ok = _n_star_bracketed(delta, sizes, b, kind, a_br[left])
    ok &= same
    out["n_star"][a_idx] = a_val
    out["n_star_kind"][a_idx] = a_kind
    ok[a_idx] = True
    redo = np.flatnonzero(~ok)
    if redo.size:
        r = n_star_rows(sim, arch, workload.replace(batch=b[redo]), central_coarse=COARSE)
        out["n_star"][redo] = r["n_star"]
        out["n_star_kind"][redo] = r["n_star_kind"]
    return out


def _n_star_anchors(sim: Simulator, arch: Architecture, workload: Workload, sizes, b,
                    anchors: int):
    """N* solved on the size grid at the anchor batches of :func:`n_star_fast`.

    Anchors are spread evenly in log batch (every small integer batch is one), plus batch 2
    (bitsandbytes' kernel switch) and both ends. Returns (anchor indices, N*, kind, index of
    the size below the first crossing: 0 where there is none).
    """
    at = np.searchsorted(b, np.geomspace(b[0], b[-1], anchors))
    a_idx = np.unique(np.concatenate([np.minimum(at, b.size - 1), [0, 1, b.size - 1]]))
    da = n_star_rows(sim, arch, workload.replace(batch=b[a_idx]), details=True,
                     central_coarse=COARSE)["n_star_delta"]  # (anchors, S)
    a_val, a_kind = crossing(sizes, da)
    pos = da > 0
    a_br = np.where(np.isin(a_kind, (0, 1)), (pos[:, 1:] != pos[:, :1]).argmax(axis=-1), 0)
    return a_idx, a_val, a_kind, a_br


def _n_star_bracketed(delta, sizes, b, kind, bracket):
    """N* of every batch from the bracketing pair of sizes its anchors agree on.

    Returns (``{"n_star", "n_star_kind"}``, ok): ok where the batch's own signs at the pair (at
    the smallest size where the kind has no crossing) confirm the anchors' bracket.
    """
    crossing_kind = np.isin(kind, (0, 1))
    i0 = np.where(crossing_kind, bracket, 0)
    i1 = np.where(crossing_kind, bracket + 1, N_GRID - 1)
    d0, d1 = np.empty(b.size), np.empty(b.size)
    step = max(1, CHUNK_POINTS)
    for start in range(0, b.size, step):  # blocks: temporaries stay small
        blk = np.arange(start, min(start + step, b.size))
        cr, nc = blk[crossing_kind[blk]], blk[~crossing_kind[blk]]
        if nc.size:  # no crossing: the sign at the smallest size decides (inf or 0)
            d0[nc] = d1[nc] = delta(0, b[nc])[0]
        if cr.size:  # the bracketing pair of sizes, one per batch
            d0[cr] = delta(i0[cr], b[cr, None])[:, 0]
            d1[cr] = delta(i1[cr], b[cr, None])[:, 0]
    first_pos = np.isin(kind, (0, 2))  # kinds 0 and 2 start trapped (positive delta)
    ok = (d0 > 0) == first_pos
    ok &= np.where(crossing_kind, (d1 > 0) != first_pos, True)
    out = {"n_star": np.where(first_pos, np.inf, 0.0), "n_star_kind": kind.copy()}
    cr = np.flatnonzero(crossing_kind)
    if cr.size:  # thresholds.crossing's interpolation on the bracketing pair, term for term
        lx0, lx1 = np.log(sizes[i0[cr]]), np.log(sizes[i1[cr]])
        c0, c1 = d0[cr], d1[cr]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            frac = np.where(c0 != c1, c0 / (c0 - c1), 0.0)
            out["n_star"][cr] = np.exp(lx0 + frac * (lx1 - lx0))
    return out, ok


def simulate(profiles: Sequence[HardwareProfile], models: Sequence[Architecture] = (),
             precisions: Sequence[str] = ("fp16", "int8", "nf4"),
             workload: Workload | None = None, sizes=None,
             family: Architecture | None = None, trust_table: str | None = None,
             depth: float | None = None, policy: str = "linear", weights=si.DEFAULT_WEIGHTS,
             n_draws: int = 0, seed: int = 0, thresholds: bool = True,
             progress: Callable[[int], None] | None = None) -> Surface:
    """The whole grid: GPUs x precisions x (models, then synthetic ``sizes`` of ``family``) x batches.

    ``workload``: the batch axis (``workload.batch``, increasing, >= 1), new and prompt tokens
    and the bitsandbytes settings (double quantisation, int8 threshold, 4-bit compute dtype)
    every precision runs with; its precision is not used. Default: batches 1, 8, 64 with
    :class:`~qtsim.model.workload.Workload`'s defaults. ``family`` defaults to the first model;
    it is the architecture synthetic sizes and N* are drawn from. ``depth`` moves published
    accuracies to another reasoning depth (trust.py). Returns an ``xarray.Dataset``
    (:func:`qtsim.simulate.dataset.make_surface`).
    """
    workload = workload or Workload(batch=(1, 8, 64))
    precisions = _check_grid(profiles, precisions, workload)
    b = np.atleast_1d(np.asarray(workload.batch, float))
    family = family or (models[0] if models else None)
    stacked, names, synthetic = _model_axis(models, sizes, family)
    natives = {p.native for p in profiles}
    t_si, trust = _trust_grid(precisions, names, synthetic, natives.pop() if len(natives) == 1
                              else "fp16", trust_table, depth, family.name if family else "",
                              models, workload.bnb)
    w = workload.replace(batch=b)
    per_gpu = [evaluate_gpu(prof, stacked, names, precisions, w, t_si, family, policy, weights,
                            n_draws, seed, thresholds, progress)
               for prof in profiles]
    if len(per_gpu) == 1:  # a view: stacking one GPU would copy every array once more
        data = {k: np.asarray(v)[None] for k, v in per_gpu[0].items()}
    else:
        data = {k: np.stack([g[k] for g in per_gpu]) for k in per_gpu[0]}
    coords = {
        "gpu": [p.name for p in profiles], "precision": precisions,
        "bits": [get_precision(p).bits for p in precisions], "model": names,
        "n_params": np.asarray(stacked.n_params, float), "synthetic": synthetic,
        "batch": b,
    }
    attrs = _attrs(profiles, w, family, trust_table, depth, policy, weights, n_draws, seed)
    return make_surface(coords, data, trust, attrs)


def _check_grid(profiles, precisions, workload: Workload) -> list[str]:
    """Refuse an empty GPU list, a precision listed twice, a batch axis that is not increasing
    and >= 1, and bitsandbytes settings a profile lacks; returns the canonical precisions."""
    if not profiles:
        raise QtsimError("give at least one GPU")
    precisions = [get_precision(p).name for p in precisions]
    if len(set(precisions)) != len(precisions):
        raise QtsimError(f"precision listed twice: {', '.join(precisions)}")
    b = np.atleast_1d(np.asarray(workload.batch, float))
    if b.size == 0 or np.any(~np.isfinite(b)) or np.any(b < 1):
        raise QtsimError("batch sizes must be >= 1")
    if np.any(np.diff(b) <= 0):
        raise QtsimError("batch sizes must be strictly increasing")
    for prof in profiles:
        workload.bnb.check(precisions, prof)
    return precisions


def _model_axis(models: Sequence[Architecture], sizes, family: Architecture | None):
    """(stacked counts, names, synthetic flags): the named models, then ``family``'s ``sizes``."""
    counts, names, synthetic = [], [], []
    for a in models:
        counts.append(a.counts())
        names.append(a.name)
        synthetic.append(False)
    if sizes is not None:
        if family is None:
            raise QtsimError("--sizes needs --family MODEL (or a --model) to scale")
        sz = np.atleast_1d(np.asarray(sizes, float))
        counts.append(family.scaled(sz))
        names += [size_label(family.name, x) for x in sz]
        synthetic += [True] * sz.size
    if not counts:
        raise QtsimError("give --model or --sizes with --family")
    if len(set(names)) != len(names):
        raise QtsimError(f"model listed twice: {', '.join(names)} (name each with NAME=PATH, or "
                         "by a _qtsim_name key in its config)")
    return stack_counts(counts), names, synthetic


def _attrs(profiles, workload: Workload, family, trust_table, depth, policy, weights, n_draws,
           seed) -> dict:
    """A surface's provenance: qtsim version, workload, SI options, draws and every profile."""
    bnb = workload.bnb
    return {
        "qtsim_version": __version__,
        "disclaimer": "predictions, not measurements",
        "new_tokens": int(workload.new_tokens), "prompt_tokens": int(workload.prompt_tokens),
        "policy": policy, "si_weights": list(weights), "n_draws": int(n_draws), "seed": int(seed),
        "band_percentiles": list(BAND),
        # BitsAndBytesConfig's names; the compute dtype "" = each profile's compute_dtype_4bit
        "bnb_4bit_use_double_quant": bool(bnb.double_quant),
        "llm_int8_threshold": float(bnb.int8_threshold),
        "bnb_4bit_compute_dtype": bnb.compute_dtype or "",
        "n_star_family": family.name if family else "",
        "trust_depth": float(depth) if depth is not None else float("nan"),
        "trust_table": trust_table or "shipped: data/reference/trust_table.csv",
        "profiles": [_profile_meta(p) for p in profiles],
        "energy_methods": ("j_per_query: integrated power model (what an NVML energy counter "
                           "would read); j_per_query_hli: the paper's HLI, TDP x latency / B, a "
                           "latency ratio in disguise; j_per_query_paper: eq. 19"),
    }


def _profile_meta(p: HardwareProfile) -> dict:
    """A profile's entry in a surface's metadata; the stack and the prior count are the serving
    profile's (with the default host part: what the surface was evaluated on)."""
    served = p.for_serving()
    return {"name": p.name, "source": p.source, "origin": profile_origin(p),
            "bitsandbytes": describe(served.bnb), "bitsandbytes_version": str(served.bnb["version"]),
            "notes": profile_notes(p, origin=False), "date": str(p.provenance.get("date", "")),
            "device": str(p.provenance.get("device", "")), "location": p.path or "",
            "tdp_w": p.tdp_w, "priors": served.n_priors}


# ---- trap map data --------------------------------------------------------------------------

def trap_map(profile: HardwareProfile, arch: Architecture, workload: Workload, sizes,
             n_draws: int = 200, seed: int = 0) -> dict:
    """Model size x batch map of one GPU and precision for :func:`qtsim.report.plots.plot_trap_map`.

    ``workload``: the precision with its bitsandbytes settings, the batch axis and the tokens.
    Returns ``sizes`` (S,), ``batches`` (B,), ``delta_j`` (S, B) quantized minus native J/query
    (power model), ``trapped`` (S, B), ``b_star_of_n`` (S,) the first crossing along batch for
    every size (B*(N), with its kind), ``n_star_of_b`` (B,) the first crossing along size for
    every batch (N*(B)), ``native_fits`` (S, B), and with draws ``p_trapped`` (S, B): the share
    of Monte-Carlo draws trapped (the boundary is uncertain where it lies in 16-84%).
    """
    sim = Simulator(profile, n_draws=max(n_draws, 1), seed=seed)
    s = np.asarray(sizes, float)
    b = np.asarray(workload.batch, float)
    fam = arch.scaled(s)
    w = workload.replace(batch=b)
    native = w.replace(precision=profile.native)
    q = grid_eval(sim, fam, w)
    n = grid_eval(sim, fam, native)
    dj = q["j_per_query"] - n["j_per_query"]
    bn, bk = crossing(b, dj)
    nb, nk = crossing(s, dj.T)
    out = {"sizes": s, "batches": b, "delta_j": dj, "trapped": verdicts.costs_more(dj, 0.0),
           "energy_ratio": q["j_per_query"] / n["j_per_query"],
           "b_star_of_n": bn, "b_star_kind": bk, "n_star_of_b": nb, "n_star_kind": nk,
           "native_fits": np.asarray(n["fits"], bool), "fits": np.asarray(q["fits"], bool),
           "gpu": profile.name, "precision": w.precision,
           "family": arch.name, "profile_source": profile.source, "n_draws": n_draws,
           "new_tokens": w.new_tokens, "prompt_tokens": w.prompt_tokens, "p_trapped": None}
    if n_draws > 0:
        out["p_trapped"] = np.mean(delta_j(sim, fam, w, True) > 0, axis=0)
    return out
