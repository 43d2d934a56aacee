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

import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import tomllib

from qtsim.errors import ProfileError, UnknownNameError, suggest
from qtsim.physical import GLOBAL_PARAMS, path_param_names, resolve_path

SCHEMA_VERSION = 1
SOURCES = ("spec", "prior", "published", "calibrated", "fixed", "assumed", "derived")
REQUIRED_HARDWARE = ("name", "device_type", "memory_gib", "tdp_w")
POSITIVE_PARAMS = ("mem_bw_gbs",)


@dataclass(frozen=True)
class Param:
    """One physical constant with its standard error, unit and provenance."""

    value: float
    stderr: float
    unit: str
    source: str
    basis: str = ""

    @property
    def relative_stderr(self) -> float:
        return self.stderr / abs(self.value) if self.value else math.inf


@dataclass
class HardwareProfile:
    hardware: dict
    provenance: dict
    physical: dict[str, Param]
    constants: dict = field(default_factory=dict)
    fit: dict = field(default_factory=dict)
    path: str | None = None

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

    def values(self) -> dict[str, float]:
        return {k: p.value for k, p in self.physical.items()}

    def stderrs(self) -> dict[str, float]:
        return {k: p.stderr for k, p in self.physical.items()}

    def draws(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` Monte-Carlo draws of every constant, shape (n, 1), for uncertainty bands.

        Uses the fit's correlation matrix where the profile has one (``[fit] param_order`` and
        ``correlation``), independent normals otherwise; draws are clipped at zero (every
        constant is a non-negative physical quantity) and bandwidth at 5% of its value.
        """
        rng = np.random.default_rng(seed)
        names = list(self.physical)
        mean = np.array([self.physical[k].value for k in names])
        sd = np.array([self.physical[k].stderr for k in names])
        z = rng.standard_normal((n, len(names)))
        order = self.fit.get("param_order")
        corr = self.fit.get("correlation")
        if order and corr:
            idx = [names.index(k) for k in order if k in names]
            c = np.asarray(corr, dtype=float)
            if c.shape == (len(order), len(order)) and len(idx) == len(order):
                try:
                    chol = np.linalg.cholesky(c + 1e-9 * np.eye(len(order)))
                    z[:, idx] = z[:, idx] @ chol.T
                except np.linalg.LinAlgError:
                    pass  # not positive definite: fall back to independent draws
        x = mean + z * sd
        out = {}
        for j, k in enumerate(names):
            floor = 0.05 * mean[j] if k in POSITIVE_PARAMS else 0.0
            out[k] = np.maximum(x[:, j], floor)[:, None]
        return out

    def to_toml(self) -> str:
        doc = {"schema_version": SCHEMA_VERSION, "hardware": self.hardware,
               "provenance": self.provenance}
        if self.constants:
            doc["constants"] = self.constants
        doc["physical"] = {k: {"value": p.value, "stderr": p.stderr, "unit": p.unit,
                               "source": p.source, "basis": p.basis}
                           for k, p in self.physical.items()}
        if self.fit:
            doc["fit"] = self.fit
        return dumps_toml(doc)


# ---- reading ---------------------------------------------------------------------------------
def _fail(where: str, msg: str):
    raise ProfileError(f"{where}: {msg}")


def parse_profile(text: str, where: str = "profile") -> HardwareProfile:
    """Parse and validate a profile's TOML text; any defect is a one-line ProfileError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        _fail(where, f"not valid TOML ({e})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        _fail(where, f"schema_version must be {SCHEMA_VERSION}, got {doc.get('schema_version')!r}")
    hw = doc.get("hardware")
    if not isinstance(hw, dict):
        _fail(where, "missing [hardware] table")
    for key in REQUIRED_HARDWARE:
        if key not in hw:
            _fail(where, f"[hardware] lacks {key!r}")
    for key in ("memory_gib", "tdp_w"):
        v = hw[key]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0) or math.isinf(v):
            _fail(where, f"[hardware] {key} must be a positive number, got {v!r}")
    for key, v in hw.items():  # nan or inf anywhere in [hardware] is a broken file, not a value
        if isinstance(v, float) and not math.isfinite(v):
            _fail(where, f"[hardware] {key} must be a finite number, got {v!r}")
    prov = doc.get("provenance", {})
    if prov.get("source", "spec") not in ("spec", "calibrated", "published"):
        _fail(where, f"[provenance] source must be spec, calibrated or published, got {prov.get('source')!r}")
    phys_raw = doc.get("physical")
    if not isinstance(phys_raw, dict) or not phys_raw:
        _fail(where, "missing [physical] constants")
    physical = {}
    for k, entry in phys_raw.items():
        if not isinstance(entry, dict) or "value" not in entry or "stderr" not in entry:
            _fail(where, f"[physical.{k}] needs value and stderr")
        try:
            val, se = float(entry["value"]), float(entry["stderr"])
        except (TypeError, ValueError):
            _fail(where, f"[physical.{k}] value and stderr must be numbers")
        if not (math.isfinite(val) and math.isfinite(se)) or val < 0 or se < 0:
            _fail(where, f"[physical.{k}] value and stderr must be finite and >= 0, got {val}, {se}")
        if k in POSITIVE_PARAMS and val <= 0:
            _fail(where, f"[physical.{k}] must be > 0")
        src = entry.get("source", "")
        if src not in SOURCES:
            _fail(where, f"[physical.{k}] source must be one of {', '.join(SOURCES)}, got {src!r}")
        physical[k] = Param(val, se, str(entry.get("unit", "")), src, str(entry.get("basis", "")))
    missing = [k for k in GLOBAL_PARAMS if k not in physical]
    if missing:
        _fail(where, f"[physical] lacks {', '.join(missing)}")
    native = hw.get("native_dtype", "fp16")
    for side in ("b1", "bn"):
        try:
            resolve_path(physical, f"{native}_{side}")
        except ProfileError:
            _fail(where, f"[physical] lacks the native {native} path "
                         f"({', '.join(path_param_names(native))} or its _b1/_bn split)")
    return HardwareProfile(hw, prov, physical, doc.get("constants", {}), doc.get("fit", {}), where)


def read_profile(path: str | os.PathLike) -> HardwareProfile:
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"{p}: no such profile file")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{p}: cannot read ({e})") from None
    return parse_profile(text, str(p))


def user_profile_dir() -> Path:
    if os.environ.get("QTSIM_PROFILE_DIR"):
        return Path(os.environ["QTSIM_PROFILE_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "qtsim" / "profiles"


def _candidates():
    """(origin, name, loader) for every profile, user ones first."""
    out = []
    udir = user_profile_dir()
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


def list_profiles() -> list[dict]:
    """Every visible profile: name, origin (user or shipped), source and location."""
    rows, seen = [], set()
    for origin, stem, where, load in _candidates():
        if stem in seen:
            continue
        seen.add(stem)
        try:
            prof = load()
            rows.append({"name": prof.name, "origin": origin, "source": prof.source,
                         "device": prof.provenance.get("device", ""),
                         "aliases": prof.hardware.get("aliases", []), "location": where})
        except ProfileError as e:
            rows.append({"name": stem, "origin": origin, "source": "INVALID",
                         "device": str(e), "aliases": [], "location": where})
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
    path.parent.mkdir(parents=True, exist_ok=True)
    text = profile.to_toml()
    parse_profile(text, str(path))  # never write what we could not read back
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


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(doc: dict, prefix: str = "") -> str:
    """TOML for qtsim's profile documents: nested tables of scalars and (nested) lists.

    The standard library reads TOML but does not write it; this emitter covers exactly the
    shapes profiles use and ``write_profile`` reads every file back before it lands.
    """
    lines, tables = [], []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_toml_value(v)}")
    out = "\n".join(lines)
    for k, v in tables:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        body = dumps_toml(v, name)
        has_scalars = any(not isinstance(x, dict) for x in v.values())
        head = f"\n\n[{name}]\n" if has_scalars or not v else ""
        out += head + body
    return out.strip("\n") + "\n" if not prefix else out


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)
