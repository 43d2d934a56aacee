"""Execute a measurement plan into a :class:`~qtsim.calibration.measure.raw.RawStore`.

Points already in the store are skipped (resume); each result is appended as soon as it is
measured, so an interrupted run loses at most the point in flight; out of memory at a point is
stored as ``status="skipped"`` with its reason and the run goes on.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import click

from qtsim.calibration.measure.raw import PointResult, RawStore, now_iso
from qtsim.calibration.probes.bench import skip_on_oom
from qtsim.calibration.probes.decode import cleanup
from qtsim.errors import QtsimError


class PointSpec(Protocol):
    """A point to measure: a deterministic id, a label, a time estimate and how to run it."""

    def point_id(self) -> str: ...

    def run(self, ctx: RunContext) -> PointResult: ...

    def estimate_s(self, device) -> float: ...


@dataclass
class RunContext:
    """What points share while a plan runs: the device, the monitor, the purpose, and a
    one-slot cache of the last built model (decode points at several batches reuse it)."""

    device: Any
    monitor: Any
    purpose: str = "calibration"
    _model_key: Any = None
    _model: Any = None
    _layers_key: Any = None
    _layers: Any = None

    def cached_model(self, key, build):
        """The model for ``key``, building it with ``build()`` (and dropping the previous
        one, and any cached probe layers) when the key changes."""
        if key != self._model_key:
            self.drop_model()
            self._layers_key = self._layers = None
            self._model = build()
            self._model_key = key
        return self._model

    def cached_layers(self, key, build):
        """A linear probe's layers for ``key`` (:func:`qtsim.calibration.bench.probe_layers`),
        built with ``build()`` when the key changes: the batches of one layer share them."""
        if key != self._layers_key:
            self._layers_key = self._layers = None  # free the previous set before building
            self._layers = build()
            self._layers_key = key
        return self._layers

    def drop_model(self) -> None:
        if self._model is not None:
            cleanup(self._model)
        self._model, self._model_key = None, None


@dataclass
class RunReport:
    """Counts of what :func:`run_plan` did, and the ids involved."""

    measured: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stored with status="skipped"
    started: str = ""
    finished: str = ""
    wall_s: float = 0.0

    def line(self) -> str:
        return (f"{len(self.measured)} measured, {len(self.skipped)} skipped (out of memory), "
                f"{len(self.resumed)} already stored, {self.wall_s:.1f} s")


def run_plan(points: list, store: RawStore, device, monitor, progress: bool = True,
             resume: bool = True, purpose: str = "calibration") -> RunReport:
    """Measure every point of ``points`` not yet in ``store`` and append it.

    ``resume=False`` refuses to start when any point is already stored (raw data is
    append-only; use a new file). Out of memory is caught per point by the probes and stored as
    a skipped point; any other error stops the run, with all finished points kept.
    """
    ids = [p.point_id() for p in points]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise QtsimError(f"plan has duplicate point ids: {', '.join(dup[:5])}")
    stored = set(store.ids())
    if not resume and stored.intersection(ids):
        raise QtsimError(
            f"{store.path} already holds {len(stored.intersection(ids))} of these points; "
            "resume, or write to a new file"
        )
    report = RunReport(started=now_iso())
    t0 = time.perf_counter()
    ctx = RunContext(device, monitor, purpose)
    todo = [p for p in points if p.point_id() not in stored]
    report.resumed = [i for i in ids if i in stored]

    def label(p):
        return p.point_id() if p is not None else ""

    bar = (click.progressbar(todo, label=f"measuring {len(todo)} points on {device.name}",
                             item_show_func=label, file=sys.stderr, show_pos=True)
           if progress else _NullBar(todo))
    try:
        with bar as items:
            for spec in items:
                pid = spec.point_id()
                try:
                    result = spec.run(ctx)
                except Exception as exc:
                    result = skip_on_oom(exc, device, spec.base_attrs(ctx), pid)
                store.append(pid, result.attrs, result.datasets)
                (report.skipped if result.status != "ok" else report.measured).append(pid)
    except KeyboardInterrupt:
        kept = len(report.measured) + len(report.skipped) + len(report.resumed)
        how = ("add --resume to the same command to continue where it stopped"
               if purpose == "calibration" else "points already stored are not measured again")
        click.echo(f"\ninterrupted: {kept} of {len(ids)} points are stored in {store.path}; {how}",
                   err=True)
        raise
    finally:
        ctx.drop_model()
        report.finished = now_iso()
        report.wall_s = time.perf_counter() - t0
    return report


class _NullBar:
    def __init__(self, items):
        self.items = items

    def __enter__(self):
        return iter(self.items)

    def __exit__(self, *exc):
        return False
