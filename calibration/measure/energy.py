"""Energy meters and the measurement window that composes them.

A window (Zeus-style ``begin_window(key)`` / ``end_window(key)``) returns a frozen
:class:`Measurement`: its duration in seconds, the energy each meter saw in joules, the power
samples the poller took, and every exclusion a sanity check raised. Meters, each labelled:

- ``nvml_counter`` - NVML total-energy counter (mJ since driver load, Volta and newer).
- ``nvml_poll``    - NVML power polled every ~15 ms in a background thread, trapezoid-integrated.
- ``rapl``         - Intel RAPL package counters (/sys/class/powercap/intel-rapl:N/energy_uj).
- ``hli``          - the paper's Hardware-Latency Integration, E = P_TDP x duration (sec. III).

Sanity checks are named functions (``check_*``); a meter whose reading fails one is left out of
``Measurement.energy_j`` and the reason is listed in ``Measurement.exclusions``: never silent.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from qtsim.errors import MeasurementError

NVML_COUNTER_UPDATE_S = 0.1  # the total-energy counter updates about every 100 ms or faster
POWER_CEILING_FACTOR = 1.5  # average power above 1.5 x TDP is implausible
CPU_TDP_W_PER_LOGICAL_CORE = 7.5  # assumption for the CPU HLI anchor when no TDP is given



@dataclass(frozen=True)
class Measurement:
    """One window: ``duration_s``; ``energy_j`` meter -> joules (only readings that passed
    their checks); ``power_samples`` (n, 2) array of (t_s since window start, W) or None;
    ``exclusions`` (why a meter's reading was left out); ``notes`` (corrections applied)."""

    duration_s: float
    energy_j: dict[str, float]
    power_samples: np.ndarray | None = None
    exclusions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def average_power_w(self, meter: str) -> float | None:
        """Mean power over the window seen by ``meter`` (W), None if it has no reading."""
        e = self.energy_j.get(meter)
        return None if e is None or self.duration_s <= 0 else e / self.duration_s


@dataclass(frozen=True)
class MeterReading:
    """A meter's verdict on one window: joules or None, exclusions, notes, samples."""

    energy_j: float | None
    exclusions: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    samples: np.ndarray | None = None


# -- named sanity checks ------------------------------------------------------------------------
def check_finite_nonnegative(meter: str, energy_j: float) -> str | None:
    """Negative or NaN energy is a broken reading."""
    if energy_j is None or not math.isfinite(energy_j):
        return f"{meter}: reading is NaN or infinite"
    if energy_j < 0:
        return f"{meter}: negative energy {energy_j:.6g} J"
    return None


def check_counter_advanced(meter: str, delta: float) -> str | None:
    """A counter that did not move over a busy window is stale (or wrapped back to start)."""
    if delta == 0:
        return f"{meter}: counter did not advance"
    if delta < 0:
        return f"{meter}: counter went backwards by {-delta:.6g} (wrap or reset)"
    return None


def check_power_plausible(meter: str, energy_j: float, duration_s: float,
                          tdp_w: float | None) -> str | None:
    """Average power below 0 or above 1.5 x TDP cannot be real."""
    if duration_s <= 0:
        return f"{meter}: window duration {duration_s:.6g} s is not positive"
    avg_w = energy_j / duration_s
    if avg_w < 0:
        return f"{meter}: average power {avg_w:.4g} W is negative"
    if tdp_w and avg_w > POWER_CEILING_FACTOR * tdp_w:
        return (f"{meter}: average power {avg_w:.4g} W exceeds {POWER_CEILING_FACTOR} x TDP "
                f"({tdp_w:.4g} W)")
    return None


def check_window_long_enough(meter: str, duration_s: float, min_s: float) -> str | None:
    """A window shorter than the counter's update period cannot be resolved by it."""
    if duration_s < min_s:
        return f"{meter}: window {duration_s * 1e3:.1f} ms is below the counter's ~{min_s * 1e3:.0f} ms update"
    return None


def _verdict(meter: str, energy_j: float, duration_s: float, tdp_w: float | None,
             extra: tuple[str | None, ...] = (), notes: tuple[str, ...] = (),
             samples: np.ndarray | None = None) -> MeterReading:
    problems = [p for p in extra if p]
    for p in (check_finite_nonnegative(meter, energy_j),):
        if p:
            problems.append(p)
    if not problems:
        p = check_power_plausible(meter, energy_j, duration_s, tdp_w)
        if p:
            problems.append(p)
    if problems:
        return MeterReading(None, tuple(problems), notes, samples)
    return MeterReading(float(energy_j), (), notes, samples)


# -- meters ---------------------------------------------------------------------------------------
class Meter(ABC):
    """One energy source. ``start()`` returns opaque state; ``stop(state, duration_s)`` judges."""

    name: str = "meter"

    def available(self) -> bool:
        return True

    @abstractmethod
    def start(self) -> Any: ...

    @abstractmethod
    def stop(self, state: Any, duration_s: float) -> MeterReading: ...

    def abort(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Forget a window that will never be stopped (its work raised); release what
        :meth:`start` took."""

    def close(self) -> None:  # noqa: B027 - optional hook, most meters hold nothing
        """Release background resources (threads)."""


class HliMeter(Meter):
    """Hardware-Latency Integration (paper, sec. III): E = P_TDP x duration, in joules.

    It treats the device as drawing its rated power for the whole window; ``assumption``
    says where ``tdp_w`` came from.
    """

    name = "hli"

    def __init__(self, tdp_w: float, assumption: str = "tdp given by the user"):
        if not tdp_w or tdp_w <= 0:
            raise MeasurementError(f"HLI needs a positive TDP in watts, got {tdp_w!r}")
        self.tdp_w = float(tdp_w)
        self.assumption = assumption

    def start(self) -> None:
        return None

    def stop(self, state: None, duration_s: float) -> MeterReading:
        energy = self.tdp_w * duration_s
        problems = (check_finite_nonnegative(self.name, energy),)
        if any(problems):
            return MeterReading(None, tuple(p for p in problems if p))
        return MeterReading(energy)


class RaplMeter(Meter):
    """Intel RAPL package energy, summed over top-level zones (intel-rapl:N, not subzones).

    Counters are in microjoules and wrap at ``max_energy_range_uj``; one wrap per window is
    corrected and noted. Reading usually needs root.
    """

    name = "rapl"

    def __init__(self, root: str = "/sys/class/powercap", tdp_w: float | None = None):
        self.root = root
        self.tdp_w = tdp_w
        self.zones = sorted(
            z for z in glob.glob(os.path.join(root, "intel-rapl:*"))
            if os.path.basename(z).count(":") == 1
        )

    def _read(self, zone: str, leaf: str) -> int:
        with open(os.path.join(zone, leaf), encoding="ascii") as f:
            return int(f.read().strip())

    def available(self) -> bool:
        return rapl_status(self.root)[0]

    def start(self) -> dict[str, int]:
        return {z: self._read(z, "energy_uj") for z in self.zones}

    def stop(self, state: dict[str, int], duration_s: float) -> MeterReading:
        total_uj = 0
        notes = []
        problems: list[str | None] = []
        for z, before in state.items():
            after = self._read(z, "energy_uj")
            delta = after - before
            if delta < 0:
                try:
                    max_uj = self._read(z, "max_energy_range_uj")
                except (OSError, ValueError):
                    max_uj = 0
                if max_uj > 0:
                    delta += max_uj
                    notes.append(f"rapl: {os.path.basename(z)} wrapped once; corrected with "
                                 f"max_energy_range_uj={max_uj}")
                else:
                    problems.append(check_counter_advanced(self.name, delta))
            total_uj += delta
        if total_uj == 0:
            problems.append(check_counter_advanced(self.name, 0))
        return _verdict(self.name, total_uj / 1e6, duration_s, self.tdp_w, tuple(problems),
                        tuple(notes))


def rapl_power_limit_w(root: str = "/sys/class/powercap") -> float | None:
    """The package power limit RAPL enforces over the long term (PL1,
    ``constraint_0_power_limit_uw``, summed over package zones), W: a CPU's analogue of NVML's
    enforced power limit. None where absent or unreadable."""
    meter = RaplMeter(root)
    try:
        total = sum(meter._read(z, "constraint_0_power_limit_uw") for z in meter.zones)
    except (OSError, ValueError):
        return None
    return total / 1e6 if total > 0 else None


def rapl_status(root: str = "/sys/class/powercap") -> tuple[bool, str]:
    """Whether this machine's RAPL package counters can be read, and a line saying so: absent
    (no ``intel-rapl:N`` zone under ``root``: common in virtual machines), unreadable (reading
    ``energy_uj`` needs root on most kernels) or readable (how many package zones)."""
    meter = RaplMeter(root)
    if not meter.zones:
        return False, f"RAPL absent ({root} has no intel-rapl package zone)"
    try:
        for z in meter.zones:
            meter._read(z, "energy_uj")
    except (OSError, ValueError) as exc:
        return False, f"RAPL unreadable ({_first_line(exc)})"
    return True, f"RAPL readable ({len(meter.zones)} package zone(s) under {root})"


class NvmlEnergyCounter(Meter):
    """NVML total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ), Volta+."""

    name = "nvml_counter"

    def __init__(self, gpu, tdp_w: float | None = None,
                 update_period_s: float = NVML_COUNTER_UPDATE_S):
        self.gpu = gpu
        self.tdp_w = tdp_w
        self.update_period_s = update_period_s

    def available(self) -> bool:
        return self.gpu is not None and self.gpu.supports_energy_counter()

    def start(self) -> int:
        return self.gpu.total_energy_mj()

    def stop(self, state: int, duration_s: float) -> MeterReading:
        delta_mj = self.gpu.total_energy_mj() - state
        problems = (
            check_counter_advanced(self.name, delta_mj),
            check_window_long_enough(self.name, duration_s, self.update_period_s),
        )
        return _verdict(self.name, delta_mj / 1e3, duration_s, self.tdp_w, problems)


class NvmlPowerPoller(Meter):
    """NVML board power (mW) sampled every ``interval_s`` in a background thread.

    Energy is the trapezoid integral of the samples over the window; one sample is taken
    synchronously at each window edge so the integral spans the whole window. ``samples`` in
    the reading are (t_s since window start, W).
    """

    name = "nvml_poll"

    def __init__(self, gpu, interval_s: float = 0.015, tdp_w: float | None = None):
        self.gpu = gpu
        self.interval_s = interval_s
        self.tdp_w = tdp_w
        self._samples: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self._open = 0
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None

    def available(self) -> bool:
        if self.gpu is None:
            return False
        try:
            self.gpu.power_mw()
            return True
        except Exception:  # noqa: BLE001
            return False

    def _sample(self) -> None:
        t = time.perf_counter()
        w = self.gpu.power_mw() / 1e3
        with self._lock:
            self._samples.append((t, w))

    def _loop(self, stop_evt: threading.Event) -> None:
        while not stop_evt.wait(self.interval_s):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a failed sample shows up as a gap
                pass

    def start(self) -> float:
        t0 = time.perf_counter()
        self._sample()  # raises before anything is taken: the window then has no poll meter
        with self._lock:
            self._open += 1
            start_thread = self._thread is None
            if start_thread:
                # a fresh event per thread: a thread that outlived close()'s join can never
                # be revived by a later start()
                self._stop_evt = threading.Event()
                self._thread = threading.Thread(target=self._loop, args=(self._stop_evt,),
                                                name="qtsim-nvml-poll", daemon=True)
                self._thread.start()
        return t0

    def _release(self) -> None:
        """One window fewer; the thread stops and samples are dropped when none is open."""
        with self._lock:
            self._open = max(0, self._open - 1)
            idle = self._open == 0
            if idle:
                self._samples.clear()
        if idle:
            self.close()

    def stop(self, state: float, duration_s: float) -> MeterReading:
        try:
            self._sample()  # the closing edge; the thread's samples cover a failure here
        except Exception:  # noqa: BLE001
            pass
        t1 = time.perf_counter()
        with self._lock:
            window = [(t - state, w) for t, w in self._samples if state <= t <= t1]
        self._release()
        samples = np.asarray(window, dtype=float).reshape(-1, 2)
        if len(samples) < 2:
            return MeterReading(None, (f"{self.name}: fewer than 2 power samples",),
                                samples=samples)
        energy_j = float(np.trapezoid(samples[:, 1], samples[:, 0]))
        span_s = float(samples[-1, 0] - samples[0, 0])
        notes: tuple[str, ...] = ()
        source = getattr(self.gpu, "power_source", None)
        if source:
            notes += (f"{self.name}: power from {source}",)
        if span_s > 0 and abs(span_s - duration_s) > 0.1 * duration_s:
            notes += (f"{self.name}: samples span {span_s:.4g} s of a {duration_s:.4g} s window",)
        return _verdict(self.name, energy_j, duration_s, self.tdp_w, notes=notes,
                        samples=samples)

    def abort(self, state: float) -> None:
        self._release()

    def close(self) -> None:
        thread = self._thread
        if thread is not None:
            self._stop_evt.set()
            thread.join(timeout=1.0)
            self._thread = None


# -- TDP anchors --------------------------------------------------------------------------------
def cpu_tdp_w(tdp_w: float | None = None, logical_cores: int | None = None) -> tuple[float, str]:
    """The CPU's HLI anchor in W and the labelled assumption behind it."""
    if tdp_w is not None:
        return float(tdp_w), f"cpu TDP {float(tdp_w):g} W given by the user"
    cores = logical_cores or os.cpu_count() or 1
    tdp = CPU_TDP_W_PER_LOGICAL_CORE * cores
    return tdp, (f"ASSUMED cpu TDP {tdp:g} W = {CPU_TDP_W_PER_LOGICAL_CORE:g} W x {cores} "
                 "logical cores (no TDP given; pass one to replace this assumption)")


def spec_tdp_w(hardware: str) -> float | None:
    """The datasheet TDP (W) for ``hardware`` from qtsim's shipped gpu_specs.csv, or None."""
    try:
        text = resources.files("qtsim.data.reference").joinpath("gpu_specs.csv").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    for row in csv.DictReader(text.splitlines()):
        if row.get("gpu") == hardware and row.get("tdp_w"):
            return float(row["tdp_w"])
    return None


def gpu_tdp_w(device, tdp_w: float | None = None) -> tuple[float | None, str]:
    """The GPU's HLI anchor in W (user > datasheet > NVML default power limit) and its label."""
    if tdp_w is not None:
        return float(tdp_w), f"gpu TDP {float(tdp_w):g} W given by the user"
    spec = spec_tdp_w(device.name)
    if spec is not None:
        return spec, f"gpu TDP {spec:g} W from the {device.name} datasheet (gpu_specs.csv)"
    nvml_w = device.tdp_w()
    if nvml_w:
        return nvml_w, f"gpu TDP {nvml_w:g} W from NVML's default power limit"
    return None, "no TDP known for this GPU: HLI unavailable"


# -- the monitor --------------------------------------------------------------------------------
class EnergyMonitor:
    """All available meters for ``device``, measured together in keyed windows.

    CPU: ``rapl`` (where readable) and ``hli`` (TDP assumed unless ``tdp_w`` is given).
    CUDA: ``nvml_counter`` (Volta+), ``nvml_poll``, ``hli``. The device is synchronised before
    and after each window so queued GPU work falls inside it.
    """

    def __init__(self, device, *, tdp_w: float | None = None, poll_interval_s: float = 0.015,
                 meters: list[Meter] | None = None, rapl_root: str = "/sys/class/powercap"):
        self.device = device
        self.assumptions: list[str] = []
        if device.backend == "cpu":
            self.tdp_w, label = cpu_tdp_w(tdp_w)
        else:
            self.tdp_w, label = gpu_tdp_w(device, tdp_w)
        self.assumptions.append(label)
        if meters is None:
            meters = self._default_meters(poll_interval_s, rapl_root)
        self.meters: list[Meter] = meters
        self._open: dict[str, tuple[float, dict[str, Any]]] = {}

    def _default_meters(self, poll_interval_s: float, rapl_root: str) -> list[Meter]:
        candidates: list[Meter] = []
        if self.device.backend == "cpu":
            candidates.append(RaplMeter(rapl_root, tdp_w=self.tdp_w))
        else:
            gpu = self.device.nvml()
            if gpu is not None:
                candidates.append(NvmlEnergyCounter(gpu, tdp_w=self.tdp_w))
                candidates.append(NvmlPowerPoller(gpu, poll_interval_s, tdp_w=self.tdp_w))
            else:
                why = getattr(self.device, "nvml_error", None)
                self.assumptions.append("NVML unavailable" + (f" ({why})" if why else "")
                                        + ": no nvml_counter / nvml_poll meters")
        if self.tdp_w:
            candidates.append(HliMeter(self.tdp_w, self.assumptions[0]))
        return [m for m in candidates if m.available()]

    @property
    def meter_names(self) -> list[str]:
        return [m.name for m in self.meters]

    @property
    def hli_assumption(self) -> str:
        return self.assumptions[0]

    def begin_window(self, key: str, sync: bool = True) -> None:
        """Open window ``key`` (after synchronising the device).

        A meter whose ``start()`` raises (an NVML call failing mid-run) sits the window out;
        the window's :class:`Measurement` lists why in its exclusions.
        """
        if key in self._open:
            raise MeasurementError(f"measurement window {key!r} is already open")
        if sync:
            self.device.synchronize()
        states: dict[str, Any] = {}
        for m in self.meters:
            try:
                states[m.name] = m.start()
            except Exception as exc:  # noqa: BLE001 - recorded as an exclusion at end_window
                states[m.name] = _FailedStart(f"{m.name}: could not start: {_first_line(exc)}")
        self._open[key] = (time.perf_counter(), states)

    def abort_window(self, key: str) -> None:
        """Drop window ``key`` without judging it (the measured work raised, e.g. out of
        memory): the key can be opened again and meters release what the window held.
        Unknown keys are ignored. No device synchronisation (it could raise again)."""
        entry = self._open.pop(key, None)
        if entry is None:
            return
        for m in self.meters:
            state = entry[1].get(m.name)
            if not isinstance(state, _FailedStart):
                try:
                    m.abort(state)
                except Exception:  # noqa: BLE001 - best effort while unwinding
                    pass

    def end_window(self, key: str, sync: bool = True) -> Measurement:
        """Close window ``key`` (after synchronising the device) and judge every meter.

        A meter that could not start, or whose ``stop()`` raises, gives no energy for the
        window and an exclusion saying why; it never loses the other meters' readings.
        """
        if key not in self._open:
            raise MeasurementError(f"measurement window {key!r} was never opened")
        if sync:
            try:
                self.device.synchronize()
            except BaseException:
                self.abort_window(key)
                raise
        t1 = time.perf_counter()
        t0, states = self._open.pop(key)
        duration_s = t1 - t0
        energy: dict[str, float] = {}
        exclusions: list[str] = []
        notes: list[str] = []
        samples = None
        for m in self.meters:
            state = states[m.name]
            if isinstance(state, _FailedStart):
                exclusions.append(state.reason)
                continue
            try:
                r = m.stop(state, duration_s)
            except Exception as exc:  # noqa: BLE001 - a failed read is an exclusion
                exclusions.append(f"{m.name}: reading failed: {_first_line(exc)}")
                continue
            exclusions.extend(r.exclusions)
            notes.extend(r.notes)
            if r.samples is not None:
                samples = r.samples
            if r.energy_j is not None:
                energy[m.name] = r.energy_j
        return Measurement(duration_s, energy, samples, exclusions, notes)

    def close(self) -> None:
        for key in list(self._open):
            self.abort_window(key)
        for m in self.meters:
            m.close()


@dataclass(frozen=True)
class _FailedStart:
    """A meter's window state when its ``start()`` raised."""

    reason: str


def _first_line(exc: BaseException) -> str:
    return ((str(exc).splitlines() or [""])[0] or type(exc).__name__)[:200]


def measure_idle(monitor: EnergyMonitor, seconds: float = 5.0) -> Measurement:
    """A window of ``seconds`` with the device idle: each meter's idle energy (J).

    ``Measurement.average_power_w(meter)`` is the idle power; for ``hli`` it is the TDP by
    construction (HLI cannot see idleness).
    """
    monitor.begin_window("__idle__")
    try:
        time.sleep(seconds)
    except BaseException:
        monitor.abort_window("__idle__")
        raise
    return monitor.end_window("__idle__")
