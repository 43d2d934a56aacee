"""Fleets: calibration and validation campaigns over many GPU nodes on Ray, and big simulate
grids chunked over Ray workers.

A **slot** is one device to measure: a Ray custom resource ``qtsim:<slot>`` (one unit of it,
declared when the node joins: ``ray start --address HEAD --resources '{"qtsim:node7": 1}'``)
and the hardware asked of it (``h100``, ``l4``, ``cpu``...). A slot's task asks for its
resource (so it runs on that node and nowhere else) and, for a GPU, ``num_gpus=1`` (Ray then
sets ``CUDA_VISIBLE_DEVICES`` to the GPU it grants; the task measures device 0 of what it sees).

Each task calls the measurement library (:func:`~qtsim.calibration.runner.run_plan` over a
plan from :mod:`qtsim.calibration.plan`, or held-out validation specs) and appends every point
to a raw HDF5 on the node's own disk (``WORK/<campaign>/<slot>/<kind>.h5``), exactly as
``qtsim calibrate``/``validate`` do; it returns the file's bytes when done, and the head writes
them to ``OUT/nodes/<slot>/`` (no shared filesystem needed). The head then fits one profile
per slot (``qtsim fit``'s :func:`~qtsim.calibration.profile_builder.build_profile`, no torch)
and writes the fleet summary: per hardware model, the spread of every fitted constant between
units (mean, sd, min, max, CV) as CSV and JSON, and a plot.

Faults:

- a worker or node lost mid-run: Ray retries the task (``max_retries``) on the slot's node;
  the retry resumes the node's raw file (points already appended are skipped, raw data is
  append-only and point ids unique), so no point is lost or measured twice. A retry that finds
  a different unit behind the slot (another GPU UUID or host) is refused rather than mixed;
- a slot whose device is not the requested hardware (or whose Ray node has no GPU) is refused,
  with the reason in the manifest and the summary;
- the head keeps a manifest (``OUT/campaign.json``, rewritten atomically after every change):
  an interrupted campaign resumes with ``--resume``, skipping slots already gathered.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qtsim.errors import QtsimError

RESOURCE_PREFIX = "qtsim:"
MANIFEST = "campaign.json"
SCHEMA = "qtsim-fleet/1"
DEFAULT_WORK_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), "qtsim-fleet")


def require_ray():
    """The ray module, or a one-line :class:`QtsimError` saying how to get it."""
    try:
        import ray
    except ImportError:
        raise QtsimError("fleet commands need Ray: pip install 'qtsim[fleet]'") from None
    return ray


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- slots ----------------------------------------------------------------------------------
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


# ---- the node side ----------------------------------------------------------------------------
class _CrashAfter:
    """Fault injection for tests and drills: wraps a point spec and kills the worker process
    (``os._exit``) when it is about to measure a point while ``n`` points are already stored
    and ``marker`` does not exist yet (the marker is created first, so the retry runs on)."""

    def __init__(self, spec, store, n: int, marker: str):
        self.spec, self.store, self.n, self.marker = spec, store, n, marker

    def point_id(self):
        return self.spec.point_id()

    def base_attrs(self, ctx):
        return self.spec.base_attrs(ctx)

    def estimate_s(self, device):
        return self.spec.estimate_s(device)

    def run(self, ctx):
        if not os.path.exists(self.marker) and len(self.store.ids()) >= self.n:
            Path(self.marker).write_text(_now())
            os._exit(17)  # a lost worker: no cleanup, no exception, the point in flight is lost
        return self.spec.run(ctx)


def unit_identity(device) -> dict[str, Any]:
    """Who is behind a slot: host, device string, hardware name, and the GPU's UUID."""
    info = device.describe()
    uuid = None
    if device.backend == "cuda":
        try:
            import torch

            uuid = str(getattr(torch.cuda.get_device_properties(device.index), "uuid", "") or "")
        except Exception:  # noqa: BLE001 - identity is best effort beyond host + device string
            uuid = None
    return {"host": socket.gethostname(), "hardware": device.name,
            "device": info.get("device_string"), "gpu_uuid": uuid or None}


def _same_unit(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("host", "hardware", "device", "gpu_uuid"))


def validation_specs(profile, points: list, configs: dict, reps: int = 3) -> list:
    """Held-out :class:`~qtsim.calibration.holdout.ValidationSpec` s for ``points`` with the
    ``profile``'s predictions (what ``qtsim validate`` measures), refusing points that
    calibrated it. ``configs``: model -> (config, name)."""
    from qtsim.calibration import holdout
    from qtsim.validate.plan import holdout_conflicts

    conflicts = holdout_conflicts(profile, points, {m: n for m, (_, n) in configs.items()})
    if conflicts:
        raise QtsimError(f"not held out: {conflicts[0]}")
    return holdout.validation_specs(profile, points, configs, reps)


