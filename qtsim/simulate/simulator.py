"""The simulator: a hardware profile composed with the physical model (like pvlib's ModelChain).

:class:`Simulator` evaluates latency, throughput, energy per query, COR, peak memory, B* and N*
for any model size, precision and batch, vectorised over whole grids, and carries the
profile's uncertainty by Monte-Carlo draws of its constants (``draws=True``): results then have
a leading axis of draws, summarised by :func:`band`.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np

from qtsim.model import physical
from qtsim.model.architecture import ArchCounts, Architecture
from qtsim.model.results import Evaluation, QueryResult
from qtsim.model.stats import GIB
from qtsim.model.verdicts import json_number, ratios
from qtsim.model.workload import Workload
from qtsim.profiles import constants
from qtsim.profiles.profile import HardwareProfile, model_error_deviates
from qtsim.simulate import thresholds


@dataclass(frozen=True)
class Threshold:
    """A crossing of two energy curves: where quantized and native cost the same per query.

    ``kind``: ``"crossing"`` (trapped below ``value``, free above), ``"reverse"`` (free below,
    trapped above), ``"trapped_everywhere"`` (no crossing in the range: value = inf),
    ``"never_trapped"`` (no crossing: value = 0) or ``"native_oom"`` (native does not fit).
    ``value`` is the first crossing; ``crossings`` lists every one of the central curves
    (value, "trapped below" | "trapped above"). ``low``/``high`` are the 16th/84th percentiles
    over *all* draws, a draw without a crossing counted at +inf (trapped at every point
    searched: the threshold lies above the range) or 0 (never trapped: below it), so a band
    end of inf or 0 means "beyond the search range". ``draws`` holds the shares of draws with
    no crossing (``p_no_crossing``, split into ``p_trapped_everywhere`` and
    ``p_never_trapped``) and with more than one (``p_multiple_crossings``), and the median.
    ``memory`` (N* only): whether a model of that size fits the device.
    """

    value: float
    kind: str
    low: float = float("nan")
    high: float = float("nan")
    range_: tuple = ()
    reason: str = ""
    crossings: tuple = ()
    draws: dict | None = None
    memory: dict | None = None

    def to_dict(self):
        d = {"value": _num(self.value), "kind": self.kind, "band": [_num(self.low), _num(self.high)],
             "range": [_num(x) for x in self.range_], "reason": self.reason,
             "crossings": [{"value": _num(v), "side": side} for v, side in self.crossings]}
        if self.draws is not None:
            d["draws"] = {k: (_num(v) if isinstance(v, (float, np.floating)) else v)
                          for k, v in self.draws.items()}
        if self.memory is not None:
            d["memory"] = self.memory
        return d


def _draw_stats(r: dict, prefix: str, n_draws: int) -> dict:
    """The draw shares and median of one threshold row (first entry) for :class:`Threshold`."""
    keys = ("p_no_crossing", "p_trapped_everywhere", "p_never_trapped", "p_multiple_crossings",
            "median")
    out = {k: float(np.ravel(r[f"{prefix}_{k}"])[0]) for k in keys if f"{prefix}_{k}" in r}
    out["n_draws"] = n_draws
    out["censoring"] = ("percentiles over all draws; a draw with no crossing counts as beyond "
                        "the search range on the side its verdict implies: +inf ('above range') "
                        "or 0 ('below range')")
    return out


_num = json_number


def grid_ndim(counts: ArchCounts, workload: Workload) -> int:
    """Dimensions of the grid that ``counts`` and ``workload`` broadcast to (at least 1)."""
    shapes = [np.shape(getattr(counts, f.name)) for f in dataclasses.fields(counts)]
    shapes += [np.shape(workload.batch), np.shape(workload.new_tokens),
               np.shape(workload.prompt_tokens)]
    return max(1, len(np.broadcast_shapes(*shapes)))


def _draw_axes(x, ndim: int):
    """A per-draw array (n_draws, 1) reshaped to (n_draws, 1, ..., 1) with ``ndim`` trailing
    axes; anything else (flags, scalars) unchanged."""
    if ndim == 1 or not _per_draw(x):
        return x
    return x.reshape((x.shape[0],) + (1,) * ndim)


def _pick_draws(x, index, ndim: int):
    """The draws ``index`` of a per-draw array (n_draws, 1), shaped (len(index), 1, ..., 1)
    with ``ndim`` trailing axes; anything else (flags, scalars) unchanged."""
    if not _per_draw(x):
        return x
    return x[np.asarray(index), 0].reshape((-1,) + (1,) * ndim)


def _per_draw(x) -> bool:
    return isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == 1


class Simulator:
    """Physical-model predictions from one hardware profile.

    Parameters
    ----------
    profile : the hardware profile whose constants (and their stderr) drive the model
    host : the host/software part (:mod:`qtsim.profiles.hosts`: a name, file or HostPart) combined with
        a device-only profile; None takes the profile's own host part or the default host
    bnb_version : the bitsandbytes release predicted (:meth:`HardwareProfile.with_stack`); None:
        the one a calibrated profile recorded, else the current release (stated as assumed)
    n_draws : Monte-Carlo draws used when ``draws=True``
    seed : random seed of the draws (results are reproducible)
    model_error : add the model's own out-of-sample error (:meth:`HardwareProfile.model_error`)
        to the parameter draws, so a 68% band covers about 68% of measurements; ``False``
        gives parameter uncertainty alone (validation uses it to score both)

    Every method takes what is served as a :class:`~qtsim.model.workload.Workload` (precision
    with its bitsandbytes settings, batch, new and prompt tokens); the batch may be an array.
    """

    def __init__(self, profile: HardwareProfile, n_draws: int = 400, seed: int = 0,
                 host=None, model_error: bool = True, bnb_version: str | None = None):
        self.profile = profile.for_serving(host, bnb_version)
        self.n_draws = n_draws
        self.seed = seed
        self.model_error = self.profile.model_error() if model_error else None
        self._flags = self.profile.model_flags()
        self._central = {**self.profile.values(), **self._flags}
        self._draws = None
        self._errz = {}

    def params(self, draws: bool = False, ndim: int = 1):
        """Central constants, or with ``draws`` their Monte-Carlo draws shaped (n_draws, 1, ...)
        with ``ndim`` trailing axes, so that they broadcast against an ``ndim``-D grid."""
        if not draws:
            return self._central
        if self._draws is None:
            self._draws = {1: {**self.profile.draws(self.n_draws, self.seed), **self._flags}}
        if ndim not in self._draws:
            self._draws[ndim] = {k: _draw_axes(v, ndim) for k, v in self._draws[1].items()}
        return self._draws[ndim]

    def error_z(self, family: str) -> np.ndarray:
        """Standard-normal model-error deviates of one kernel family, shape (n_draws, 1).

        One deviate per draw, the same for every batch, size and token count (a systematic
        error of the model for that family on this hardware), correlated ``rho`` across
        families (the shared part cancels in quantized/native ratios).
        """
        if family not in self._errz:
            rho = self.model_error["rho"] if self.model_error else 0.0
            common = np.random.default_rng([self.seed, 0x5EED]).standard_normal((self.n_draws, 1))
            own = np.random.default_rng([self.seed, zlib.crc32(family.encode())]).standard_normal(
                (self.n_draws, 1))
            self._errz[family] = np.sqrt(rho) * common + np.sqrt(1.0 - rho) * own
        return self._errz[family]

    def _add_model_error(self, out: QueryResult, family: str, ndim: int = 1,
                         draw_index=None) -> QueryResult:
        """Scale draws by exp(model-error deviate): latency, step, tok/s, J/query (both forms)."""
        if not self.model_error:
            return out
        z = self.error_z(family)
        z = _draw_axes(z, ndim) if draw_index is None else _pick_draws(z, draw_index, ndim - 1)
        me = self.model_error

        def f(q):
            return np.exp(model_error_deviates(z, me["q68"][q], me["q95"][q]))

        f_t, f_e = f("latency_s"), f("j_per_query")
        return out.replace(latency_s=out.latency_s * f_t, prefill_s=out.prefill_s * f_t,
                           step_s=out.step_s * f("step_s"), tok_per_s=out.tok_per_s * (1.0 / f_t),
                           j_per_query_hli=out.j_per_query_hli * f_t,
                           j_per_query=out.j_per_query * f_e,
                           avg_power_w=out.avg_power_w * (f_e / f_t))

    # ---- one configuration -------------------------------------------------------------------
    def evaluate(self, counts: ArchCounts, workload: Workload, draws: bool = False,
                 overrides: dict | None = None, draw_index=None) -> Evaluation:
        """Latency, throughput, J/query (power model and HLI) and peak memory of ``workload``.

        Vectorised: ``workload.batch`` and the ``counts`` fields may be arrays that broadcast;
        with ``draws`` every value gets a leading axis of Monte-Carlo draws (model error
        included), the draws broadcasting against a grid of any dimension
        (:func:`grid_ndim`). With ``draw_index`` (1-D ints) the grid's first axis runs over
        those draws instead, entry i taking draw ``draw_index[i]`` (a threshold refined only
        where each draw crosses) and no draw axis is added. ``overrides`` replaces named
        constants (central values only: a what-if, e.g. one power state at the edge of its
        band). Returns an :class:`~qtsim.model.results.Evaluation`: the
        :class:`~qtsim.model.results.QueryResult` of :func:`qtsim.model.physical.query` plus
        ``peak_bytes`` and ``fits`` (peak memory within the device's).
        """
        prof = self.profile
        ndim = grid_ndim(counts, workload) if draws else 1
        params = self.params(draws, ndim)
        if draws and draw_index is not None:
            params = {k: _pick_draws(v, draw_index, ndim - 1) for k, v in self.params(True).items()}
        params = {**params, **(overrides or {})}
        out = physical.query(counts, workload, params, prof.tdp_w, prof.native,
                             prof.compute_dtype_4bit, overlap=prof.overlap)
        if draws:
            out = self._add_model_error(out, workload.family, ndim, draw_index)
        peak, fits = self.memory(counts, workload)
        return Evaluation(**out, peak_bytes=peak, fits=fits)

    def memory(self, counts: ArchCounts, workload: Workload):
        """(peak bytes, fits): :meth:`peak_bytes` of ``workload`` and whether it is within the
        device's memory (cheap: no timelines, so callers can skip what does not fit)."""
        peak = self.peak_bytes(counts, workload)
        return peak, peak <= self.profile.memory_bytes

    def peak_bytes(self, counts: ArchCounts, workload: Workload):
        """Peak device memory of ``workload``, runtime overhead included, bytes."""
        overhead = float(self.profile.hardware.get("runtime_overhead_gib", 0.0)) * GIB
        w = workload
        return physical.peak_memory_bytes(counts, w.precision, w.batch, w.new_tokens,
                                          w.prompt_tokens, w.double_quant, overhead)

    def idle_power_w(self, draws: bool = False):
        """Board power of a replica with no batch to run, W: the profile's ``p_idle_w`` (the
        awake power where a profile has none). A float, or (n_draws, 1) with draws.
        ``qtsim plan`` charges replicas' hours without a batch at it."""
        p = self.params(draws)
        if "p_idle_w" in p:
            return p["p_idle_w"]
        return p["p_awake_w"] if "p_awake_w" in p else p["p_static_w"]

    def compare(self, counts: ArchCounts, workload: Workload, draws: bool = False,
                overrides: dict | None = None):
        """Quantized against its native reference at the same workload.

        Returns ``(quant, native, derived)``; ``derived`` holds COR (eq. 9 from step times),
        the energy ratio (quantized / native J per query), the speed ratio (tok/s), and
        ``delta_j`` (quantized minus native J/query; positive = trapped on energy).
        """
        q = self.evaluate(counts, workload, draws, overrides)
        n = self.evaluate(counts, workload.reference(self.profile.native), draws, overrides)
        return q, n, ratios(q, n)

    def verdict_range(self, counts: ArchCounts, workload: Workload, name: str = "p_awake_w",
                      z: float = 1.0) -> dict:
        """Does the energy verdict hinge on one constant? The quantized/native energy ratio with
        ``name`` at its central value -/+ ``z`` stderr (everything else central): ``flips`` is
        True when the verdict differs at either edge of that range (68% for z = 1)."""
        p = self.profile.physical[name]
        lo, hi = max(p.value - z * p.stderr, 0.0), p.value + z * p.stderr
        out = {"name": name, "value": p.value, "stderr": p.stderr, "unit": p.unit,
               "source": p.source, "range": [lo, hi]}
        trapped = []
        for x in (lo, p.value, hi):
            *_, d = self.compare(counts, workload, overrides={name: x})
            trapped.append(bool(np.ravel(d["energy_ratio"])[0] > 1.0))
            out.setdefault("energy_ratio", []).append(float(np.ravel(d["energy_ratio"])[0]))
        out["flips"] = len(set(trapped)) > 1
        return out

    # ---- thresholds --------------------------------------------------------------------------
    def batch_limit(self, counts: ArchCounts, workload: Workload) -> float:
        """Largest batch whose peak memory fits the device (0 if even batch 1 does not);
        ``workload.batch`` is ignored."""
        return float(np.ravel(thresholds.batch_limit(self, counts, workload))[0])

    def b_star(self, counts: ArchCounts, workload: Workload, b_max: float = thresholds.B_MAX,
               draws: bool = False) -> Threshold:
        """Critical batch B*: where quantized J/query equals native (physical model).

        ``workload`` gives the precision with its bitsandbytes settings and the tokens; its
        batch is ignored. Solved on a log grid of integer batches from 1 to the smaller of
        ``b_max`` and the native configuration's memory limit
        (:func:`qtsim.simulate.thresholds.b_star_rows`). The paper's closed form (eq. 18) is
        :func:`qtsim.model.paper.b_star` on :meth:`paper_constants`.
        """
        one = thresholds.map_counts(counts, np.atleast_1d)
        r = thresholds.b_star_rows(self, one, workload, b_max, draws=draws, details=True)
        kname = thresholds.KIND_CODES[int(r["b_star_kind"][0])]
        limit = float(r["b_star_max"][0])
        lo, hi = (float(r["b_star_low"][0]), float(r["b_star_high"][0])) if draws else (np.nan, np.nan)
        if kname == "native_oom":
            return Threshold(float("nan"), kname, range_=(1, b_max),
                             reason="the native 16-bit model does not fit in device memory at batch 1")
        value = float(r["b_star"][0])
        reason = {
            "crossing": f"quantized costs more energy per query below B*, less above (searched batch 1..{limit:g})",
            "reverse": f"quantized saves energy below this batch and costs more above it (searched 1..{limit:g})",
            "trapped_everywhere": f"quantized costs more energy at every batch from 1 to {limit:g} (memory or range limit): B* > {limit:g}",
            "never_trapped": f"quantized costs less energy at every batch from 1 to {limit:g}",
        }[kname]
        crossings = thresholds.all_crossings(r["b_star_grid"][0], r["b_star_delta"][0])
        crossings = [(max(v, 2.0) if v < 2.0 else v, side) for v, side in crossings]
        if kname in ("crossing", "reverse") and value == 2.0:
            reason += "; the flip happens at the kernel switch between batch 1 and 2 (4-bit GEMV -> GEMM)"
        switch = thresholds.dequantise_switch(self, workload.family, b_max)
        if kname in ("crossing", "reverse") and switch is not None and value == switch:
            reason += (f"; the flip happens where bitsandbytes' fused 4-bit GEMM ends (batch "
                       f"{switch - 1:g}): from batch {switch:g} every weight is dequantised "
                       "each step")
        if len(crossings) > 1:
            reason += f"; the curves cross {len(crossings)} times"
        return Threshold(value, kname, lo, hi, (1.0, limit), reason, tuple(crossings),
                         _draw_stats(r, "b_star", self.n_draws) if draws else None)

    def n_star(self, arch: Architecture, workload: Workload, n_range=thresholds.N_RANGE,
               draws: bool = False) -> Threshold:
        """Critical Model Scale N*: the parameter count where quantized J/query equals native.

        The paper names N* without defining it; qtsim defines it for a given hardware and
        ``workload`` (precision with its bitsandbytes settings, one batch, tokens) along the
        synthetic family of ``arch`` (width and depth scaled together,
        :func:`qtsim.model.architecture.scale_counts`). It exists only because some costs
        (per-call host and launch overhead, per-layer kernels) do not scale with N: below N*
        those dominate and quantized loses; above N* the weight-byte savings win. Memory limits
        are ignored here (a planner's curve, not a deployment check).
        """
        r = thresholds.n_star_rows(self, arch, workload, n_range, draws=draws, details=True)
        kname = thresholds.KIND_NAMES[int(np.ravel(r["n_star_kind"])[0])]
        lo, hi = ((float(np.ravel(r["n_star_low"])[0]), float(np.ravel(r["n_star_high"])[0]))
                  if draws else (np.nan, np.nan))
        span = f"{n_range[0]:.0e}..{n_range[1]:.0e} parameters"
        reason = {
            "crossing": f"quantized costs more energy per query below N*, less above (searched {span})",
            "reverse": f"quantized saves energy below N* and costs more above (searched {span})",
            "trapped_everywhere": f"no crossing in {span}: quantized costs more at every size, N* > {n_range[1]:.0e}",
            "never_trapped": f"no crossing in {span}: quantized costs less at every size, N* < {n_range[0]:.0e}",
        }[kname]
        value = float(np.ravel(r["n_star"])[0])
        crossings = thresholds.all_crossings(r["n_star_sizes"], np.asarray(r["n_star_delta"])[0])
        if len(crossings) > 1:
            reason += f"; the curves cross {len(crossings)} times"
        return Threshold(value, kname, lo, hi, tuple(n_range), reason, tuple(crossings),
                         _draw_stats(r, "n_star", self.n_draws) if draws else None,
                         self.size_memory(arch, workload, value))

    def size_memory(self, arch: Architecture, workload: Workload, n_params: float) -> dict:
        """Whether a model of ``n_params`` in ``arch``'s family fits this device.

        Peak memory (weights with scales, full KV cache, workspace, runtime overhead) of
        ``workload`` and of the same workload at the native dtype, and the largest size of the
        family that fits at each (searched 10^7..10^13 parameters).
        """
        cap = self.profile.memory_bytes
        sizes = np.geomspace(1e7, 1e13, 241)
        family = arch.scaled(sizes)
        at = arch.scaled([n_params]) if np.isfinite(n_params) and n_params > 0 else None
        out = {"device_gib": cap / GIB, "batch": workload.batch}
        for tag, w in (("quantized", workload),
                       ("native", workload.replace(precision=self.profile.native))):
            ok = np.asarray(self.peak_bytes(family, w)) <= cap
            out[f"largest_fitting_{tag}_params"] = float(sizes[ok].max()) if ok.any() else 0.0
            if at is not None:
                one = float(np.ravel(self.peak_bytes(at, w))[0])
                out[f"{tag}_gib"] = one / GIB
                out[f"fits_{tag}"] = bool(one <= cap)
        return out

    def paper_constants(self, counts: ArchCounts, workload: Workload, draws: bool = False) -> dict:
        """The paper's alpha, gamma, phi(h, p) and eq. 18 B* of ``workload``'s precision (with its
        bitsandbytes settings), derived at batch 1 (``workload.batch`` and tokens are ignored):
        :func:`qtsim.profiles.constants.paper_constants` on this simulator's constants."""
        return constants.paper_constants(self.profile, counts, workload, self.params(draws))
