"""The power states measured directly where a meter exists (issue 19; the model they feed is
:mod:`qtsim.model.power`, whose constants :mod:`qtsim.calibration.fit.power_fit` derives from these
windows).

Each state is held for ``reps`` windows of ``window_s`` seconds (5 s by default: about 50
updates of NVML's total-energy counter), after ``warmup_s`` in the state, the device
synchronised before and after every window (:class:`~qtsim.calibration.measure.energy.EnergyMonitor`,
whose meters are the NVML counter, NVML power polling where the counter does not answer, RAPL on
a CPU, and the HLI estimate beside them):

- ``deep_idle`` -> ``p_idle_w``: no CUDA context in this process (NVML only), measured by
  :func:`measure_deep_idle` before ``qtsim calibrate`` touches CUDA; another process holding a
  context on the GPU is recorded as an exclusion. On a CPU: the package with this process asleep.
- ``awake`` -> ``p_awake_w``: the context open and one tiny kernel launched every ``h_op_s`` of
  the default host part (HF eager's rate per operation), a busy-wait between launches, so the
  device mostly waits with its clocks up, as between a host-bound decode's kernels. On a CPU the
  same loop is one thread spinning lightly.
- ``stream`` -> ``e_byte_j``: ``dst.copy_(src)`` back to back, 2 x size bytes per copy.
- ``gemm`` -> ``e_flop_j``: a 16-bit square matmul back to back, 2 n^3 FLOPs and at least
  3 n^2 elements of memory traffic per call.
- the enforced power limit (``nvmlDeviceGetEnforcedPowerLimit``) -> ``p_cap_w``.

Every window stores its energy per meter, the work it ran (``steps``) and the conditions sampled
halfway through it (clocks, temperature, clock event reasons, power limit); every point stores
the counter's update period as measured on this GPU. torch loads inside the functions.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtsim.calibration.measure.conditions import environment_attrs
from qtsim.calibration.measure.device import NvmlOnlyDevice
from qtsim.calibration.measure.energy import EnergyMonitor
from qtsim.calibration.measure.nvml import visible_gpu
from qtsim.calibration.measure.raw import PointResult, make_point_id, now_iso
from qtsim.calibration.probes.bench import measurements_to_datasets, release_memory, skip_on_oom
from qtsim.errors import MeasurementError, QtsimError
from qtsim.profiles.gpus import ANY_CUDA, accepted_names, normalise_gpu_name
from qtsim.profiles.hosts import DEFAULT_HOST, load_host

STATES = ("deep_idle", "awake", "stream", "gemm")
DEFAULT_WINDOW_S = 5.0
DEFAULT_REPS = 3
DEFAULT_WARMUP_S = 1.0
#: what each window samples halfway through (NaN where unreadable)
CONDITIONS = ("sm_clock_mhz", "mem_clock_mhz", "temperature_c", "clock_event_reasons",
              "power_limit_w")
IDLE_TICK_S = 0.05  # a deep-idle "step": the host wakes 20 times a second to check the clock


def gemm_traffic_bytes(n: int, element_bytes: int = 2) -> float:
    """Memory a square ``n x n`` GEMM must move at least: read A and B, write C, bytes."""
    return 3.0 * n * n * element_bytes


@dataclass
class StateLoad:
    """The work that holds a device in one state: ``step()`` runs one unit of it, which moves
    ``bytes_per_step`` bytes, does ``flops_per_step`` FLOPs and launches ``launches_per_step``
    kernels; ``attrs`` are recorded with the point."""

    step: Callable[[], Any]
    bytes_per_step: float = 0.0
    flops_per_step: float = 0.0
    launches_per_step: float = 0.0
    attrs: dict = field(default_factory=dict)


def launch_interval_s() -> tuple[float, str]:
    """HF eager's host time per operation (s), and where it comes from: the default host
    part's ``h_op_s``."""
    p = load_host(DEFAULT_HOST).physical["h_op_s"]
    return p.value, f"h_op_s of the default host part {DEFAULT_HOST} ({p.source}: {p.basis})"


def state_load(spec: PowerStateSpec, device) -> StateLoad:
    """The :class:`StateLoad` for ``spec.state`` on ``device`` (tensors allocated here)."""
    if spec.state == "deep_idle":
        return StateLoad(lambda: time.sleep(IDLE_TICK_S), attrs={"idle_tick_s": IDLE_TICK_S})
    import torch

    dev = device.torch_device
    if spec.state == "awake":
        interval, basis = launch_interval_s()
        x = torch.zeros(1, device=dev)

        def wait_for_host():
            t0 = time.perf_counter()
            x.add_(1.0)
            while time.perf_counter() - t0 < interval:
                pass

        return StateLoad(wait_for_host, launches_per_step=1.0,
                         attrs={"launch_interval_s": interval, "launch_interval_basis": basis})
    if spec.state == "stream":
        n = spec.stream_bytes(device) // 4
        src = torch.ones(n, dtype=torch.float32, device=dev)
        dst = torch.empty_like(src)
        return StateLoad(lambda: dst.copy_(src), bytes_per_step=2.0 * n * 4,
                         launches_per_step=1.0, attrs={"size_bytes": n * 4})
    n, precision = spec.gemm_size(device)
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=dev).to(dt)
    b = torch.randn(n, n, generator=gen, device=dev).to(dt)
    out = torch.empty(n, n, device=dev, dtype=dt)
    return StateLoad(lambda: torch.mm(a, b, out=out), bytes_per_step=gemm_traffic_bytes(n),
                     flops_per_step=2.0 * n**3, launches_per_step=1.0,
                     attrs={"in_features": n, "precision": precision})