def run_slot(job: dict) -> dict:
    """Measure one slot (runs inside a Ray task, or directly): returns status, the unit, the
    point ids measured/resumed and, when done, the raw HDF5's bytes.

    ``job``: campaign, kind (calibrate | validate), slot, gpu, work_dir, plan (calibrate),
    cpu_threads, tdp_w, profile_toml + points + configs + reps (validate), crash_after
    (fault injection).
    """
    from qtsim.calibration.device import detect_device

    slot_dir = Path(job["work_dir"]) / job["campaign"] / job["slot"]
    slot_dir.mkdir(parents=True, exist_ok=True)
    base = {"slot": job["slot"], "attempt": _next_attempt(slot_dir), "host": socket.gethostname()}
    try:
        device = detect_device(job["gpu"], cpu_threads=job.get("cpu_threads"))
    except QtsimError as e:
        return {**base, "status": "refused", "reason": str(e)}
    unit = unit_identity(device)
    moved = _unit_moved(slot_dir, job["slot"], unit)
    if moved:
        return {**base, "status": "refused", "unit": unit, "reason": moved}
    return {**base, "status": "measured", "unit": unit, **_measure_slot(job, slot_dir, device)}


def _next_attempt(slot_dir: Path) -> int:
    """Count this attempt at the slot in its node-local ``attempts`` file."""
    f = slot_dir / "attempts"
    attempt = int(f.read_text()) + 1 if f.exists() else 1
    f.write_text(str(attempt))
    return attempt


def _unit_moved(slot_dir: Path, slot: str, unit: dict) -> str | None:
    """Why the slot's stored raw data cannot be resumed on ``unit`` (None: same unit, or the
    first attempt, which records it)."""
    unit_file = slot_dir / "unit.json"
    if not unit_file.exists():
        unit_file.write_text(json.dumps(unit))
        return None
    before = json.loads(unit_file.read_text())
    if _same_unit(before, unit):
        return None
    return (f"slot {slot} moved from {before} to {unit}: its raw data is not resumed on another "
            "unit (run the slot again on its unit)")


def _slot_plan(job: dict, slot_dir: Path, device) -> tuple[list, str]:
    """The slot's point specs and their purpose: the named calibration plan, or held-out
    validation specs predicted by the job's profile."""
    if job["kind"] == "calibrate":
        from qtsim.calibration.plan import named_plan

        return named_plan(job.get("plan", "tiny"), device), "calibration"
    from qtsim.profiles.hardware import read_profile
    from qtsim.validate.plan import ValidationPoint

    prof_path = slot_dir / "profile.toml"
    prof_path.write_text(job["profile_toml"])
    points = [ValidationPoint.from_dict(p) for p in job["points"]]
    configs = {k: tuple(v) for k, v in job["configs"].items()}
    return (validation_specs(read_profile(prof_path), points, configs, int(job.get("reps", 3))),
            "validation")


def _measure_slot(job: dict, slot_dir: Path, device) -> dict:
    """Run (or resume) the slot's plan into its node-local raw HDF5: the point ids expected,
    measured and resumed, and the file's bytes."""
    from qtsim.calibration.energy import EnergyMonitor
    from qtsim.calibration.raw import RawStore
    from qtsim.calibration.runner import run_plan

    raw = slot_dir / f"{job['kind']}.h5"
    store = RawStore(raw)
    monitor = EnergyMonitor(device, tdp_w=job.get("tdp_w") if device.backend == "cpu" else None)
    plan, purpose = _slot_plan(job, slot_dir, device)
    expected = [p.point_id() for p in plan]
    if job.get("crash_after") is not None:
        plan = [_CrashAfter(p, store, int(job["crash_after"]), str(slot_dir / "crashed"))
                for p in plan]
    report = run_plan(plan, store, device, monitor, progress=False, resume=True, purpose=purpose)
    return {"expected": expected, "measured": report.measured,
            "resumed": report.resumed, "skipped": report.skipped, "wall_s": report.wall_s,
            "raw_name": raw.name, "raw_bytes": raw.read_bytes()}


