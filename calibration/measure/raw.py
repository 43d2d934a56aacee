"""The raw-measurement HDF5 contract (``qtsim-raw/1``). Needs h5py, numpy, pandas; never torch.

Layout::

    /                       attrs: schema="qtsim-raw/1", created (ISO UTC), qtsim_version
    /points/<point_id>      attrs: every condition (kind, hardware, precision, path, batch, ...)
        duration_s          (n_reps,) seconds per measurement window
        energy_j_<meter>    (n_reps,) joules per window, one dataset per meter that passed checks
        power_w             optional (n, 2): t_s since window start, W (last window's samples)
        prefill_s           decode only: (n_reps,) window of a 1-new-token generate
        prefill_energy_j_<meter>  decode only, likewise
        peak_memory_bytes   decode only: scalar
        steps, sm_clock_mhz, mem_clock_mhz, temperature_c, clock_event_reasons
                            power_state only: (n_reps,) work units run and the conditions
                            sampled inside each window (NaN where unreadable)

A window may hold ``iters_per_rep`` back-to-back calls (linear, membw, gemm; decode generates
too when a minimum window is asked for, ``prefill_iters_per_rep`` for prefill): per-call values
are window values divided by it. Groups are append-only: a point is written under a temporary
name and renamed when complete, and the file is flushed and closed after every append, so a
killed run loses at most the point in flight.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtsim import __version__
from qtsim.errors import QtsimError

SCHEMA = "qtsim-raw/1"
KINDS = ("membw", "gemm", "linear", "decode", "idle", "power_state")
_PARTIAL_PREFIX = "~partial~"
_JSON_ATTRS = "_json_attrs"


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def make_point_id(kind: str, *parts: Any) -> str:
    """A deterministic, filename-safe id: ``make_point_id("linear", "nf4_b1", "4096x4096",
    "b8")`` -> ``"linear__nf4_b1__4096x4096__b8"``."""
    if kind not in KINDS:
        raise QtsimError(f"unknown measurement kind {kind!r} (known: {', '.join(KINDS)})")
    cleaned = [re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9._\-]+", "-", str(p))).strip("-_")
               for p in (kind, *parts)]
    return "__".join(c for c in cleaned if c)


@dataclass
class PointResult:
    """What one measured point produced: its condition ``attrs`` and its ``datasets``."""

    attrs: dict[str, Any]
    datasets: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.attrs.get("status", "ok")

    @classmethod
    def skipped(cls, attrs: dict[str, Any], reason: str) -> PointResult:
        return cls({**attrs, "status": "skipped", "skip_reason": reason}, {})


@dataclass(frozen=True)
class PointRecord:
    """A point as read back: its id, decoded attrs and datasets as numpy arrays."""

    point_id: str
    attrs: dict[str, Any]
    datasets: dict[str, np.ndarray]


def _h5py():
    import h5py

    return h5py


def _encode_attrs(group, attrs: dict[str, Any]) -> None:
    json_names = []
    for name, value in attrs.items():
        if value is None:
            continue  # absent attribute reads back as None
        if isinstance(value, (list, tuple, dict)):
            group.attrs[name] = json.dumps(value, default=str)
            json_names.append(name)
        elif isinstance(value, (bool, np.bool_)):
            group.attrs[name] = np.bool_(value)
        elif isinstance(value, np.generic):
            group.attrs[name] = value.item()
        elif isinstance(value, (int, float, str)):
            group.attrs[name] = value
        else:
            group.attrs[name] = str(value)
    group.attrs[_JSON_ATTRS] = json.dumps(json_names)


def _decode_attrs(group) -> dict[str, Any]:
    raw = dict(group.attrs)
    json_names = set(json.loads(raw.pop(_JSON_ATTRS, "[]")))
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        if name in json_names and isinstance(value, str):
            value = json.loads(value)
        out[name] = value
    return out


class RawStore:
    """Append-only HDF5 store of raw measurements at ``path``.

    ``readonly=True`` requires the file to exist; otherwise the file is created on first append.
    A file that is not HDF5, or not ``qtsim-raw/1``, raises a one-line :class:`QtsimError`.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = os.fspath(path)
        self.readonly = readonly
        if os.path.exists(self.path):
            with self._open("r") as f:
                self._check_schema(f)
        elif readonly:
            raise QtsimError(f"{self.path}: no such raw measurement file")

    # -- file access ----------------------------------------------------------------------------
    def _open(self, mode: str):
        h5py = _h5py()
        try:
            return h5py.File(self.path, mode)
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise QtsimError(f"{self.path}: not a readable HDF5 raw file ({first})") from None

    def _check_schema(self, f) -> None:
        schema = f.attrs.get("schema")
        if isinstance(schema, bytes):
            schema = schema.decode()
        if schema != SCHEMA:
            raise QtsimError(
                f"{self.path}: not a qtsim raw file (schema {schema!r}, expected {SCHEMA!r})"
            )

    def _ids(self, f) -> list[str]:
        if "points" not in f:
            return []
        return [k for k in f["points"].keys() if not k.startswith(_PARTIAL_PREFIX)]

    # -- public API -------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Ids of all complete points, in file order."""
        if not os.path.exists(self.path):
            return []
        with self._open("r") as f:
            return self._ids(f)

    def has(self, point_id: str) -> bool:
        """Whether a complete point ``point_id`` is stored."""
        return point_id in set(self.ids())

    def append(self, point_id: str, attrs: dict[str, Any], datasets: dict[str, Any]) -> None:
        """Write one point; raises :class:`QtsimError` if ``point_id`` already exists."""
        if self.readonly:
            raise QtsimError(f"{self.path}: opened read-only")
        if not re.fullmatch(r"[A-Za-z0-9._\-]+", point_id) or point_id.startswith(_PARTIAL_PREFIX):
            raise QtsimError(f"point id {point_id!r} is not filename-safe")
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        new = not os.path.exists(self.path)
        with self._open("a") as f:
            if new:
                f.attrs["schema"] = SCHEMA
                f.attrs["created"] = now_iso()
                f.attrs["qtsim_version"] = __version__
            else:
                self._check_schema(f)
            points = f.require_group("points")
            if point_id in points:
                raise QtsimError(
                    f"{self.path}: point {point_id!r} already exists; raw data is append-only"
                )
            for stale in [k for k in points.keys() if k.startswith(_PARTIAL_PREFIX)]:
                del points[stale]  # left by a run killed mid-write
            tmp = f"{_PARTIAL_PREFIX}{point_id}"
            g = points.create_group(tmp)
            _encode_attrs(g, {**attrs, "point_id": point_id})
            for name, value in datasets.items():
                if value is None:
                    continue
                arr = np.asarray(value)
                if arr.ndim >= 1 and arr.size > 1024:
                    g.create_dataset(name, data=arr, compression="gzip")
                else:
                    g.create_dataset(name, data=arr)
            points.move(tmp, point_id)
            f.flush()

    def points(self, kind: str | None = None) -> Iterator[PointRecord]:
        """Every complete point (optionally only those of ``kind``), as :class:`PointRecord`."""
        if not os.path.exists(self.path):
            return
        with self._open("r") as f:
            self._check_schema(f)
            for pid in self._ids(f):
                g = f["points"][pid]
                attrs = _decode_attrs(g)
                if kind is not None and attrs.get("kind") != kind:
                    continue
                data = {name: np.asarray(g[name][()]) for name in g.keys()}
                yield PointRecord(pid, attrs, data)

    def file_attrs(self) -> dict[str, Any]:
        """The root attributes (schema, created, qtsim_version)."""
        with self._open("r") as f:
            return _decode_attrs(f)

    def sha256(self) -> str:
        """Checksum of the file, for a profile's provenance."""
        h = hashlib.sha256()
        with open(self.path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def summary_frame(self, kind: str | None = None):
        """One row per ok point: scalar attrs plus medians (see :func:`summarise_point`).

        Rows whose durations or energies are NaN, negative or missing are dropped; the reasons
        are in ``frame.attrs["dropped"]``; skipped points are listed in ``frame.attrs["skipped"]``.
        """
        import pandas as pd

        rows, dropped, skipped = [], [], []
        for rec in self.points(kind):
            if rec.attrs.get("status", "ok") != "ok":
                skipped.append(f"{rec.point_id}: {rec.attrs.get('skip_reason', 'skipped')}")
                continue
            problem = validate_point(rec)
            if problem:
                dropped.append(f"{rec.point_id}: {problem}")
                continue
            rows.append(summarise_point(rec))
        frame = pd.DataFrame(rows)
        frame.attrs["dropped"] = dropped
        frame.attrs["skipped"] = skipped
        frame.attrs["source"] = self.path
        return frame


# -- validation and summary (pure functions of a record) ----------------------------------------
def _timing_datasets(rec: PointRecord) -> list[str]:
    names = ["duration_s"]
    if rec.attrs.get("kind") == "decode":
        names.append("prefill_s")
    return names


def _energy_datasets(rec: PointRecord) -> list[str]:
    return sorted(n for n in rec.datasets if n.startswith(("energy_j_", "prefill_energy_j_")))


def validate_point(rec: PointRecord) -> str | None:
    """Why ``rec`` cannot be used (missing/empty/NaN/negative data), or None if it can."""
    for name in _timing_datasets(rec):
        if name not in rec.datasets:
            return f"no {name} dataset"
        arr = np.atleast_1d(np.asarray(rec.datasets[name], dtype=float))
        if arr.size == 0:
            return f"{name} is empty"
        if not np.all(np.isfinite(arr)):
            return f"{name} has NaN or infinite values"
        if np.any(arr <= 0):
            return f"{name} has zero or negative values"
    for name in _energy_datasets(rec):
        arr = np.atleast_1d(np.asarray(rec.datasets[name], dtype=float))
        if not np.all(np.isfinite(arr)):
            return f"{name} has NaN or infinite values"
        if np.any(arr < 0):
            return f"{name} has negative values"
    if rec.attrs.get("kind") == "decode" and int(rec.attrs.get("new_tokens") or 0) < 2:
        return "decode needs new_tokens >= 2 to separate steps from prefill"
    return None


def _scalar_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if v is None or isinstance(v, (int, float, str, bool)):
                    out[f"{name}_{k}"] = v
        elif isinstance(value, (list, tuple)):
            out[name] = ";".join(str(v) for v in value)
        else:
            out[name] = value
    return out


def summarise_point(rec: PointRecord) -> dict[str, Any]:
    """Scalar attrs plus ``t_median_s``, ``t_std_s``, ``n_reps``, ``e_median_j_<meter>``;
    ``t_call_s``/``e_call_j_<meter>`` per call where a window repeats calls; for decode
    ``t_prefill_s``, ``t_step_s`` = (K-token time - prefill time)/(K-1), ``e_step_j_<meter>``;
    for idle ``p_idle_w_<meter>``; for membw ``bandwidth_bytes_per_s``; for gemm ``flops_per_s``;
    for power_state, membw, gemm and idle the per-window power (:func:`window_power_summary`)."""
    a = rec.attrs
    row = _scalar_attrs(a)
    d = np.atleast_1d(np.asarray(rec.datasets["duration_s"], dtype=float))
    row["n_reps"] = int(d.size)
    row["t_median_s"] = float(np.median(d))
    row["t_std_s"] = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    meters = sorted(n[len("energy_j_"):] for n in rec.datasets if n.startswith("energy_j_"))
    e_med = {
        m: float(np.median(np.atleast_1d(rec.datasets[f"energy_j_{m}"]).astype(float)))
        for m in meters
    }
    for m, v in e_med.items():
        row[f"e_median_j_{m}"] = v
    iters = int(a.get("iters_per_rep") or 1)
    kind = a.get("kind")
    if kind in ("linear", "membw", "gemm"):
        row["t_call_s"] = row["t_median_s"] / iters
        for m, v in e_med.items():
            row[f"e_call_j_{m}"] = v / iters
        if kind == "membw" and a.get("bytes_per_iter"):
            row["bandwidth_bytes_per_s"] = float(a["bytes_per_iter"]) / row["t_call_s"]
        if kind == "gemm" and a.get("flops_per_iter"):
            row["flops_per_s"] = float(a["flops_per_iter"]) / row["t_call_s"]
    elif kind == "decode":
        k = int(a["new_tokens"])
        p_iters = int(a.get("prefill_iters_per_rep") or 1)
        t_gen = row["t_median_s"] / iters
        t_pre = float(np.median(np.atleast_1d(rec.datasets["prefill_s"]).astype(float))) / p_iters
        row["t_generate_s"] = t_gen
        row["t_prefill_s"] = t_pre
        row["t_step_s"] = (t_gen - t_pre) / (k - 1)
        for m, v in e_med.items():
            name = f"prefill_energy_j_{m}"
            if name in rec.datasets:
                e_pre = float(np.median(np.atleast_1d(rec.datasets[name]).astype(float))) / p_iters
                row[f"e_prefill_j_{m}"] = e_pre
                row[f"e_step_j_{m}"] = (v / iters - e_pre) / (k - 1)
        if "peak_memory_bytes" in rec.datasets:
            row["peak_memory_bytes"] = int(np.max(rec.datasets["peak_memory_bytes"]))
    elif kind == "idle":
        for m, v in e_med.items():
            row[f"p_idle_w_{m}"] = v / row["t_median_s"] if row["t_median_s"] > 0 else math.nan
    if kind in ("power_state", "membw", "gemm", "idle"):
        row.update(window_power_summary(rec, meters))
    return row


def window_power_summary(rec: PointRecord, meters: list[str]) -> dict[str, float]:
    """Per-window average power and work rates of a point, summarised over its windows:
    ``p_mean_w_<meter>`` and ``p_sem_w_<meter>`` (mean of E_i / d_i, W, and its standard error,
    NaN from one window), and for ``power_state`` points ``bytes_per_s``, ``flops_per_s`` and
    ``launches_per_s`` (mean of steps_i x per-step amount / d_i), the mean clocks and
    temperature sampled in the windows (``*_mean``) and every clock event reason seen in any
    window (``clock_event_reasons_any``, a bitmask; -1 when unreadable)."""
    d = np.atleast_1d(np.asarray(rec.datasets["duration_s"], dtype=float))
    out: dict[str, float] = {}

    def mean_sem(x):
        sem = float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
        return float(np.mean(x)), sem

    for m in meters:
        p = np.atleast_1d(np.asarray(rec.datasets[f"energy_j_{m}"], dtype=float)) / d
        out[f"p_mean_w_{m}"], out[f"p_sem_w_{m}"] = mean_sem(p)
    steps = rec.datasets.get("steps")
    if rec.attrs.get("kind") == "power_state" and steps is not None:
        steps = np.atleast_1d(np.asarray(steps, dtype=float))
        for per, name in (("bytes_per_step", "bytes_per_s"), ("flops_per_step", "flops_per_s"),
                          ("launches_per_step", "launches_per_s")):
            out[name] = float(np.mean(steps * float(rec.attrs.get(per) or 0.0) / d))
        for name in ("sm_clock_mhz", "mem_clock_mhz", "temperature_c"):
            x = np.asarray(rec.datasets.get(name, np.array([math.nan])), dtype=float)
            out[f"{name}_mean"] = float(np.nanmean(x)) if np.isfinite(x).any() else math.nan
        reasons = np.asarray(rec.datasets.get("clock_event_reasons", np.array([])), dtype=float)
        reasons = reasons[np.isfinite(reasons)].astype(np.int64)
        out["clock_event_reasons_any"] = int(np.bitwise_or.reduce(reasons)) if reasons.size else -1
    return out
