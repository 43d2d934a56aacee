"""Hardware profiles on disk: one TOML file per hardware (DESIGN.md sec. 4), read, found by
name or alias, listed and written. The profile itself is :class:`qtsim.profiles.profile.HardwareProfile`.

Search order for a name: ``--profile FILE``; the user directory (``$QTSIM_PROFILE_DIR``, else
``$XDG_CONFIG_HOME/qtsim/profiles``, else ``~/.config/qtsim/profiles``); the shipped profiles.
"""

from __future__ import annotations

import math
import os
import tomllib
from importlib import resources
from pathlib import Path

from qtsim.errors import ProfileError, UnknownNameError, read_user_file, suggest
from qtsim.profiles import gpus, schema
from qtsim.profiles.files import atomic_write_text, user_profile_dir
from qtsim.profiles.priors import DERIVED_FROM, derived_device_constants, spec_constants
from qtsim.profiles.profile import HardwareProfile


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
    """A profile by ``path``, or by hardware name or alias (user directory searched first): a
    file's own name, then the aliases its ``[hardware]`` lists, then those of the GPU registry
    (:mod:`qtsim.profiles.gpus`)."""
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
    canon = gpus.canonical_name(key)  # a registry alias a profile file does not list itself
    if canon in first:
        return first[canon][3]()
    raise UnknownNameError(f"unknown GPU {name!r}{suggest(name, set(names))}; "
                           "`qtsim profiles list` shows them, --profile FILE loads any file")


# ---- writing ---------------------------------------------------------------------------------
def write_profile(profile: HardwareProfile, path: str | os.PathLike) -> Path:
    """Write atomically: a temp file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    text = profile.to_toml()
    parse_profile(text, str(path))  # never write what we could not read back
    return atomic_write_text(text, path)