# ---- the head side ----------------------------------------------------------------------------
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
                   "created": _now(), "settings": settings,
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
        self.doc["updated"] = _now()
        _atomic_write(self.path, json.dumps(self.doc, indent=2, default=str).encode())


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
        m.update(s.name, status="running", started=_now())
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
    from qtsim.calibration.raw import RawStore

    info = {"attempts": res["attempt"], "host": res.get("host"), "unit": res.get("unit"),
            "finished": _now()}
    if res["status"] == "refused":
        m.update(slot.name, status="refused", reason=res["reason"], **info)
        echo(f"  {slot.name}: refused: {res['reason']}")
        return
    dest = out / "nodes" / slot.name / res["raw_name"]
    _atomic_write(dest, res["raw_bytes"])
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


# ---- per-node fits and the fleet summary ----------------------------------------------------
def _fit_one(raw_bytes: bytes, raw_path: str, name: str) -> tuple:
    """Fit one gathered raw file, sent as bytes so any worker can fit it: (profile TOML text,
    fit MAPE per stage), or (None, reason). The profile names ``raw_path`` as its raw data
    (same bytes, same checksum)."""
    import tempfile

    from qtsim.calibration.profile_builder import build_profile
    from qtsim.errors import FitError

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / Path(raw_path).name
        tmp.write_bytes(raw_bytes)
        try:
            prof, fit = build_profile(tmp, name)
        except FitError as e:
            return None, f"fit: {e}"
    import dataclasses

    prof.provenance["raw_data"] = raw_path
    prof.physical = {k: dataclasses.replace(p, basis=p.basis.replace(str(tmp), raw_path))
                     for k, p in prof.physical.items()}
    return prof.to_toml(), {s.name: round(100 * s.mape, 2) for s in fit.stages if s.n_points}


def fit_nodes(m: Manifest, echo=print, use_ray: bool = True) -> dict:
    """Fit one profile per gathered slot (``OUT/nodes/<slot>/<hardware>-<slot>.toml``), the
    fits spread over the cluster's CPUs as Ray tasks (no torch needed). Returns slot ->
    HardwareProfile; a fit that fails marks the slot ``fit_failed`` with the reason."""
    from qtsim.profiles.hardware import read_profile

    profiles, todo = {}, {}
    for name, st in m.doc["slots"].items():
        if st["status"] not in ("done", "fit_failed") or "raw" not in st:
            continue
        if st.get("profile") and (m.out / st["profile"]).is_file() and st["status"] == "done":
            profiles[name] = read_profile(m.out / st["profile"])
            continue
        hw = (st.get("unit") or {}).get("hardware", "device")
        raw = m.out / st["raw"]
        todo[name] = (raw.read_bytes(), str(raw), f"{hw}-{name}")
    if use_ray and todo:
        ray = require_ray()
        remote = ray.remote(_fit_one).options(num_cpus=1)
        results = dict(zip(todo, ray.get([remote.remote(*a) for a in todo.values()]), strict=True))
    else:
        results = {n: _fit_one(*a) for n, a in todo.items()}
    for name, (toml_text, stages) in results.items():
        if toml_text is None:
            m.update(name, status="fit_failed", reason=stages)
            echo(f"  {name}: fit failed: {stages}")
            continue
        dest = Path(todo[name][1]).parent / f"{todo[name][2]}.toml"
        _atomic_write(dest, toml_text.encode())
        m.update(name, status="done", profile=str(dest.relative_to(m.out)), fit_mape_pct=stages)
        profiles[name] = read_profile(dest)
        echo(f"  {name}: profile {dest} (fit MAPE "
             f"{', '.join(f'{k} {v}%' for k, v in stages.items())})")
    return profiles


def group_key(unit: dict | None, profile=None) -> str:
    """The hardware model units are compared within: qtsim's name plus the device string."""
    unit = unit or {}
    hw = unit.get("hardware") or (profile.hardware.get("device_name") if profile else "?")
    dev = unit.get("device") or (profile.provenance.get("device") if profile else "")
    return f"{hw} ({dev})" if dev else str(hw)


def spread_table(values: dict[str, dict[str, float]]):
    """Per constant, the spread between units: n, mean, sd (ddof 1), min, max, CV = sd/|mean|.
    ``values``: unit -> {constant: value}. Only constants every unit has."""
    import pandas as pd

    units = list(values)
    names = sorted(set.intersection(*(set(v) for v in values.values()))) if values else []
    rows = []
    for k in names:
        x = np.array([values[u][k] for u in units], float)
        mean = float(np.mean(x))
        sd = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
        rows.append({"constant": k, "n_units": int(x.size), "mean": mean, "sd": sd,
                     "min": float(np.min(x)), "max": float(np.max(x)),
                     "cv": sd / abs(mean) if mean and math.isfinite(sd) else math.nan,
                     **{f"unit:{u}": float(values[u][k]) for u in units}})
    return pd.DataFrame(rows)


