"""The simulator: a hardware profile composed with the physical model (like pvlib's ModelChain).

:class:`Simulator` evaluates latency, throughput, energy per query, COR, peak memory, B* and N*
for any model size, precision and batch, vectorised over whole grids, and carries the
profile's uncertainty by Monte-Carlo draws of its constants (``draws=True``): results then have
a leading axis of draws, summarised by :func:`band`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qtsim import paper, physical, thresholds
from qtsim.architecture import ArchCounts, Architecture
from qtsim.precision import get_precision, reference_for
from qtsim.profiles import HardwareProfile
from qtsim.thresholds import (  # noqa: F401  (BAND, GIB, KIND_NAMES, crossing: public here too)
    BAND,
    GIB,
    KIND_NAMES,
    crossing,
    nan_percentiles,
)
from qtsim.workload import BnbSettings


def band(x):
    """(median, low, high) of Monte-Carlo draws (1-D), ignoring NaN and inf; NaN if none finite."""
    lo, med, hi = nan_percentiles(np.asarray(x, float).ravel(), (BAND[0], 50.0, BAND[1]))
    return med, lo, hi


@dataclass(frozen=True)
class Threshold:
    """A crossing of two energy curves: where quantized and native cost the same per query.

    ``kind``: ``"crossing"`` (trapped below ``value``, free above), ``"reverse"`` (free below,
    trapped above), ``"trapped_everywhere"`` (no crossing in the range: value = inf),
    ``"never_trapped"`` (no crossing: value = 0) or ``"native_oom"`` (native does not fit).
    """

    value: float
    kind: str
    low: float = float("nan")
    high: float = float("nan")
    range_: tuple = ()
    reason: str = ""

    def to_dict(self):
        return {"value": _num(self.value), "kind": self.kind, "band": [_num(self.low), _num(self.high)],
                "range": [_num(x) for x in self.range_], "reason": self.reason}


def _num(x):
    x = float(x)
    if np.isnan(x):
        return None
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


class Simulator:
    """Physical-model predictions from one hardware profile.

    Parameters
    ----------
    profile : the hardware profile whose constants (and their stderr) drive the model
    host : the host/software part (:mod:`qtsim.hosts`: a name, file or HostPart) combined with
        a device-only profile; None takes the profile's own host part or the default host
    n_draws : Monte-Carlo draws used when ``draws=True``
    seed : random seed of the draws (results are reproducible)
    bnb : bitsandbytes settings (double quantisation, LLM.int8() threshold, 4-bit compute
        dtype) every evaluation uses, B* and N* included; default transformers' defaults
    """

    def __init__(self, profile: HardwareProfile, n_draws: int = 400, seed: int = 0,
                 host=None, bnb: BnbSettings | None = None):
        self.profile = profile.with_host(host)
        self.n_draws = n_draws
        self.seed = seed
        self.bnb = bnb or BnbSettings()
        self._central = self.profile.values()
        self._draws = None

    def params(self, draws: bool = False):
        if not draws:
            return self._central
        if self._draws is None:
            self._draws = self.profile.draws(self.n_draws, self.seed)
        return self._draws

    # ---- one configuration -------------------------------------------------------------------
    def evaluate(self, counts: ArchCounts, precision: str, batch, new_tokens=256,
                 prompt_tokens=128, draws=False, double_quant=None):
        """Latency, throughput, J/query (power model and HLI) and peak memory, vectorised.

        ``double_quant`` None takes the simulator's :class:`BnbSettings` (as do the int8
        threshold and the 4-bit compute dtype).
        """
        if double_quant is None:
            double_quant = self.bnb.double_quant
        out = physical.query(counts, precision, batch, new_tokens, prompt_tokens,
                             self.params(draws), self.profile.tdp_w, self.profile.native,
                             double_quant, self.bnb.compute_dtype_for(self.profile),
                             overlap=self.profile.overlap,
                             int8_threshold=self.bnb.int8_threshold)
        overhead = float(self.profile.hardware.get("runtime_overhead_gib", 0.0)) * GIB
        out["peak_bytes"] = physical.peak_memory_bytes(counts, precision, batch, new_tokens,
                                                       prompt_tokens, double_quant, overhead)
        out["fits"] = out["peak_bytes"] <= self.profile.memory_bytes
        return out

    def compare(self, counts: ArchCounts, precision: str, batch, new_tokens=256,
                prompt_tokens=128, draws=False, double_quant=None):
        """Quantized against its native reference at the same workload.

        Returns ``(quant, native, derived)``; ``derived`` holds COR (eq. 9 from step times),
        the energy ratio (quantized / native J per query), the speed ratio (tok/s), and
        ``delta_j`` (quantized minus native J/query; positive = trapped on energy).
        """
        ref = reference_for(precision) if get_precision(precision).quantized else precision
        ref = self.profile.native if get_precision(precision).quantized else ref
        q = self.evaluate(counts, precision, batch, new_tokens, prompt_tokens, draws, double_quant)
        n = self.evaluate(counts, ref, batch, new_tokens, prompt_tokens, draws)
        derived = {
            "cor": paper.cor_from_latency(q["step_s"], n["step_s"]),
            "energy_ratio": q["j_per_query"] / n["j_per_query"],
            "energy_ratio_hli": q["j_per_query_hli"] / n["j_per_query_hli"],
            "speed_ratio": q["tok_per_s"] / n["tok_per_s"],
            "delta_j": q["j_per_query"] - n["j_per_query"],
        }
        return q, n, derived

    # ---- thresholds --------------------------------------------------------------------------
    def batch_limit(self, counts: ArchCounts, precision: str, new_tokens, prompt_tokens) -> float:
        """Largest batch whose peak memory fits the device (0 if even batch 1 does not)."""
        return float(np.ravel(thresholds.batch_limit(self, counts, precision, new_tokens,
                                                     prompt_tokens))[0])

    def b_star(self, counts: ArchCounts, precision: str, new_tokens=256, prompt_tokens=128,
               b_max: float = thresholds.B_MAX, draws=False) -> Threshold:
        """Critical batch B*: where quantized J/query equals native (physical model).

        Solved on a log grid of integer batches from 1 to the smaller of ``b_max`` and the
        native configuration's memory limit (:func:`qtsim.thresholds.b_star_rows`). The paper's
        closed form (eq. 18) is :func:`qtsim.paper.b_star` on :meth:`paper_constants`.
        """
        one = thresholds.map_counts(counts, np.atleast_1d)
        r = thresholds.b_star_rows(self, one, precision, new_tokens, prompt_tokens, b_max, draws=draws)
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
        if kname in ("crossing", "reverse") and value == 2.0 and np.isnan(lo):
            reason += "; the flip happens at the kernel switch between batch 1 and 2 (4-bit GEMV -> GEMM)"
        return Threshold(value, kname, lo, hi, (1.0, limit), reason)

    def n_star(self, arch: Architecture, precision: str, batch=1, new_tokens=256,
               prompt_tokens=128, n_range=thresholds.N_RANGE, draws=False) -> Threshold:
        """Critical Model Scale N*: the parameter count where quantized J/query equals native.

        The paper names N* without defining it; qtsim defines it for a given hardware,
        precision, batch and token count along the synthetic family of ``arch`` (width and
        depth scaled together, :func:`qtsim.architecture.scale_counts`). It exists only
        because some costs (per-call host and launch overhead, per-layer kernels) do not scale
        with N: below N* those dominate and quantized loses; above N* the weight-byte savings
        win. Memory limits are ignored here (a planner's curve, not a deployment check).
        """
        r = thresholds.n_star_rows(self, arch, precision, [batch], new_tokens, prompt_tokens,
                                   n_range, draws=draws)
        kname = KIND_NAMES[int(np.ravel(r["n_star_kind"])[0])]
        lo, hi = ((float(np.ravel(r["n_star_low"])[0]), float(np.ravel(r["n_star_high"])[0]))
                  if draws else (np.nan, np.nan))
        span = f"{n_range[0]:.0e}..{n_range[1]:.0e} parameters"
        reason = {
            "crossing": f"quantized costs more energy per query below N*, less above (searched {span})",
            "reverse": f"quantized saves energy below N* and costs more above (searched {span})",
            "trapped_everywhere": f"no crossing in {span}: quantized costs more at every size, N* > {n_range[1]:.0e}",
            "never_trapped": f"no crossing in {span}: quantized costs less at every size, N* < {n_range[0]:.0e}",
        }[kname]
        return Threshold(float(np.ravel(r["n_star"])[0]), kname, lo, hi, tuple(n_range), reason)

    def paper_constants(self, counts: ArchCounts, precision: str, draws=False,
                        double_quant=None):
        """The paper's alpha, gamma, phi(h, p) and eq. 18 B*, derived at batch 1."""
        if double_quant is None:
            double_quant = self.bnb.double_quant
        c = physical.paper_constants(counts, precision, self.params(draws), self.profile.tdp_w,
                                     self.profile.native, double_quant=double_quant,
                                     compute_dtype_4bit=self.bnb.compute_dtype_for(self.profile),
                                     overlap=self.profile.overlap,
                                     int8_threshold=self.bnb.int8_threshold)
        c["b_star_paper"] = paper.b_star(c["alpha_j_per_bit"], c["phi_j"],
                                         get_precision(precision).bits)
        return c


def paper_constants_table(profile: HardwareProfile, counts: ArchCounts, reference_model: str,
                          precisions=("int8", "nf4"), n_draws: int = 400) -> dict:
    """The ``[constants]`` table of a profile: the paper's alpha, gamma, phi(h, p) and eq. 18 B*.

    Derived from the physical constants at batch 1 for ``reference_model`` (the paper's
    constants carry no model-size dependence, so they only mean something for a stated model);
    stderr is half the 16-84% range over Monte-Carlo draws of the profile's constants (equal to
    the standard deviation for a normal, and robust for B*, a ratio whose draws can pass near
    phi = 0). Also
    the model-free hardware alpha: J per bit of weight streamed, (e_byte + p_static / BW) / 8.
    """
    sim = Simulator(profile, n_draws=n_draws)
    v, d = sim.params(), sim.params(draws=True)

    def per_bit(p):
        return (p["e_byte_j"] + p["p_static_w"] / (p["mem_bw_gbs"] * 1e9)) / 8.0

    def stat(central, draws):  # robust to ratios whose draws pass near a pole (B* = alpha / phi)
        _, lo, hi = band(np.asarray(draws, float).ravel())
        return float(np.asarray(central)), float((hi - lo) / 2.0)

    a, a_se = stat(per_bit(v), per_bit(d))
    table = {"reference_model": reference_model, "reference_batch": 1, "context_tokens": 0,
             "alpha_j_per_weight_bit": float(f"{a:.6g}"), "alpha_j_per_weight_bit_stderr": float(f"{a_se:.4g}"),
             "note": ("the paper's constants (eq. 18, 19) derived from this profile's physical constants "
                      "at batch 1 for the reference model; stderr = half the 16-84% range over Monte-Carlo draws")}
    for p in precisions:
        c, cd = sim.paper_constants(counts, p), sim.paper_constants(counts, p, draws=True)
        row = {}
        for k in ("alpha_j_per_bit", "gamma_j", "phi_j", "b_star_paper"):
            val, se = stat(c[k], cd[k])
            name = "b_star_eq18" if k == "b_star_paper" else k
            row[name] = float(f"{val:.6g}")
            row[f"{name}_stderr"] = float(f"{se:.4g}")
        table[p] = row
    return table
