"""Host parts of a profile: the host CPU and software stack that issues the GPU's work.

DESIGN.md sec. 2a: host constants describe the host CPU and the software stack (Python, torch,
transformers, bitsandbytes), not the GPU. A GPU profile therefore holds the device part only and
is combined with a host part at load time (``qtsim trap --host NAME_OR_FILE``); a CPU profile
carries its own host part (host and device are the same chip).

A host file is TOML (its rules: :data:`qtsim.profiles.schema.HOST`)::

    schema_version = 1
    [host]          name, description, stack (versions), execution ("HF transformers generate, eager"),
                    speed_sd_log (log spread of the one speed factor all host work shares)
    [provenance]    source (prior | published | calibrated), date, basis
    [physical.NAME] value, stderr, unit, source, basis     h_op_s, h_launch_s, h_step_s, h_call_<path>_s
    [fit]           statistics of the fit that produced it (optional)

Search order: a path; the user directory's ``hosts/`` (beside the user profiles); the shipped
``hardware_profiles/hosts/``. The default host is :data:`DEFAULT_HOST`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from qtsim.errors import ProfileError, UnknownNameError, read_user_file, suggest
from qtsim.profiles import schema
from qtsim.profiles.files import atomic_write_text, dumps_toml, user_profile_dir
from qtsim.profiles.schema import HOST_PARAM_PREFIXES

#: the host assumed where none is named: HF eager decode on the population-centre host of the
#: public campaigns (servers and desktops), with one shared speed factor spanning them
DEFAULT_HOST = "hf-eager"


@dataclass
class HostPart:
    """A host/software part: its constants (``physical``) with provenance."""

    host: dict
    provenance: dict
    physical: dict  # name -> qtsim.profiles.schema.Param
    fit: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def name(self) -> str:
        return str(self.host.get("name", "host"))

    @property
    def speed_sd_log(self) -> float:
        """Log spread of the one speed factor shared by all this host's work (``[host]
        speed_sd_log``): how much faster or slower an unnamed machine of this kind runs every
        host constant together. 0 for a measured machine."""
        return float(self.host.get("speed_sd_log", 0.0))

    def describe(self) -> str:
        """One line naming the host, its stack and where its constants come from."""
        stack = self.host.get("stack", {})
        versions = ", ".join(f"{k} {v}" for k, v in stack.items()) if stack else "versions not stated"
        return f"{self.name} ({self.provenance.get('source', 'prior')}; {versions})"


def is_host_param(name: str) -> bool:
    return name.startswith(HOST_PARAM_PREFIXES)


def parse_host(text: str, where: str = "host") -> HostPart:
    """Parse a host file and check it against :data:`qtsim.profiles.schema.HOST`; any defect is
    a one-line ProfileError naming ``where`` and the key."""
    doc, physical = schema.parse(text, schema.HOST, where)
    return HostPart(doc["host"], doc.get("provenance", {}), physical, doc.get("fit", {}), where)


def _dirs():
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
        return parse_host(read_user_file(p, ProfileError, "no such host file"), str(p))
    hosts = dict(list_hosts())
    if key.lower() not in hosts:
        raise UnknownNameError(f"unknown host {key!r}{suggest(key, set(hosts))}; "
                               "give a host file path or one of: " + ", ".join(sorted(hosts)))
    f = hosts[key.lower()]
    return parse_host(Path(f).read_text(), f)


def write_host(part: HostPart, path) -> Path:
    """Write a host file atomically (read back before it lands)."""
    doc = {"schema_version": schema.SCHEMA_VERSION, "host": part.host,
           "provenance": part.provenance,
           "physical": {k: p.to_table() for k, p in part.physical.items()}}
    if part.fit:
        doc["fit"] = part.fit
    text = dumps_toml(doc)
    parse_host(text, str(path))
    return atomic_write_text(text, Path(path))