def _fitted(p) -> bool:
    """A constant the fit determined: calibrated, or derived with a standard error of its own
    (the bandwidth); not priors, assumptions, definitions or ties to another constant."""
    return p.source == "calibrated" or (p.source == "fixed" and p.stderr > 0
                                        and "tied" not in p.basis)


def fleet_summary(m: Manifest, profiles: dict, echo=print) -> dict:
    """``OUT/fleet_summary.csv`` (one row per hardware model x constant), ``.json`` (with
    every slot's status and reason) and ``fleet_spread.png``. Constants compared: those the
    fits calibrated (not priors, not fixed or assumed ones)."""
    import pandas as pd

    groups: dict[str, dict[str, dict[str, float]]] = {}
    for name, prof in profiles.items():
        st = m.slot(name)
        vals = {k: float(p.value) for k, p in prof.physical.items() if _fitted(p)}
        groups.setdefault(group_key(st.get("unit"), prof), {})[name] = vals
    tables = []
    for g, vals in groups.items():
        t = spread_table(vals)
        t.insert(0, "hardware_model", g)
        tables.append(t)
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    m.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(m.out / "fleet_summary.csv", index=False)
    doc = {"campaign": m.doc["campaign"], "kind": m.doc["kind"], "settings": m.doc["settings"],
           "slots": {n: {k: v for k, v in s.items()} for n, s in m.doc["slots"].items()},
           "groups": {g: {"units": list(v), "spread": [
               {k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                for k, x in r.items() if not k.startswith("unit:")}
               for r in frame[frame["hardware_model"] == g].to_dict("records")]}
               for g, v in groups.items()}}
    (m.out / "fleet_summary.json").write_text(json.dumps(doc, indent=2, default=str))
    png = plot_spread(frame, m.out / "fleet_spread.png") if len(frame) else None
    return {"frame": frame, "json": doc, "png": png}