def _hold(step: Callable[[], Any], seconds: float, sample=None) -> tuple[int, dict | None]:
    """Run ``step`` back to back for ``seconds``; (steps run, ``sample()`` taken halfway)."""
    t0 = time.perf_counter()
    half, end = t0 + seconds / 2, t0 + seconds
    n, cond = 0, None
    while True:
        step()
        n += 1
        t = time.perf_counter()
        if sample is not None and cond is None and t >= half:
            cond = sample()
        if t >= end:  # past the end is past halfway: the sample is taken
            return n, cond


def _nvml_of(device):
    nvml = getattr(device, "nvml", None)
    return nvml() if callable(nvml) else None


def _sampler(device, gpu) -> Callable[[], dict]:
    """Conditions inside a window: NVML's on a GPU, the CPU's clock from describe() else."""
    if gpu is not None:
        return gpu.window_conditions
    return lambda: {k: device.describe().get(k) for k in CONDITIONS}


def run_windows(load: StateLoad, monitor, sample, window_s: float, reps: int, key: str):
    """``reps`` windows of ``window_s`` holding ``load``: (measurements, steps, conditions)."""
    ms, steps, conds = [], [], []
    for r in range(reps):
        k = f"{key}#{r}"
        monitor.begin_window(k)
        try:
            n, cond = _hold(load.step, window_s, sample)
        except BaseException:
            monitor.abort_window(k)
            raise
        ms.append(monitor.end_window(k))
        steps.append(n)
        conds.append(cond or {})
    return ms, steps, conds


def premise_violation(state: str, device, gpu) -> str | None:
    """Why a window cannot be the state it claims, or None: a deep-idle window on a GPU needs
    no CUDA context in this process and none in another one."""
    if state != "deep_idle" or device.backend != "cuda":
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "deep idle: a CUDA context is already open in this process"
    others = gpu.compute_processes() if gpu is not None else None
    if others:
        return f"deep idle: {others} other process(es) hold a CUDA context on this GPU"
    return None


def _counter_period(gpu, monitor, probe_s: float) -> tuple[float | None, str]:
    """The NVML counter's update period measured here (s) and how it was obtained."""
    if gpu is None or "nvml_counter" not in monitor.meter_names:
        return None, "no NVML energy counter"
    period = gpu.counter_update_period_s(probe_s)
    reads = f"{probe_s:.3g} s of back-to-back reads"
    if period is None:
        return None, f"counter changed fewer than 3 times in {reads}"
    return period, f"median time between changes of the counter over {reads}"


def _window_datasets(ms, steps, conds) -> tuple[dict, list[str], list[str]]:
    datasets, excl, notes = measurements_to_datasets(ms)
    datasets["steps"] = np.asarray(steps, dtype=float)
    for k in CONDITIONS:
        datasets[k] = np.array([math.nan if c.get(k) is None else float(c[k]) for c in conds])
    return datasets, excl, notes


def measure_power_state(spec: PowerStateSpec, device, monitor,
                        purpose: str = "calibration") -> PointResult:
    """Hold ``device`` in ``spec.state`` for ``spec.reps`` windows of ``spec.window_s`` and
    return the point (kind ``power_state``); out of memory becomes a skipped point."""
    gpu = _nvml_of(device)
    attrs = spec.base_attrs_for(device, monitor, purpose)
    premise = premise_violation(spec.state, device, gpu)
    period, period_basis = _counter_period(gpu, monitor, min(0.5, spec.window_s / 10))
    try:
        load = state_load(spec, device)
        _hold(load.step, spec.warmup_s)
        ms, steps, conds = run_windows(load, monitor, _sampler(device, gpu), spec.window_s,
                                       spec.reps, f"power-{spec.state}")
    except Exception as exc:
        load = None
        return skip_on_oom(exc, device, attrs, f"power state {spec.state}")
    datasets, excl, notes = _window_datasets(ms, steps, conds)
    attrs.update(bytes_per_step=load.bytes_per_step, flops_per_step=load.flops_per_step,
                 launches_per_step=load.launches_per_step, **load.attrs,
                 counter_period_s=period, counter_period_basis=period_basis,
                 state_exclusion=premise, exclusions=excl, notes=notes, status="ok",
                 finished=now_iso())
    load = None
    if spec.state in ("stream", "gemm"):
        release_memory(device)
    return PointResult(attrs, datasets)


