"""The head side of a fleet campaign: the manifest (``OUT/campaign.json``, rewritten
atomically after every change, so an interrupted campaign resumes), one Ray task per slot, and
the gathering of every slot's raw file into ``OUT/nodes/<slot>/`` with its point ids checked.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from qtsim.calibration.fleet.node import run_slot
from qtsim.calibration.fleet.slots import (
    DEFAULT_WORK_DIR,
    Slot,
    atomic_write_bytes,
    preflight,
    require_ray,
    utc_now,
)
from qtsim.calibration.measure.raw import RawStore
from qtsim.errors import QtsimError

MANIFEST = "campaign.json"
SCHEMA = "qtsim-fleet/1"


class Manifest:
    """The campaign manifest on the head, ``OUT/campaign.json``: what was asked, and per slot
    its status (pending, running, done, refused, failed, fit_failed), reason, unit, attempts
    and point counts. Rewritten atomically after every change."""

    def __init__(self, out: Path, doc: dict):
        self.out, self.doc = Path(out), doc

    @property
    def path(self) -> Path:
        return self.out / MANIFEST

    @classmethod
    def open(cls, out, kind: str, settings: dict, slots: list[Slot], resume: bool) -> Manifest:
        out = Path(out)
        path = out / MANIFEST
        if path.exists():
            if not resume:
                raise QtsimError(f"{path} exists: pass --resume to continue that campaign, "
                                 "or choose another --out")
            doc = json.loads(path.read_text())
            if doc.get("kind") != kind or doc.get("settings") != settings:
                raise QtsimError(f"{path}: a different campaign ({doc.get('kind')}, "
                                 f"{doc.get('settings')}); use another --out")
            for s in slots:
                doc["slots"].setdefault(s.name, {"gpu": s.gpu, "status": "pending"})
            m = cls(out, doc)
        else:
            stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S")
            doc = {"schema": SCHEMA, "kind": kind, "campaign": f"{kind}-{stamp}-{os.getpid()}",
                   "created": utc_now(), "settings": settings,
                   "slots": {s.name: {"gpu": s.gpu, "status": "pending"} for s in slots}}
            m = cls(out, doc)
        m.doc["resumed"] = m.doc.get("resumed", -1) + 1
        m.save()
        return m

    def slot(self, name: str) -> dict:
        return self.doc["slots"][name]

    def update(self, name: str, **kw) -> None:
        self.doc["slots"][name].update(kw)
        self.save()

    def save(self) -> None:
        self.doc["updated"] = utc_now()
        atomic_write_bytes(self.path, json.dumps(self.doc, indent=2, default=str).encode())


def check_points(ids: list[str], expected: list[str]) -> str | None:
    """Why a gathered raw file's point ids are wrong (a duplicate, a missing or a stray id),
    or None when every expected point is there exactly once."""
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        return f"duplicate point ids: {', '.join(dup[:3])}"
    missing = sorted(set(expected) - set(ids))
    if missing:
        return f"{len(missing)} planned points missing: {', '.join(missing[:3])}"
    extra = sorted(set(ids) - set(expected))
    if extra:
        return f"{len(extra)} points not in the plan: {', '.join(extra[:3])}"
    return None


def run_campaign(kind: str, out, slots: list[Slot], *, settings: dict, job_extra: dict | None = None,
                 resume: bool = False, work_dir: str = DEFAULT_WORK_DIR, max_retries: int = 3,
                 crash: dict[str, int] | None = None, echo=print) -> Manifest:
    """Run (or resume) a campaign on the connected Ray cluster: one task per slot, gathered
    into ``OUT/nodes/<slot>/``. Needs ``ray.init`` first. ``crash``: slot -> points after which
    that slot's first attempt kills its worker (fault drills and tests)."""
    ray = require_ray()
    out = Path(out)
    m = Manifest.open(out, kind, settings, slots, resume)
    nodes = ray.nodes()
    by_name = {s.name: s for s in slots}
    pending = {}
    for s in slots:
        st = m.slot(s.name)
        if st["status"] in ("done", "refused", "fit_failed"):
            echo(f"  {s.name}: {st['status']} already ({st.get('reason', '') or 'kept'})")
            continue
        why = preflight(s, nodes)
        if why:
            m.update(s.name, status="refused", reason=why)
            echo(f"  {s.name}: refused: {why}")
            continue
        job = {"campaign": m.doc["campaign"], "kind": kind, "slot": s.name, "gpu": s.gpu,
               "work_dir": work_dir, **(job_extra or {}).get("*", {}),
               **(job_extra or {}).get(s.name, {})}
        if crash and s.name in crash:
            job["crash_after"] = crash[s.name]
        task = ray.remote(run_slot).options(
            resources={s.resource: 1}, num_gpus=1 if s.wants_gpu else 0, num_cpus=1,
            max_retries=max_retries, retry_exceptions=False, name=f"qtsim-{kind}-{s.name}")
        pending[task.remote(job)] = s.name
        m.update(s.name, status="running", started=utc_now())
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        name = pending.pop(ref)
        try:
            res = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the task failed after its retries
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            m.update(name, status="failed", reason=f"{type(e).__name__}: {first}"[:500])
            echo(f"  {name}: failed: {m.slot(name)['reason']}")
            continue
        _gather(m, by_name[name], res, out, echo)
    return m


def _gather(m: Manifest, slot: Slot, res: dict, out: Path, echo) -> None:
    info = {"attempts": res["attempt"], "host": res.get("host"), "unit": res.get("unit"),
            "finished": utc_now()}
    if res["status"] == "refused":
        m.update(slot.name, status="refused", reason=res["reason"], **info)
        echo(f"  {slot.name}: refused: {res['reason']}")
        return
    dest = out / "nodes" / slot.name / res["raw_name"]
    atomic_write_bytes(dest, res["raw_bytes"])
    ids = RawStore(dest, readonly=True).ids()
    problem = check_points(ids, res["expected"])
    counts = {"points": len(ids), "planned": len(res["expected"]),
              "measured_last_attempt": len(res["measured"]),
              "resumed_last_attempt": len(res["resumed"]), "skipped": len(res["skipped"]),
              "raw": str(dest.relative_to(out)), "wall_s_last_attempt": round(res["wall_s"], 2)}
    if problem:
        m.update(slot.name, status="failed", reason=problem, **info, **counts)
        echo(f"  {slot.name}: failed: {problem}")
        return
    m.update(slot.name, status="done", reason="", **info, **counts)
    unit = res.get("unit") or {}
    echo(f"  {slot.name}: {len(ids)} points ({len(res['measured'])} measured, "
         f"{len(res['resumed'])} resumed, attempt {res['attempt']}) on {unit.get('host')} "
         f"{unit.get('device')} -> {dest}")


