"""Hardware profiles: one TOML file per hardware (DESIGN.md sec. 4).

A profile holds the hardware's datasheet facts (``[hardware]``), where its numbers come from
(``[provenance]``), the physical model's constants with standard errors (``[physical.NAME]``:
value, stderr, unit, source, basis), the paper's derived constants (``[constants]``) and fit
statistics (``[fit]``). Sources are ``spec`` (datasheet), ``prior`` (an informed guess with a wide
stderr, its basis written beside it), ``published`` (a peer's measurement), ``calibrated`` (fitted
by ``qtsim calibrate`` on the named device) or ``fixed`` (held at a value by definition).

Search order for a name: ``--profile FILE``; the user directory (``$QTSIM_PROFILE_DIR``, else
``$XDG_CONFIG_HOME/qtsim/profiles``, else ``~/.config/qtsim/profiles``); the shipped profiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import tomli_w

from qtsim.errors import ProfileError, UnknownNameError, read_user_file, suggest
from qtsim.model.paths import QUANT_FAMILIES
from qtsim.profiles import schema
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

    def with_host(self, host=None) -> HardwareProfile:
        """This device part combined with a host part (:mod:`qtsim.profiles.hosts`).

        ``host``: a HostPart, a name or file, or None for the default. A profile that carries
        its own host constants (a calibrated CPU profile) keeps them unless a host is named.
        """
        from qtsim.profiles import hosts

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
        from qtsim.errors import QtsimError
        from qtsim.model import stack

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
        from qtsim.model.physical import DISPATCH_FLAG

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
        from qtsim.profiles.hosts import is_host_param

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


# ---- reading ---------------------------------------------------------------------------------
def parse_profile(text: str, where: str = "profile") -> HardwareProfile:
    """Parse a profile's TOML text and check it against :data:`qtsim.profiles.schema.PROFILE`;
    any defect is a one-line ProfileError naming ``where`` and the key. A spec-derived profile's
    constants are re-derived from its ``[hardware]`` facts (:func:`rederive`)."""
    doc, physical = schema.parse(text, schema.PROFILE, where)
    return rederive(HardwareProfile(doc["hardware"], doc.get("provenance", {}), physical,
                                    doc.get("constants", {}), doc.get("fit", {}), where))


#: sources of the constants a spec-derived profile computes from its ``[hardware]`` facts; a
#: constant with any other source (published, assumed, calibrated) is the user's own and kept
DERIVED_SOURCES = ("spec", "prior", "fixed")


def rederive(profile: HardwareProfile) -> HardwareProfile:
    """A spec-derived profile whose ``[physical]`` constants follow its ``[hardware]`` facts.

    The constants a datasheet implies (bandwidth, power and energy priors, per-path times:
    :func:`qtsim.profiles.priors.derived_device_constants`, the same code that wrote the shipped
    profiles) are recomputed from ``[hardware]``, so editing ``mem_bw_gbs`` or ``tdp_w`` changes
    the answer instead of being silently ignored. Constants whose source is not
    :data:`DERIVED_SOURCES` are the user's own and stay. Every value that changed is listed in
    ``provenance["recomputed"]`` and said beside every answer (:func:`recompute_note`); the
    paper's ``[constants]`` are then derived again. Calibrated and published profiles, and
    spec ones that state no datasheet figures, are returned as they are.
    """
    hw = profile.hardware
    if profile.source != "spec" or hw.get("device_type") != "cuda" or not all(
            k in hw for k in ("mem_bw_gbs", "fp16_tflops", "int8_tops")):
        return profile
    from qtsim.profiles.priors import derived_device_constants, spec_constants

    changed = []
    for k, new in derived_device_constants(hw).items():
        old = profile.physical.get(k)
        if old is not None and old.source not in DERIVED_SOURCES:
            continue
        if old is None or not (math.isclose(old.value, new.value, rel_tol=1e-4)
                               and math.isclose(old.stderr, new.stderr, rel_tol=1e-4)):
            changed.append({"constant": k, "file": None if old is None else old.value,
                            "derived": new.value, "unit": new.unit})
        profile.physical[k] = new
    if changed:
        profile.provenance = {**profile.provenance, "recomputed": changed}
        ref = profile.constants.get("reference_model") if profile.constants else None
        profile.constants = spec_constants(profile, *([ref] if ref else []))
    return profile


def unidentified_constants(profile: HardwareProfile) -> dict[str, str]:
    """Calibrated constants the measurements did not pin down, with why: a standard error larger
    than the value (the data cannot tell it from 0, or from twice itself), or held at a bound
    by the fit. Predictions that lean on them carry wide bands; ``qtsim profiles show`` and the
    calibration say so."""
    out = {}
    for k, p in profile.physical.items():
        if p.source == "calibrated" and p.stderr > abs(p.value):
            out[k] = f"{p.value:.3g} ± {p.stderr:.2g} {p.unit}: stderr exceeds the value"
        elif p.source in ("calibrated", "fixed") and "bound" in p.basis:
            out[k] = f"{p.value:.3g} {p.unit}: held at its bound by the fit"
    return out


def profile_notes(profile: HardwareProfile, origin: bool = True) -> list[str]:
    """What a reader must know about a loaded profile beside its figures: where it came from
    (unless ``origin`` is False; a user file may shadow a shipped one), constants re-derived
    from ``[hardware]``, constants the calibration did not identify."""
    notes = []
    where = profile_origin(profile)
    if origin and where != "shipped":
        notes.append(f"from {where}")
    if recompute_note(profile):
        notes.append(recompute_note(profile))
    bad = unidentified_constants(profile)
    if bad:
        notes.append(f"{len(bad)} calibrated constant(s) not identified by the measurements ("
                     + "; ".join(f"{k} {v}" for k, v in list(bad.items())[:3])
                     + ("; ..." if len(bad) > 3 else "") + "): bands that depend on them are wide")
    return notes


def recompute_note(profile: HardwareProfile) -> str:
    """One line on the constants :func:`rederive` recomputed, or ''."""
    rows = profile.provenance.get("recomputed") or []
    if not rows:
        return ""
    from qtsim.profiles.priors import DERIVED_FROM

    def num(x):
        return "absent" if x is None else f"{x:.4g}"

    shown = ", ".join(f"{r['constant']} {num(r['file'])} -> {num(r['derived'])} {r['unit']}"
                      for r in rows[:4])
    more = f" and {len(rows) - 4} more" if len(rows) > 4 else ""
    return (f"[physical] recomputed from [hardware] ({', '.join(DERIVED_FROM)}): {shown}{more}; a "
            "spec-derived profile's constants follow its datasheet figures (to keep a value of "
            "your own, give it source = 'assumed' and a basis)")


def read_profile(path: str | os.PathLike) -> HardwareProfile:
    text = read_user_file(path, ProfileError, "no such profile file")
    return parse_profile(text, str(Path(path)))


def user_profile_dir() -> Path:
    if os.environ.get("QTSIM_PROFILE_DIR"):
        return Path(os.environ["QTSIM_PROFILE_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "qtsim" / "profiles"


def _candidates():
    """(origin, name, loader) for every profile, user ones first."""
    out = []
    udir = user_profile_dir()
    env = os.environ.get("QTSIM_PROFILE_DIR")
    if env and not udir.exists():
        raise ProfileError(f"QTSIM_PROFILE_DIR={env}: no such directory (create it, or unset "
                           "QTSIM_PROFILE_DIR to use ~/.config/qtsim/profiles); without it "
                           "qtsim would silently show only the shipped profiles")
    if udir.exists() and not udir.is_dir():
        raise ProfileError(f"{udir}: the user profile directory (QTSIM_PROFILE_DIR or "
                           "~/.config/qtsim/profiles) is a file, not a directory")
    if udir.is_dir():
        for f in sorted(udir.glob("*.toml")):
            out.append(("user", f.stem, str(f), lambda f=f: read_profile(f)))
    shipped = resources.files("qtsim.hardware_profiles")
    for f in sorted(shipped.iterdir(), key=lambda x: x.name):
        if f.name.endswith(".toml"):
            out.append(("shipped", f.name[:-5], f"shipped:{f.name}",
                        lambda f=f: parse_profile(f.read_text(), f"shipped:{f.name}")))
    return out


def _aliases_of(text: str) -> list[str]:
    try:
        hw = tomllib.loads(text).get("hardware", {})
    except tomllib.TOMLDecodeError:
        return []
    return [str(hw.get("name", ""))] + [str(a) for a in hw.get("aliases", [])]


def shipped_names() -> set[str]:
    """Names (file stems) of the shipped profiles."""
    return {f.name[:-5] for f in resources.files("qtsim.hardware_profiles").iterdir()
            if f.name.endswith(".toml")}


def profile_origin(profile: HardwareProfile) -> str:
    """Where a loaded profile came from, in words: ``shipped``, or ``user file PATH`` (and that
    it shadows the shipped profile of the same name, so no one mistakes it for the shipped one)."""
    where = profile.path or ""
    if where.startswith("shipped:"):
        return "shipped"
    user = where and Path(where).resolve().parent == user_profile_dir().resolve()
    text = f"{'user file' if user else 'file'} {where}" if where else "built in memory"
    if profile.name in shipped_names() or Path(where).stem in shipped_names():
        text += f" (named like the shipped {profile.name}, but not its figures)"
    return text


def list_profiles(loaded: bool = False) -> list[dict]:
    """Every visible profile: name, origin (user or shipped), source and location; with
    ``loaded`` also the :class:`HardwareProfile` itself (``profile``; None where invalid), so a
    caller that needs them all does not read every file twice."""
    rows, seen = [], set()
    for origin, stem, where, load in _candidates():
        if stem in seen:
            continue
        seen.add(stem)
        try:
            prof = load()
            rows.append({"name": prof.name, "origin": origin, "source": prof.source,
                         "device": prof.provenance.get("device", ""),
                         "aliases": prof.hardware.get("aliases", []), "location": where,
                         **({"profile": prof} if loaded else {})})
        except ProfileError as e:
            rows.append({"name": stem, "origin": origin, "source": "INVALID",
                         "device": str(e), "aliases": [], "location": where,
                         **({"profile": None} if loaded else {})})
    return rows


def load_profile(name: str | None = None, path: str | None = None) -> HardwareProfile:
    """A profile by ``path``, or by hardware name or alias (user directory searched first)."""
    if path and name:
        raise ProfileError(f"give --gpu or --profile, not both (--gpu {name} --profile {path})")
    if path:
        return read_profile(path)
    if not name:
        raise ProfileError("give a GPU name (--gpu) or a profile file (--profile)")
    key = name.lower()
    names = []
    cands = _candidates()
    first = {}  # stem -> the candidate that wins it (a user file shadows a shipped one)
    for cand in cands:
        first.setdefault(cand[1].lower(), cand)
    for _origin, stem, _where, _load in cands:
        names.append(stem)
        if key == stem.lower():
            return first[stem.lower()][3]()
    for _origin, stem, where, _load in cands:
        text = Path(where).read_text() if not where.startswith("shipped:") else \
            (resources.files("qtsim.hardware_profiles") / where.split(":", 1)[1]).read_text()
        if key in (a.lower() for a in _aliases_of(text)):
            # the file that owns this stem, even when it is broken: a broken user profile is an
            # error, never silently replaced by the shipped one it shadows
            return first[stem.lower()][3]()
    raise UnknownNameError(f"unknown GPU {name!r}{suggest(name, set(names))}; "
                           "`qtsim profiles list` shows them, --profile FILE loads any file")


# ---- writing ---------------------------------------------------------------------------------
def write_profile(profile: HardwareProfile, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    text = profile.to_toml()
    parse_profile(text, str(path))  # never write what we could not read back
    return atomic_write_text(text, path)


def atomic_write_text(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically: a temp file beside it, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; a profile is meant to be shared (a team reads one file), so
        # give it the mode any new file gets under the user's umask (0644 under the usual 022)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dumps_toml(doc: dict) -> str:
    """TOML text of ``doc`` (tomli-w), numpy numbers and arrays written as plain ones."""
    return tomli_w.dumps(_plain(doc))


def _plain(v):
    """``v`` with numpy scalars as Python numbers and arrays/tuples as lists, for tomli-w."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v