@dataclass(frozen=True)
class PowerStateSpec:
    """One power state held for ``reps`` windows of ``window_s`` (a plan point; see the
    module docstring). ``size_bytes`` (stream) and ``n``/``precision`` (gemm) default to 1 GiB
    and 8192 fp16 on a GPU, 256 MiB and 1024 bf16 on a CPU."""

    state: str
    window_s: float = DEFAULT_WINDOW_S
    reps: int = DEFAULT_REPS
    warmup_s: float = DEFAULT_WARMUP_S
    size_bytes: int | None = None
    n: int | None = None
    precision: str | None = None

    def __post_init__(self):
        if self.state not in STATES:
            raise QtsimError(f"unknown power state {self.state!r} (one of {', '.join(STATES)})")
        if not (self.window_s > 0 and math.isfinite(self.window_s)) or self.warmup_s < 0:
            raise QtsimError(f"power-state window must be > 0 s, got {self.window_s!r}")
        if self.reps < 2:
            raise QtsimError(f"power states need >= 2 windows (their spread is the stderr), "
                             f"got {self.reps}")

    def point_id(self) -> str:
        return make_point_id("power_state", self.state, f"{self.window_s:g}s")

    def stream_bytes(self, device) -> int:
        return self.size_bytes or ((256 << 20) if device.backend == "cpu" else (1 << 30))

    def gemm_size(self, device) -> tuple[int, str]:
        cpu = device.backend == "cpu"
        return self.n or (1024 if cpu else 8192), self.precision or ("bf16" if cpu else "fp16")

    def base_attrs_for(self, device, monitor, purpose: str = "calibration") -> dict[str, Any]:
        return {**environment_attrs(device, monitor, purpose), "kind": "power_state",
                "state": self.state, "window_s": self.window_s, "reps": self.reps,
                "warmup_s": self.warmup_s, "started": now_iso()}

    def base_attrs(self, ctx) -> dict[str, Any]:
        return self.base_attrs_for(ctx.device, ctx.monitor, ctx.purpose)

    def run(self, ctx) -> PointResult:
        return measure_power_state(self, ctx.device, ctx.monitor, ctx.purpose)

    def estimate_s(self, device) -> float:
        build = 2.0 if self.state in ("stream", "gemm") and device.backend == "cuda" else 0.2
        return self.warmup_s + self.reps * self.window_s + 0.5 + build


def power_state_plan(device, window_s: float = DEFAULT_WINDOW_S, reps: int = DEFAULT_REPS,
                     warmup_s: float = DEFAULT_WARMUP_S) -> list[PowerStateSpec]:
    """The power-state points of a calibration plan: on a GPU awake, stream and gemm (deep idle
    comes first, before any CUDA context: :func:`measure_deep_idle`); on a CPU deep idle and
    awake (its e_byte_j and e_flop_j come from the bandwidth and GEMM probes)."""
    states = ("deep_idle", "awake") if device.backend == "cpu" else ("awake", "stream", "gemm")
    return [PowerStateSpec(s, window_s, reps, warmup_s) for s in states]


def _check_requested(gpu, requested: str, cuda_index: int) -> str:
    """qtsim's name of the NVML device, refused (one line) unless it is the ``--gpu`` asked."""
    nvml_name = gpu.info().get("nvml_name") or ""
    name = normalise_gpu_name(nvml_name)
    req = requested.strip().lower()
    if req not in ANY_CUDA and name not in accepted_names(req):
        raise QtsimError(f"--gpu {requested} requested but NVML shows {nvml_name!r} ({name}) "
                         f"as CUDA device {cuda_index}; use --gpu {name}")
    return name


def deep_idle_device(requested: str, cuda_index: int = 0, log=print):
    """The GPU ``cuda:<cuda_index>`` as an :class:`~qtsim.calibration.measure.device.NvmlOnlyDevice`
    (NVML alone, no CUDA context), or None when NVML is unusable (said on ``log``: the
    calibration then goes on without a deep-idle point). Refused (one line) unless it is the
    ``--gpu`` asked for."""
    try:
        gpu = visible_gpu(cuda_index)
    except MeasurementError as exc:
        log(f"deep idle not measured: {exc}")
        return None
    return NvmlOnlyDevice(name=_check_requested(gpu, requested, cuda_index), gpu=gpu)


def measure_deep_idle(store, device, *, window_s: float = DEFAULT_WINDOW_S,
                      reps: int = DEFAULT_REPS, warmup_s: float = DEFAULT_WARMUP_S,
                      log=print) -> bool:
    """The deep-idle point of a GPU calibration on ``device`` (:func:`deep_idle_device`),
    measured before this process opens a CUDA context and appended to ``store`` (a
    :class:`~qtsim.calibration.measure.raw.RawStore`); already stored (a resumed run): nothing is
    measured. True when measured."""
    spec = PowerStateSpec("deep_idle", window_s, reps, warmup_s)
    if store.has(spec.point_id()):
        log(f"deep idle: {spec.point_id()} already stored")
        return False
    monitor = EnergyMonitor(device)
    log(f"deep idle: {reps} x {window_s:g} s windows before any CUDA context (NVML only; "
        f"meters: {', '.join(monitor.meter_names)})")
    try:
        result = measure_power_state(spec, device, monitor)
    finally:
        monitor.close()
    store.append(spec.point_id(), result.attrs, result.datasets)
    return True
