"""The node side of a fleet campaign: one Ray task per slot measures its device into a raw
HDF5 on the node's own disk (resuming on retry, refusing a different unit behind the slot) and
returns the file's bytes.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from qtsim.calibration.fleet.slots import utc_now
from qtsim.calibration.measure.device import detect_device
from qtsim.calibration.measure.energy import EnergyMonitor
from qtsim.calibration.measure.raw import RawStore
from qtsim.calibration.probes.plan import named_plan
from qtsim.calibration.probes.runner import run_plan
from qtsim.errors import QtsimError
from qtsim.profiles.hardware import read_profile
from qtsim.validate import holdout
from qtsim.validate.plan import ValidationPoint, holdout_conflicts


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
            Path(self.marker).write_text(utc_now())
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
    """Held-out :class:`~qtsim.validate.holdout.ValidationSpec` s for ``points`` with the
    ``profile``'s predictions (what ``qtsim validate`` measures), refusing points that
    calibrated it. ``configs``: model -> (config, name)."""
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
        return named_plan(job.get("plan", "tiny"), device), "calibration"

    prof_path = slot_dir / "profile.toml"
    prof_path.write_text(job["profile_toml"])
    points = [ValidationPoint.from_dict(p) for p in job["points"]]
    configs = {k: tuple(v) for k, v in job["configs"].items()}
    return (validation_specs(read_profile(prof_path), points, configs, int(job.get("reps", 3))),
            "validation")



def _measure_slot(job: dict, slot_dir: Path, device) -> dict:
    """Run (or resume) the slot's plan into its node-local raw HDF5: the point ids expected,
    measured and resumed, and the file's bytes."""
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
