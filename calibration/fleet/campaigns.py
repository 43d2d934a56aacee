"""``qtsim fleet``'s work, one function per command: join Ray, run the campaign, summarise.

The campaign machinery (slots, manifest, node tasks, gathering, fits, summaries, tiled
simulate grids) lives in the other modules of :mod:`qtsim.calibration.fleet`; this module
strings it together for
:func:`calibrate_fleet`, :func:`validate_fleet` and :func:`simulate_fleet` and writes their
terminal summaries through ``echo``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from qtsim.calibration.fleet.head import MANIFEST, run_campaign
from qtsim.calibration.fleet.slots import (
    DEFAULT_WORK_DIR,
    RESOURCE_PREFIX,
    Slot,
    parse_slots,
    require_ray,
)
from qtsim.calibration.fleet.summary import fit_nodes, fleet_summary, validation_summary
from qtsim.calibration.fleet.tiles import fleet_simulate
from qtsim.errors import QtsimError
from qtsim.profiles.hardware import read_profile
from qtsim.report.grid import check_grid_size
from qtsim.simulate.dataset import grid_line, quantities, write_csv, write_hdf5
from qtsim.validate.plan import plan_points

#: how to get a cluster, said with every refusal to join one
START_CLUSTER = ("start one with `ray start --head` on the head node (and `ray start --address "
                 "HEAD:6379` on the others), then pass --address HEAD:6379, or --address auto on "
                 "the head")
#: seconds to wait for a cluster's port before refusing (Ray itself would retry for minutes)
CONNECT_TIMEOUT_S = 5.0


def cluster_endpoint(address: str) -> tuple[str, int]:
    """(host, port) a Ray ``address`` points at: ``HOST:PORT``, ``ray://HOST:PORT``, or
    ``auto`` (``RAY_ADDRESS``, else the cluster ``ray start`` began on this machine); a one-line
    :class:`QtsimError` when there is none or the address is malformed."""
    addr = address
    if addr == "auto":
        addr = os.environ.get("RAY_ADDRESS") or ""
        if not addr:
            try:  # Ray's own lookup of the cluster `ray start` recorded on this machine
                from ray._private.services import canonicalize_bootstrap_address

                addr = canonicalize_bootstrap_address("auto") or ""
            except Exception:  # noqa: BLE001 - any failure means: no cluster found
                addr = ""
        if not addr:
            raise QtsimError(f"--address auto: no Ray cluster is running on this machine; "
                             f"{START_CLUSTER}")
    hostport = addr.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise QtsimError(f"--address {address!r}: give HOST:PORT, ray://HOST:PORT or auto")
    return host, int(port)


def check_cluster(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse within ``timeout_s`` when nothing listens at ``address`` (Ray would hang)."""
    host, port = cluster_endpoint(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise QtsimError(f"--address {address}: no Ray cluster answers at {host}:{port} ({why}); "
                         f"{START_CLUSTER}") from None


def connect(address: str | None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (None: start one here with ``num_cpus``); a missing
    cluster is a one-line :class:`QtsimError` within seconds (:func:`check_cluster`)."""
    ray = require_ray()
    if not ray.is_initialized():
        kw = {"log_to_driver": False, "logging_level": "ERROR", "configure_logging": False}
        if address:
            check_cluster(address)
            try:
                ray.init(address=address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise QtsimError(f"--address {address}: cannot join the Ray cluster "
                                 f"({str(e).splitlines()[0]}); {START_CLUSTER}") from None
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, **kw)
    return ray


def parse_crash(items) -> dict:
    """``--crash-after SLOT=N`` drills: {slot: N}."""
    out = {}
    for it in items:
        slot, _, n = it.partition("=")
        out[slot] = int(n)
    return out


def calibrate_fleet(address, gpu: str, nodes, plan_name: str, tdp_w, out_dir, *, resume=False,
                    work_dir=None, max_retries=3, cpu_threads=None, crash=(), echo=print):
    """``qtsim fleet calibrate``: calibrate every slot, fit a profile per slot and summarise
    the spread of each constant between units of the same hardware model."""
    ray = connect(address)
    slots = parse_slots(nodes, gpu, ray.cluster_resources())
    settings = {"plan": plan_name, "gpu": gpu}
    extra = {"*": {"plan": plan_name, "cpu_threads": cpu_threads, "tdp_w": tdp_w}}
    echo(f"fleet calibrate: {len(slots)} slots ({', '.join(f'{s.name}={s.gpu}' for s in slots)}), "
         f"plan {plan_name} -> {out_dir}")
    m = run_campaign("calibrate", out_dir, slots, settings=settings, job_extra=extra,
                        resume=resume, work_dir=work_dir or DEFAULT_WORK_DIR,
                        max_retries=max_retries, crash=parse_crash(crash), echo=echo)
    profiles = fit_nodes(m, echo=echo)
    summary = fleet_summary(m, profiles, echo=echo)
    for line in summary_lines(m, summary):
        echo(line)
    return m, summary


def summary_lines(m, summary) -> list[str]:
    """Slot statuses, refusals and failures, and the spread table per hardware model."""
    frame = summary["frame"]
    statuses = {}
    for n, s in m.doc["slots"].items():
        statuses.setdefault(s["status"], []).append(n)
    lines = ["slots: " + "; ".join(f"{k} {', '.join(v)}" for k, v in statuses.items())]
    lines += [f"  {n} {s['status']}: {s.get('reason', '')}" for n, s in m.doc["slots"].items()
              if s["status"] in ("refused", "failed", "fit_failed")]
    for g in (dict.fromkeys(frame["hardware_model"]) if len(frame) else ()):
        sub = frame[frame["hardware_model"] == g]
        lines.append(f"spread between units of {g} ({int(sub['n_units'].iloc[0])} units):")
        lines.append(f"  {'constant':22s} {'mean':>11s} {'sd':>10s} {'min':>11s} {'max':>11s} "
                     f"{'CV':>7s}")
        lines += [f"  {r['constant']:22s} {r['mean']:11.4g} {r['sd']:10.3g} {r['min']:11.4g} "
                  f"{r['max']:11.4g} {100 * r['cv']:6.1f}%" for _, r in sub.iterrows()]
    lines.append(f"wrote {m.out / 'fleet_summary.csv'}, fleet_summary.json"
                 + (f", {summary['png'].name}" if summary.get("png") else "") + f", {m.path.name}")
    return lines


def _validation_slots(ray, from_dir, profile_path, nodes, gpu: str):
    """(slots, {slot: profile file}): each calibrated slot's own profile (``from_dir``, a fleet
    calibrate campaign) or one ``profile_path`` for every slot."""
    if from_dir:
        cal = json.loads((Path(from_dir) / MANIFEST).read_text())
        have = {n: s for n, s in cal["slots"].items() if s["status"] == "done" and s.get("profile")}
        wanted = parse_slots(nodes, gpu, {RESOURCE_PREFIX + n: 1 for n in have})
        slots = [Slot(s.name, have[s.name]["gpu"]) for s in wanted if s.name in have]
        return slots, {s.name: Path(from_dir) / have[s.name]["profile"] for s in slots}
    slots = parse_slots(nodes, gpu, ray.cluster_resources())
    return slots, {s.name: Path(profile_path) for s in slots}


def validate_fleet(address, request, out_dir, *, from_dir=None, profile_path=None, gpu="cpu",
                   nodes=None, resume=False, work_dir=None, max_retries=3, cpu_threads=None,
                   crash=(), echo=print):
    """``qtsim fleet validate``: held-out decodes of ``request``
    (:class:`qtsim.validate.plan.ValidationRequest`) on every slot, each against its own
    profile, with per-slot errors and the fleet's spread."""
    if bool(from_dir) == bool(profile_path):
        raise QtsimError("give --from CAMPAIGN_DIR or --profile FILE")
    points, reps, configs = plan_points(request)
    slots, prof_files = _validation_slots(connect(address), from_dir, profile_path, nodes, gpu)
    profiles = {n: read_profile(p) for n, p in prof_files.items()}
    extra = {"*": {"points": [p.to_dict() for p in points],
                   "configs": {k: list(v) for k, v in configs.items()}, "reps": reps,
                   "cpu_threads": cpu_threads}}
    for n, p in prof_files.items():
        extra[n] = {"profile_toml": p.read_text()}
        if cpu_threads is None and profiles[n].hardware.get("device_type") == "cpu":
            extra[n]["cpu_threads"] = profiles[n].hardware.get("cpu_threads") or None
    settings = {"from": str(from_dir or ""), "profile": str(profile_path or ""),
                "points": len(points), "reps": reps}
    echo(f"fleet validate: {len(slots)} slots x {len(points)} held-out points -> {out_dir}")
    m = run_campaign("validate", out_dir, slots, settings=settings, job_extra=extra,
                        resume=resume, work_dir=work_dir or DEFAULT_WORK_DIR,
                        max_retries=max_retries, crash=parse_crash(crash), echo=echo)
    frame = validation_summary(m, profiles, echo=echo)
    for _, r in frame[frame["status"] != "done"].iterrows():
        echo(f"  {r['slot']} {r['status']}: {r['reason']}")
    echo(f"wrote {m.out / 'fleet_validation.csv'}, fleet_validation.json, {m.path.name}")
    return m, frame


def simulate_fleet(address, workers, profiles, archs, size_grid, batches, out, *, family=None,
                   chunk_models=None, chunk_batches=None, precisions=("fp16", "int8", "nf4"),
                   new_tokens=256, prompt_tokens=128, n_draws=0, seed=0, csv_path=None,
                   echo=print):
    """``qtsim fleet simulate``: the grid in tiles over Ray workers, written as one machine
    writes it (HDF5, optional CSV)."""
    n_models = len(archs) + (len(size_grid) if size_grid is not None else 0)
    check_grid_size(len(profiles), len(precisions), n_models, len(batches), n_draws)
    connect(address, workers)
    t0 = time.perf_counter()
    surface = fleet_simulate(profiles, archs, size_grid, batches, family=family,
                                chunk_models=chunk_models, chunk_batches=chunk_batches,
                                precisions=precisions, new_tokens=new_tokens,
                                prompt_tokens=prompt_tokens, n_draws=n_draws, seed=seed)
    elapsed = time.perf_counter() - t0
    write_hdf5(surface, out, "qtsim fleet simulate")
    echo(grid_line(surface, n_draws, elapsed) + " over Ray")
    echo(f"wrote {out} ({len(quantities(surface))} quantities)")
    if csv_path:
        echo(f"wrote {csv_path} ({write_csv(surface, csv_path)} rows)")
    return surface
