"""Slots: the devices a fleet campaign measures, each a Ray custom resource ``qtsim:<slot>``
(one unit of it, declared when the node joins) and the hardware asked of it; what Ray must
hold before a slot runs (:func:`preflight`).
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

from qtsim.errors import QtsimError

RESOURCE_PREFIX = "qtsim:"



DEFAULT_WORK_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "qtsim-fleet")



def require_ray():
    """The ray module, or a one-line :class:`QtsimError` saying how to get it."""
    try:
        import ray
    except ImportError:
        raise QtsimError("fleet commands need Ray: pip install 'qtsim[fleet]'") from None
    return ray



def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")



def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)



@dataclass(frozen=True)
class Slot:
    """One device to measure: ``name`` (its Ray resource is ``qtsim:<name>``) and ``gpu``,
    the hardware asked of it (``cpu`` for the node's CPU)."""

    name: str
    gpu: str

    @property
    def resource(self) -> str:
        return RESOURCE_PREFIX + self.name

    @property
    def wants_gpu(self) -> bool:
        return self.gpu.strip().lower() != "cpu"



def parse_slots(text: str | None, gpu: str, cluster_resources: dict) -> list[Slot]:
    """``a,b,c=l4`` (``=GPU`` overrides ``gpu`` per slot), or every ``qtsim:*`` resource of
    the cluster when ``text`` is empty."""
    if not text:
        names = sorted(k[len(RESOURCE_PREFIX):] for k in cluster_resources
                       if k.startswith(RESOURCE_PREFIX))
        if not names:
            raise QtsimError("no qtsim:<slot> resources in the Ray cluster: start nodes with "
                             "--resources '{\"qtsim:NAME\": 1}', or pass --nodes")
        return [Slot(n, gpu) for n in names]
    slots = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, g = part.partition("=")
        slots.append(Slot(name.strip(), (g or gpu).strip()))
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise QtsimError(f"--nodes names a slot twice: {', '.join(names)}")
    return slots



def preflight(slot: Slot, nodes: list[dict]) -> str | None:
    """Why ``slot`` cannot run on this cluster (no live node holds its resource, or the node
    has no GPU for a GPU request), or None."""
    holders = [n for n in nodes if n.get("Alive") and slot.resource in n.get("Resources", {})]
    if not holders:
        return f"no live Ray node offers the resource {slot.resource}"
    if slot.wants_gpu and not any(n["Resources"].get("GPU", 0) >= 1 for n in holders):
        return (f"requested {slot.gpu} but the Ray node holding {slot.resource} has no GPU "
                f"(resources: {', '.join(sorted(holders[0]['Resources']))})")
    return None



def wait_for_resources(resources: list[str], timeout_s: float = 60.0) -> None:
    """Block until the connected cluster offers every resource (nodes still joining)."""
    ray = require_ray()
    t0 = time.monotonic()
    while True:
        have = ray.cluster_resources()
        if all(r in have for r in resources):
            return
        if time.monotonic() - t0 > timeout_s:
            raise QtsimError(f"the Ray cluster never offered {', '.join(r for r in resources if r not in have)}")
        time.sleep(0.5)
