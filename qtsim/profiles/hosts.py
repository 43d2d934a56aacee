"""Host parts of a profile: the host CPU and software stack that issues the GPU's work.

DESIGN.md sec. 2a: host constants describe the host CPU and the software stack (Python, torch,
transformers, bitsandbytes), not the GPU. A GPU profile therefore holds the device part only and
is combined with a host part at load time (``qtsim trap --host NAME_OR_FILE``); a CPU profile
carries its own host part (host and device are the same chip).

A host file is TOML::

    schema_version = 1
    [host]          name, description, stack (versions), execution ("HF transformers generate, eager")
    [provenance]    source (prior | published | calibrated), date, basis
    [physical.NAME] value, stderr, unit, source, basis     h_op_s, h_launch_s, h_step_s, h_call_<path>_s
    [fit]           statistics of the fit that produced it (optional)

Search order: a path; the user directory's ``hosts/`` (beside the user profiles); the shipped
``hardware_profiles/hosts/``. The default host is :data:`DEFAULT_HOST`.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qtsim.errors import ProfileError, UnknownNameError, suggest

#: the host assumed where none is named: HF eager decode on a datacentre GPU server, fitted to
#: the bitsandbytes maintainers' H100 rows, with a spread that covers the desktop host
DEFAULT_HOST = "hf-eager-server"
HOST_PARAM_PREFIXES = ("h_op", "h_launch", "h_step", "h_call_", "h_fused4bit", "h_prefill")


@dataclass
class HostPart:
    """A host/software part: its constants (``physical``) with provenance."""

    host: dict
    provenance: dict
    physical: dict  # name -> qtsim.profiles.hardware.Param
    fit: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def name(self) -> str:
        return str(self.host.get("name", "host"))

    def describe(self) -> str:
        """One line naming the host, its stack and where its constants come from."""
        stack = self.host.get("stack", {})
        versions = ", ".join(f"{k} {v}" for k, v in stack.items()) if stack else "versions not stated"
        return f"{self.name} ({self.provenance.get('source', 'prior')}; {versions})"


def is_host_param(name: str) -> bool:
    return name.startswith(HOST_PARAM_PREFIXES)


def parse_host(text: str, where: str = "host") -> HostPart:
    """Parse a host file; any defect is a one-line ProfileError."""
    from qtsim.profiles.hardware import SOURCES, Param

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{where}: not valid TOML ({e})") from None
    host = doc.get("host")
    if not isinstance(host, dict) or "name" not in host:
        raise ProfileError(f"{where}: missing [host] table with a name")
    phys = doc.get("physical")
    if not isinstance(phys, dict) or "h_op_s" not in phys:
        raise ProfileError(f"{where}: [physical] needs at least h_op_s (host time per operation)")
    out = {}
    for k, e in phys.items():
        if not is_host_param(k):
            raise ProfileError(f"{where}: [physical.{k}] is not a host constant "
                               f"(host constants start with {', '.join(HOST_PARAM_PREFIXES)})")
        try:
            val, se = float(e["value"]), float(e["stderr"])
        except (TypeError, ValueError, KeyError):
            raise ProfileError(f"{where}: [physical.{k}] needs numeric value and stderr") from None
        if not (math.isfinite(val) and math.isfinite(se)) or val < 0 or se < 0:
            raise ProfileError(f"{where}: [physical.{k}] value and stderr must be finite and >= 0")
        src = e.get("source", "prior")
        if src not in SOURCES:
            raise ProfileError(f"{where}: [physical.{k}] source must be one of {', '.join(SOURCES)}")
        out[k] = Param(val, se, str(e.get("unit", "s")), src, str(e.get("basis", "")))
    return HostPart(host, doc.get("provenance", {}), out, doc.get("fit", {}), where)


def _dirs():
    from qtsim.profiles.hardware import user_profile_dir

    yield "user", user_profile_dir() / "hosts"
    yield "shipped", Path(str(resources.files("qtsim.hardware_profiles") / "hosts"))


def list_hosts() -> list[tuple[str, str]]:
    """(name, location) of every visible host file, user ones first."""
    seen, out = set(), []
    for _origin, d in _dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                if f.stem not in seen:
                    seen.add(f.stem)
                    out.append((f.stem, str(f)))
    return out


def load_host(name_or_path: str | None = None) -> HostPart:
    """A host part by file path or name (user directory first); None: :data:`DEFAULT_HOST`."""
    key = name_or_path or DEFAULT_HOST
    p = Path(key)
    if p.suffix == ".toml" or os.sep in key:
        if not p.is_file():
            raise ProfileError(f"{key}: no such host file")
        return parse_host(p.read_text(), str(p))
    hosts = dict(list_hosts())
    if key.lower() not in hosts:
        raise UnknownNameError(f"unknown host {key!r}{suggest(key, set(hosts))}; "
                               "give a host file path or one of: " + ", ".join(sorted(hosts)))
    f = hosts[key.lower()]
    return parse_host(Path(f).read_text(), f)


def write_host(part: HostPart, path) -> Path:
    """Write a host file atomically (read back before it lands)."""
    from qtsim.profiles.hardware import atomic_write_text, dumps_toml

    doc = {"schema_version": 1, "host": part.host, "provenance": part.provenance,
           "physical": {k: {"value": p.value, "stderr": p.stderr, "unit": p.unit,
                            "source": p.source, "basis": p.basis} for k, p in part.physical.items()}}
    if part.fit:
        doc["fit"] = part.fit
    text = dumps_toml(doc)
    parse_host(text, str(path))
    return atomic_write_text(text, Path(path))
