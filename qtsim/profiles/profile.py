"""The hardware profile in memory: :class:`HardwareProfile` (DESIGN.md sec. 4).

A profile holds the hardware's datasheet facts (``[hardware]``), where its numbers come from
(``[provenance]``), the physical model's constants with standard errors (``[physical.NAME]``:
value, stderr, unit, source, basis), the paper's derived constants (``[constants]``) and fit
statistics (``[fit]``). Sources are ``spec`` (datasheet), ``prior`` (an informed guess with a wide
stderr, its basis written beside it), ``published`` (a peer's measurement), ``calibrated`` (fitted
by ``qtsim calibrate`` on the named device) or ``fixed`` (held at a value by definition).

This module is the type and what it computes (host and stack combined for serving, Monte-Carlo
draws of its constants, the model's own error); reading, finding and writing profile files is
:mod:`qtsim.profiles.hardware`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field

import numpy as np

from qtsim.errors import QtsimError
from qtsim.model import stack
from qtsim.model.paths import QUANT_FAMILIES
from qtsim.model.physical import DISPATCH_FLAG
from qtsim.profiles import hosts
from qtsim.profiles.files import dumps_toml
from qtsim.profiles.hosts import is_host_param
from qtsim.profiles.schema import POSITIVE_PARAMS, SCHEMA_VERSION, Param


@dataclass
class HardwareProfile:
    hardware: dict
    provenance: dict
    physical: dict[str, Param]
    constants: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    path: str | None = None
    host: object = None  # the qtsim.profiles.hosts.HostPart combined in, if any
    #: the bitsandbytes stack predictions describe (:meth:`with_stack`): version, where it
    #: comes from, and the stack the host constants were fitted on
    bnb: dict | None = None

    @property
    def name(self) -> str:
        return self.hardware["name"]

    @property
    def tdp_w(self) -> float:
        return float(self.hardware["tdp_w"])

    @property
    def native(self) -> str:
        """The 16-bit dtype this hardware's reference runs use (fp16 on GPUs)."""
        return self.hardware.get("native_dtype", "fp16")

    @property
    def compute_dtype_4bit(self) -> str:
        """The dtype 4-bit models compute in on this hardware (bitsandbytes compute_dtype)."""
        return self.hardware.get("compute_dtype_4bit", self.native)

    @property
    def memory_bytes(self) -> float:
        return float(self.hardware["memory_gib"]) * 2**30

    @property
    def source(self) -> str:
        return self.provenance.get("source", "spec")

    @property
    def overlap(self) -> bool:
        """Host and device work overlap (asynchronous kernel launches) on CUDA GPUs only."""
        return self.hardware.get("device_type") == "cuda"

    @property
    def host_name(self) -> str:
        """The host/software part this profile's predictions assume."""
        if self.host is not None:
            return self.host.describe()
        return "this machine (host part calibrated with the device)"

    @property
    def n_priors(self) -> int:
        """How many physical constants are priors (not measured, not from a datasheet)."""
        return sum(1 for p in self.physical.values() if p.source == "prior")

    def with_host(self, host=None) -> HardwareProfile:
        """This device part combined with a host part (:mod:`qtsim.profiles.hosts`).

        ``host``: a HostPart, a name or file, or None for the default. A profile that carries
        its own host constants (a calibrated CPU profile) keeps them unless a host is named.
        """

        own = any(hosts.is_host_param(k) for k in self.physical) or "t_step_s" in self.physical
        if host is None and own:
            return self
        part = host if isinstance(host, hosts.HostPart) else hosts.load_host(host)
        device = {k: p for k, p in self.physical.items()
                  if not hosts.is_host_param(k) and k not in ("t_step_s", "t_layer_s")
                  and not k.startswith("t_layer_")}
        return HardwareProfile(self.hardware, self.provenance, {**device, **part.physical},
                               self.constants, self.fit, self.path, part)

    def with_stack(self, bnb_version: str | None = None) -> HardwareProfile:
        """This profile for a bitsandbytes release (:mod:`qtsim.model.stack`): the
        stack-dependent host constants (``h_fused4bit_max_batch``) set for ``bnb_version``,
        and :attr:`bnb` saying which release and why.

        A profile calibrated on a recorded stack is that stack (a different ``bnb_version`` is
        refused: recalibrate with it); otherwise ``bnb_version``, or by default
        :data:`qtsim.model.stack.CURRENT_BNB` (stated as assumed). Idempotent once applied.
        """

        if self.bnb is not None and bnb_version is None:
            return self
        if bnb_version is not None:
            stack.parse_version(bnb_version)
        recorded = (self.provenance.get("versions") or {}).get("bitsandbytes")
        if recorded and bnb_version and not stack.same_release(bnb_version, recorded):
            raise QtsimError(
                f"--bnb-version {bnb_version}: profile {self.name} was calibrated with "
                f"bitsandbytes {recorded}, and its constants describe that stack; calibrate "
                f"with bitsandbytes {bnb_version} installed to predict it")
        if not recorded and bnb_version is None and self.source == "calibrated":
            return dataclasses.replace(self, bnb={"version": "not stated",
                                                  "source": "the calibration recorded none"})
        version = str(recorded or bnb_version or stack.CURRENT_BNB)
        fitted = ((getattr(self.host, "host", None) or {}).get("stack") or {}).get("bitsandbytes")
        source = ("measured: the stack it was calibrated with" if recorded else
                  "given with --bnb-version" if bnb_version else
                  "assumed: the current release (--bnb-version to change)")
        phys = dict(self.physical)
        for k, (v, unit, basis) in stack.stack_constants(version).items():
            phys[k] = Param(v, 0.0, unit, "assumed", basis)
        host = self.host
        if host is not None:
            host = dataclasses.replace(host, host={**host.host, "stack": {
                **(host.host.get("stack") or {}), "bitsandbytes": version}})
        bnb = {"version": version, "source": source,
               "host_fitted_on": str(fitted) if fitted and not stack.same_release(
                   fitted, version) else ""}
        return dataclasses.replace(self, physical=phys, host=host, bnb=bnb)

    def for_serving(self, host=None, bnb_version: str | None = None) -> HardwareProfile:
        """This device part with a host part (:meth:`with_host`) and a bitsandbytes stack
        (:meth:`with_stack`): what every prediction runs on."""
        return self.with_host(host).with_stack(bnb_version)

    def model_flags(self) -> dict[str, float]:
        """Switches of the physical model a profile states in ``[hardware]`` (not fitted
        constants), as params entries: ``t_call_includes_dispatch`` (see :mod:`qtsim.model.physical`).
        """

        return {DISPATCH_FLAG: 1.0} if self.hardware.get(DISPATCH_FLAG) else {}

    def values(self) -> dict[str, float]:
        return {k: p.value for k, p in self.physical.items()}

    def stderrs(self) -> dict[str, float]:
        return {k: p.stderr for k, p in self.physical.items()}

    def draws(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` Monte-Carlo draws of every constant, shape (n, 1), for uncertainty bands.

        1. A joint normal draw of every constant: the fit's correlation matrix where the
           profile has one (``[fit] param_order`` and ``correlation``), independent otherwise.
        2. Physical order (:func:`ordered_pairs`): a constant of a quantized kernel path
           (``int8``, ``int8_t0``, ``nf4``, ``nf4dq``, ``fp4``, with or without ``_b1``/``_bn``,
           in any constant's name) whose central value exceeds its 16-bit reference's (the
           same name with the profile's native dtype) is drawn as *reference draw + extra*.
           The extra Q - R is lognormal with the profile's mean (Q - R) and stderr of the
           difference (sqrt(se_Q^2 + se_R^2 - 2 rho se_Q se_R)), tied to step 1's draw by its
           normal quantile (a Gaussian copula: correlations and the marginal spread of Q are
           kept to first order). So no draw makes a quantized path cheaper than its reference
           where the profile says it costs more (every ``t_call``; ``t_weight``,
           ``t_tokweight`` and per-layer floors where their central values are ordered).
           A per-call constant (``t_call_*``) whose central value *equals* its reference's
           (e.g. both 0: the per-call cost lives in kernel counts and host terms) is floored at
           the reference's draw, max(Q, R). Other pairs whose central values are equal or
           reversed, and names outside this scheme, are drawn as in step 1.
        3. Every other constant is clipped at zero (all are non-negative physical
           quantities), bandwidth at 5% of its value.
        4. Host time constants (``h_*`` in s) of a host part with a ``speed_sd_log`` are all
           multiplied by one lognormal speed factor per draw: a faster or slower machine speeds
           up or slows down every path together, so a quantized/native ratio keeps its sign
           where both sides are host-bound (their own stderr stays as small per-path terms).
        """
        rng = np.random.default_rng(seed)
        names = list(self.physical)
        mean = np.array([self.physical[k].value for k in names])
        sd = np.array([self.physical[k].stderr for k in names])
        z = rng.standard_normal((n, len(names)))
        rho = np.eye(len(names))
        order = self.fit.get("param_order")
        corr = self.fit.get("correlation")
        if order and corr:
            idx = [names.index(k) for k in order if k in names]
            c = np.asarray(corr, dtype=float)
            if c.shape == (len(order), len(order)) and len(idx) == len(order):
                try:
                    chol = np.linalg.cholesky(c + 1e-9 * np.eye(len(order)))
                    z[:, idx] = z[:, idx] @ chol.T
                    rho[np.ix_(idx, idx)] = c
                except np.linalg.LinAlgError:
                    pass  # not positive definite: fall back to independent draws
        x = mean + z * sd
        out = {}
        for j, k in enumerate(names):
            floor = 0.05 * mean[j] if k in POSITIVE_PARAMS else 0.0
            out[k] = np.maximum(x[:, j], floor)[:, None]
        for q, r in ordered_pairs(self.physical, self.native):
            i, j = names.index(q), names.index(r)
            m = mean[i] - mean[j]
            s = math.sqrt(max(sd[i] ** 2 + sd[j] ** 2 - 2 * rho[i, j] * sd[i] * sd[j], 0.0))
            out[q] = out[r] + _lognormal_extra(m, s, (z[:, i] * sd[i] - z[:, j] * sd[j]))[:, None]
        for q, r in tied_call_pairs(self.physical, self.native):
            out[q] = np.maximum(out[q], out[r])
        return self._host_speed(out, n, seed)

    def _host_speed(self, draws: dict, n: int, seed: int) -> dict:
        """``draws`` with every host time constant multiplied by one lognormal speed factor per
        draw (the host part's ``speed_sd_log``): one machine runs all its host work faster or
        slower together."""
        sd = getattr(self.host, "speed_sd_log", 0.0)
        if sd <= 0:
            return draws

        speed = np.exp(sd * np.random.default_rng([seed, 0x4057]).standard_normal((n, 1)))
        return {k: (v * speed if is_host_param(k) and self.physical[k].unit == "s" else v)
                for k, v in draws.items()}

    def model_error(self) -> dict:
        """The model's own out-of-sample error, added to the parameter draws in every band.

        Returns ``{"q68": {quantity: h}, "q95": {quantity: h}, "rho": r, "source":
        "validated" | "prior", "basis": str}``: ``h`` the half-widths of the 68% and 95%
        bands of |log(measured / predicted)| (so 0.10 = about +-10%), ``rho`` the correlation
        of the error across kernel families (the part that cancels in a quantized/native
        ratio). Quantities: ``latency_s``, ``step_s``, ``j_per_query``. A profile checked on
        held-out measurements records them in ``[fit.model_error]`` (``qtsim validate``
        computes them, with n points, source file and date); one without gets the stated prior
        :data:`MODEL_ERROR_PRIORS` for its source (a normal: q95 = 1.96 / 0.994 q68).
        """
        rec = self.fit.get("model_error")
        rows = {q: v for q, v in rec.items() if isinstance(v, dict) and "q68" in v} \
            if isinstance(rec, dict) else {}
        if rows:
            q68 = {q: float(v["q68"]) for q, v in rows.items()}
            q95 = {q: float(v.get("q95", v["q68"] * Z95 / Z68)) for q, v in rows.items()}
            for q in MODEL_ERROR_QUANTITIES:  # a quantity not checked: the widest checked one
                q68.setdefault(q, max(q68.values()))
                q95.setdefault(q, max(q95.values()))
            return {"q68": q68, "q95": q95, "rho": float(rec.get("rho", 0.0)),
                    "source": "validated",
                    "basis": f"{rec.get('basis', '')} ({rec.get('source_file', '')}, {rec.get('date', '')})"}
        prior = MODEL_ERROR_PRIORS["calibrated" if self.source == "calibrated" else "spec"]
        return {"q68": dict.fromkeys(MODEL_ERROR_QUANTITIES, prior["q68"]),
                "q95": dict.fromkeys(MODEL_ERROR_QUANTITIES, prior["q68"] * Z95 / Z68),
                "rho": prior["rho"], "source": "prior", "basis": prior["basis"]}

    def to_toml(self) -> str:
        doc = {"schema_version": SCHEMA_VERSION, "hardware": self.hardware,
               "provenance": self.provenance}
        if self.constants:
            doc["constants"] = self.constants
        doc["physical"] = {k: p.to_table() for k, p in self.physical.items()}
        if self.fit:
            doc["fit"] = self.fit
        return dumps_toml(doc)


MODEL_ERROR_QUANTITIES = ("latency_s", "step_s", "j_per_query")
Z68, Z95 = 0.99446, 1.95996  # standard-normal half-widths of the central 68% and 95%
#: stated priors for the model's own error where a profile records no held-out check
MODEL_ERROR_PRIORS = {
    "spec": {"q68": 0.157, "rho": 0.5, "basis": (
        "prior: BLIS (inference-sim) had 15.7% end-to-end error on an unprofiled A100 from "
        "datasheet alone (held out; reference/peer_measurements.md), taken as the 68% half-width "
        "(BLIS's figure includes its own parameter error, which this profile's priors already "
        "carry, so it is not inflated further); cross-precision correlation 0.5 assumed "
        "(no GPU validation yet)")},
    "calibrated": {"q68": 0.09, "rho": 0.5, "basis": (
        "prior: calibrated but never validated; 9% (Vidur < 9%, BLIS 6.7% median on profiled "
        "hardware, CPU held-out here about 10%); run `qtsim validate` to record this profile's own")},
}

#: a quantized kernel-path family in a constant's name (:data:`qtsim.model.paths.QUANT_FAMILIES`)
_QUANT_RE = re.compile(r"_(" + "|".join(QUANT_FAMILIES) + r")(_b1|_bn)?(?=_)")


def reference_name(name: str, params, native: str = "fp16") -> str | None:
    """The 16-bit reference of a quantized path's constant, or None.

    ``t_call_nf4_b1_s`` -> ``t_call_fp16_b1_s`` if the profile has it, else ``t_call_fp16_s``
    (the unsplit path; then the other 16-bit dtype), following the physical model's fallbacks.
    Any constant naming a quantized family this way is paired, whatever its prefix.
    """
    m = _QUANT_RE.search(name)
    if not m:
        return None
    side = m.group(2) or ""
    head, tail = name[:m.start()], name[m.end():]
    for dt in (native, "bf16" if native == "fp16" else "fp16"):
        for cand in (f"{head}_{dt}{side}{tail}", f"{head}_{dt}{tail}"):
            if cand in params and cand != name:
                return cand
    return None


def ordered_pairs(physical: dict, native: str = "fp16") -> list[tuple[str, str]]:
    """(quantized constant, its 16-bit reference) where the central value says Q > R."""
    out = []
    for k, p in physical.items():
        r = reference_name(k, physical, native)
        if r is not None and p.value > physical[r].value:
            out.append((k, r))
    return out


def model_error_deviates(z, q68: float, q95: float) -> np.ndarray:
    """Log model-error deviates from standard normals ``z`` with the given band half-widths.

    Piecewise linear in |z| through (0, 0), (Z68, q68), (Z95, q95), extended linearly beyond,
    sign kept: the central 68% of the deviates is +-q68 and the central 95% +-q95 (a normal
    when q95 = q68 x Z95 / Z68); heavier or lighter tails where held-out errors had them.
    """
    z = np.asarray(z, float)
    a = np.abs(z)
    inner = a * (q68 / Z68)
    outer = q68 + (a - Z68) * ((q95 - q68) / (Z95 - Z68))
    return np.sign(z) * np.where(a <= Z68, inner, np.maximum(outer, 0.0))


def tied_call_pairs(physical: dict, native: str = "fp16") -> list[tuple[str, str]]:
    """(quantized ``t_call_*``, its 16-bit reference) whose central values are equal."""
    out = []
    for k, p in physical.items():
        r = reference_name(k, physical, native) if k.startswith("t_call_") else None
        if r is not None and p.value == physical[r].value:
            out.append((k, r))
    return out


def _lognormal_extra(mean: float, sd: float, dev) -> np.ndarray:
    """A lognormal with ``mean`` and ``sd`` at the normal quantiles of ``dev / sd``.

    ``dev`` are zero-mean normal deviates with standard deviation ``sd`` (the step-1 draw of
    Q - R minus its mean); a zero ``sd`` gives ``mean`` in every draw.
    """
    dev = np.asarray(dev, float)
    if sd <= 0 or mean <= 0:
        return np.full(dev.shape, max(mean, 0.0))
    s2 = math.log1p((sd / mean) ** 2)
    return np.exp(math.log(mean) - 0.5 * s2 + math.sqrt(s2) * dev / sd)