def plot_spread(frame, path) -> Path:
    """Each unit's fitted constant divided by its hardware model's mean (1 = the mean), one
    row per constant, one panel per hardware model, CV beside each row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(frame["hardware_model"]))
    nmax = max(int((frame["hardware_model"] == g).sum()) for g in groups)
    fig, axes = plt.subplots(1, len(groups), figsize=(7.5 * len(groups), 1.0 + 0.32 * nmax),
                             squeeze=False)
    for ax, g in zip(axes[0], groups, strict=True):
        sub = frame[frame["hardware_model"] == g].reset_index(drop=True)
        ucols = [c for c in sub.columns if c.startswith("unit:") and sub[c].notna().any()]
        for j, c in enumerate(ucols):
            rel = sub[c].to_numpy(float) / sub["mean"].to_numpy(float)
            ax.scatter(rel, np.arange(len(sub)), s=22, label=c[len("unit:"):], zorder=3,
                       marker="os^Dv<>"[j % 7])
        ax.axvline(1.0, color="0.5", lw=0.8)
        ax.set_yticks(np.arange(len(sub)))
        ax.set_yticklabels([f"{k}  (CV {100 * cv:.1f}%)" if math.isfinite(cv) else k
                            for k, cv in zip(sub["constant"], sub["cv"], strict=True)],
                           fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("unit value / mean over units")
        ax.set_title(f"{g}: {len(ucols)} units", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Spread of fitted constants between units of the same hardware model", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation_summary(m: Manifest, profiles_by_slot: dict, echo=print):
    """Per slot: the validation report's errors (latency, step, J/query MAPE and bias) and
    verdict agreement, ``OUT/nodes/<slot>/errors.csv``; fleet rows in
    ``OUT/fleet_validation.csv`` and ``.json``, with the spread per hardware model."""
    import pandas as pd

    from qtsim.calibration.raw import RawStore
    from qtsim.validate.score import cor_and_verdicts, error_table, measured_frame, verdict_summary

    rows = []
    for name, st in m.doc["slots"].items():
        if st["status"] != "done":
            rows.append({"slot": name, "status": st["status"], "reason": st.get("reason", "")})
            continue
        raw = m.out / st["raw"]
        df = measured_frame(RawStore(raw, readonly=True).summary_frame("decode"))
        errors = error_table(df)
        errors.to_csv(raw.parent / "errors.csv", index=False)
        df.to_csv(raw.parent / "points.csv", index=False)
        allrow = errors[errors["group"] == "all"].set_index("quantity")
        prof = profiles_by_slot[name]
        verdicts = cor_and_verdicts(df, prof.native)
        row = {"slot": name, "status": "done", "hardware_model": group_key(st.get("unit")),
               "profile": prof.name, "points": len(df),
               "verdicts": verdict_summary(verdicts) if not verdicts.empty else ""}
        for q in ("latency_s", "step_s", "j_per_query"):
            if q in allrow.index:
                row[f"{q}_mape_pct"] = float(allrow.loc[q, "mape_pct"])
                row[f"{q}_bias_pct"] = float(allrow.loc[q, "bias_pct"])
        rows.append(row)
        echo(f"  {name}: {len(df)} held-out points, latency MAPE "
             f"{row.get('latency_s_mape_pct', float('nan')):.1f}%, verdicts {row['verdicts']}")
    frame = pd.DataFrame(rows)
    frame.to_csv(m.out / "fleet_validation.csv", index=False)
    (m.out / "fleet_validation.json").write_text(json.dumps(
        {"campaign": m.doc["campaign"], "rows": frame.to_dict("records")}, indent=2, default=str))
    return frame


# ---- big simulate grids -----------------------------------------------------------------------
def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if not size or size >= n else int(size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def simulate_tiles(profiles, models=(), sizes=None, batch=(1, 8, 64), *, family=None,
                   chunk_models: int | None = None, chunk_batches: int | None = None,
                   **kw) -> list[dict]:
    """The keyword arguments of one :func:`qtsim.simulate.surface.simulate` call per tile of the
    (model, batch) grid: models (named, then the synthetic ``sizes`` of ``family``) cut into
    chunks of ``chunk_models``, batches into chunks of ``chunk_batches``. ``family`` is pinned
    to what one machine would use (the first model), so N* is searched along the same family
    in every tile."""
    models = list(models)
    family = family or (models[0] if models else None)
    sizes_arr = None if sizes is None else np.atleast_1d(np.asarray(sizes, float))
    n_models = len(models) + (0 if sizes_arr is None else sizes_arr.size)
    b = np.atleast_1d(np.asarray(batch, float))
    tiles = []
    for ms in _chunks(n_models, chunk_models):
        idx = np.arange(n_models)[ms]
        named = [models[i] for i in idx if i < len(models)]
        syn = [i - len(models) for i in idx if i >= len(models)]
        for bs in _chunks(b.size, chunk_batches):
            tiles.append({"profiles": list(profiles), "models": named,
                          "sizes": sizes_arr[syn] if syn else None, "batch": b[bs],
                          "family": family, **kw,
                          "_model_slice": (ms.start, ms.stop)})
    return tiles


def _simulate_tile(tile: dict):
    from qtsim.model.workload import Workload
    from qtsim.simulate.surface import simulate

    kw = {k: v for k, v in tile.items() if not k.startswith("_")}
    w = {k: kw.pop(k) for k in ("batch", "new_tokens", "prompt_tokens") if k in kw}
    return simulate(workload=Workload(**w), **kw)


def assemble(tiles: list[dict], surfaces: list):
    """One surface Dataset from the tiles' surfaces: concatenated along batch within each chunk
    of models, then along model (tiles come model chunk by model chunk, as
    :func:`simulate_tiles` makes them). Per-model and per-batch quantities are the same in
    every tile that shares those indices; they are taken from the first."""
    import xarray as xr

    rows: dict[tuple, list] = {}
    for tile, s in zip(tiles, surfaces, strict=True):
        rows.setdefault(tuple(tile["_model_slice"]), []).append(s)
    opts = {"data_vars": "minimal", "coords": "minimal", "compat": "override", "join": "exact",
            "combine_attrs": "override"}
    out = xr.combine_nested(list(rows.values()), concat_dim=["model", "batch"], **opts)
    return out[list(surfaces[0].variables)]  # one machine's order: coordinates first


def fleet_simulate(profiles, models=(), sizes=None, batch=(1, 8, 64), *, family=None,
                   chunk_models: int | None = None, chunk_batches: int | None = None,
                   use_ray: bool = True, **kw):
    """:func:`qtsim.simulate.surface.simulate` over a large grid, one Ray task per tile (see
    :func:`simulate_tiles`), assembled into the same Dataset one machine computes: draws are
    seeded per GPU profile (``Simulator(profile, seed)``) and per model family, never per
    tile, and every value is computed element-wise, so the result is bit for bit the same.
    ``use_ray=False`` runs the tiles in this process (for checking)."""
    tiles = simulate_tiles(profiles, models, sizes, batch, family=family,
                           chunk_models=chunk_models, chunk_batches=chunk_batches, **kw)
    if use_ray:
        ray = require_ray()
        remote = ray.remote(num_cpus=1)(_simulate_tile)
        surfaces = ray.get([remote.remote(t) for t in tiles])
    else:
        surfaces = [_simulate_tile(t) for t in tiles]
    return assemble(tiles, surfaces)


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
