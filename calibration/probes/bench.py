"""Microbenchmarks on the real device: memory bandwidth, 16-bit GEMM, and one linear layer per
bitsandbytes kernel path.

Each probe repeats its call back to back inside a measurement window at least
``min_window_s`` long (0.2 s on CPU, 1.0 s on CUDA so the NVML counter resolves it), ``reps``
windows after a warm-up, and returns a :class:`~qtsim.calibration.measure.raw.PointResult` ready for
:meth:`RawStore.append`. Out of memory becomes a skipped point with its reason.

Kernel path names (the fitter keys on them):

=========  ==================================================================================
fp16       torch Linear, float16
bf16       torch Linear, bfloat16
int8       bnb Linear8bitLt, has_fp16_weights=False, threshold=6.0 (LLM.int8() default)
int8_t0    as int8, threshold=0.0 (no outlier decomposition)
nf4_b1     bnb Linear4bit nf4, compress_statistics=False, batch 1 (fused 4-bit GEMV)
nf4_bn     the same layer at batch >= 2 (dequantise + GEMM, or fused 4-bit GEMM on 0.50+)
nf4dq_b1   nf4 with double quantisation (compress_statistics=True), batch 1
nf4dq_bn   the same at batch >= 2
fp4_b1/bn  4-bit float (quant_type fp4); fp4dq_b1/bn with double quantisation
=========  ==================================================================================

(the vocabulary itself: :mod:`qtsim.model.paths`, whose ``PATHS`` these are)

4-bit compute dtype is bfloat16 on CPU and float16 on CUDA. torch loads inside functions.
"""

from __future__ import annotations

import copy
import gc
import glob
import itertools
import math
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from qtsim.calibration.measure.conditions import environment_attrs
from qtsim.calibration.measure.energy import EnergyMonitor, Measurement
from qtsim.calibration.measure.raw import PointResult, make_point_id, now_iso
from qtsim.errors import QtsimError
from qtsim.model import paths
from qtsim.model.paths import DEFAULT_INT8_THRESHOLD as DEFAULT_THRESHOLD

OUTLIER_N_DIMS = 8
OUTLIER_SCALE = 20.0
SPREAD_LIMIT = 1.3  # longest/shortest window above this triggers extra windows


def default_min_window_s(device) -> float:
    """Shortest measurement window: 0.2 s on CPU, 1.0 s on CUDA (NVML counter ~100 ms)."""
    return 0.2 if device.backend == "cpu" else 1.0


# -- kernel paths ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearPath:
    """What a kernel path name means."""

    name: str
    precision: str  # fp16 | bf16 | int8 | nf4 | fp4
    threshold: float | None = None  # LLM.int8() outlier threshold
    double_quant: bool = False
    batch_class: str | None = None  # "b1" | "bn" for 4-bit paths


def kernel_path(precision: str, batch: int, double_quant: bool = False,
                threshold: float = DEFAULT_THRESHOLD) -> str:
    """The kernel path a (precision, batch) runs: ``kernel_path("nf4", 1)`` -> ``"nf4_b1"``,
    ``kernel_path("int8", 8, threshold=0.0)`` -> ``"int8_t0"``."""
    return paths.path_at(paths.path_family(precision.lower(), double_quant, threshold), batch)


def parse_path(path: str) -> LinearPath:
    """The :class:`LinearPath` for a kernel path name (:data:`qtsim.model.paths.PATHS`);
    QtsimError if unknown."""
    if path not in paths.PATHS:
        raise QtsimError(f"unknown kernel path {path!r} (known: {', '.join(paths.PATHS)})")
    family, side = paths.split_side(path)
    precision, dq = paths.family_precision(family)
    return LinearPath(path, precision, paths.int8_threshold(family), dq, side)


def linear_path(path: str, batch: int) -> LinearPath:
    """The :class:`LinearPath` a linear probe runs: a full path name or a bare 4-bit family
    ("nf4", "nf4dq", "fp4", "fp4dq"), its batch class checked against ``batch``."""
    if path in paths.FOUR_BIT:
        path = paths.path_at(path, batch)
    lp = parse_path(path)
    if lp.batch_class is not None and lp.batch_class != paths.side(batch):
        raise QtsimError(f"kernel path {path!r} does not run at batch {batch}")
    return lp


def compute_dtype_name(device, precision: str) -> str:
    """The activation dtype a precision computes in on ``device``."""
    if precision in ("fp16", "bf16"):
        return precision
    if precision == "int8":
        return "fp16"
    return "bf16" if device.backend == "cpu" else "fp16"


def _torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def quant_attrs(lp: LinearPath, device) -> dict[str, Any]:
    """The bitsandbytes settings of a path, as raw-store attributes."""
    attrs: dict[str, Any] = {
        "precision": lp.precision,
        "compute_dtype": compute_dtype_name(device, lp.precision),
        "llm_int8_threshold": lp.threshold,
        "bnb_4bit_quant_type": lp.precision if lp.precision in ("nf4", "fp4") else None,
        "bnb_4bit_use_double_quant": lp.double_quant if lp.precision in ("nf4", "fp4") else None,
    }
    return attrs


def build_linear(lp: LinearPath, in_features: int, out_features: int, device, seed: int = 0):
    """A bias-free linear layer for path ``lp`` on ``device`` (weights random, N(0, 1/in))."""
    import torch

    # Drawn on the device (fast for large shapes). Layers are constructed on the meta device
    # (no CPU allocation, no kaiming init of a weight that is replaced at once) and take ``w``.
    gen = torch.Generator(device=device.torch_device).manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=gen, device=device.torch_device)
    w = w.div_(math.sqrt(in_features))
    if lp.precision in ("fp16", "bf16"):
        dt = _torch_dtype(lp.precision)
        layer = torch.nn.Linear(in_features, out_features, bias=False, device="meta", dtype=dt)
        layer.weight = torch.nn.Parameter(w.to(dt), requires_grad=False)
        return layer.to(device.torch_device).eval()
    import bitsandbytes as bnb

    if lp.precision == "int8":
        # bitsandbytes quantises Int8Params only when moving them *from the CPU*: an fp16
        # weight already on the GPU would stay unquantised. So this one goes via the CPU.
        layer = bnb.nn.Linear8bitLt(in_features, out_features, bias=False,
                                    has_fp16_weights=False, threshold=lp.threshold,
                                    device="meta")
        layer.weight = bnb.nn.Int8Params(w.half().to("cpu"), requires_grad=False,
                                         has_fp16_weights=False)
        return layer.to(device.torch_device).eval()
    # Params4bit quantises on its first move to a real device, wherever its data lies.
    cdt = _torch_dtype(compute_dtype_name(device, lp.precision))
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=cdt,
                              compress_statistics=lp.double_quant, quant_type=lp.precision,
                              device="meta")
    layer.weight = bnb.nn.Params4bit(w.to(cdt), requires_grad=False, quant_type=lp.precision,
                                     compress_statistics=lp.double_quant)
    return layer.to(device.torch_device).eval()


def weight_storage_bytes(layer) -> int:
    """Bytes the layer's weight occupies, quantisation scales included."""
    import torch

    seen: set[int] = set()
    total = 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for p in layer.parameters():
        add(p)
    w = getattr(layer, "weight", None)
    add(getattr(w, "SCB", None))
    qs = getattr(w, "quant_state", None)
    while qs is not None:
        add(getattr(qs, "absmax", None))
        add(getattr(qs, "code", None))
        add(getattr(qs, "offset", None))
        qs = getattr(qs, "state2", None)
    return int(total)


# -- out of memory --------------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (CUDA or host)."""
    try:
        import torch

        oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                      getattr(torch.cuda, "OutOfMemoryError", None)) if t)
        if oom_types and isinstance(exc, oom_types):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    # cuBLAS/cuSOLVER report a failed workspace allocation as *_STATUS_ALLOC_FAILED
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "status_alloc_failed" in text)


def release_memory(device) -> None:
    """Give cached allocator memory back after a probe (CUDA)."""
    gc.collect()
    if device.backend == "cuda":
        import torch

        torch.cuda.empty_cache()


def oom_reason(exc: BaseException, where: str) -> str:
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    return f"out of memory at {where}: {first}"


def skip_on_oom(exc: BaseException, device, attrs: dict, where: str) -> PointResult:
    """The skipped record for an out-of-memory ``exc`` (memory released); anything else re-raises.

    Use inside ``except Exception as exc:`` so a point that does not fit is stored with its
    reason and the plan goes on.
    """
    if not is_oom(exc):
        raise exc
    reason = oom_reason(exc, where)
    _drop_tracebacks(exc)
    release_memory(device)
    return PointResult.skipped({**attrs, "finished": now_iso()}, reason)


def _drop_tracebacks(exc: BaseException | None) -> None:
    """Unlink the frames an exception (and its context chain) keeps alive: their locals
    hold the tensors that ran out of memory, which empty_cache() cannot return otherwise."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


# -- timing windows -------------------------------------------------------------------------------
def estimate_call_s(fn: Callable[[], Any], device, warmup_s: float, min_batches: int = 5,
                    batch_target_s: float = 0.002) -> float:
    """Warm ``fn`` up for about ``warmup_s`` and return the median seconds per call.

    Calls are timed in batches of at least ``batch_target_s`` (so timer and synchronisation
    overhead stay small) and the median over batches is returned: a virtual CPU that is
    briefly descheduled (several ms stalls are common on shared hosts) must not inflate the
    estimate and so shrink the measurement window.
    """
    fn()
    device.synchronize()
    per_call: list[float] = []
    k = 1
    t_end = time.perf_counter() + warmup_s
    while len(per_call) < min_batches or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        device.synchronize()
        dt = time.perf_counter() - t0
        per_call.append(dt / k)
        if dt < batch_target_s:
            k = min(k * 2, 1 << 16)
        if len(per_call) >= 10_000:
            break
    return max(float(np.median(per_call)), 1e-9)


def iters_for(call_s: float, min_window_s: float, max_iters: int = 1_000_000) -> int:
    """Calls per window so the window lasts at least ``min_window_s``."""
    return int(min(max_iters, max(1, math.ceil(min_window_s / call_s))))


def measure_windows(fn: Callable[[], Any], monitor: EnergyMonitor, iters: int, reps: int,
                    key: str) -> list[Measurement]:
    """``reps`` windows, each calling ``fn`` ``iters`` times back to back."""
    out = []
    for r in range(reps):
        k = f"{key}#{r}"
        monitor.begin_window(k)
        try:
            for _ in range(iters):
                fn()
        except BaseException:
            # out of memory (or an interrupt) mid-window: drop the window, or its key stays
            # open and the next point on this path fails with "already open"
            monitor.abort_window(k)
            raise
        out.append(monitor.end_window(k))
    return out


def measure_windows_adaptive(fn: Callable[[], Any], monitor: EnergyMonitor, iters: int,
                             reps: int, key: str, min_window_s: float,
                             max_rescales: int = 3) -> tuple[int, list[Measurement]]:
    """Like :func:`measure_windows`, but if the first window comes out shorter than half of
    ``min_window_s`` (the call-time estimate was inflated by a stall), it is discarded and
    ``iters`` scaled up, at most ``max_rescales`` times. Returns (iters, windows)."""
    for _ in range(max_rescales):
        first = measure_windows(fn, monitor, iters, 1, key)[0]
        if first.duration_s >= 0.5 * min_window_s or iters >= 1_000_000:
            break
        iters = iters_for(first.duration_s / iters, min_window_s)
    else:
        first = measure_windows(fn, monitor, iters, 1, key)[0]
    return iters, [first, *measure_windows(fn, monitor, iters, reps - 1, key)]


def measurements_to_datasets(ms: list[Measurement], prefix: str = "",
                             duration_name: str = "duration_s"):
    """Datasets (durations, one energy array per meter valid in every window, last window's
    power samples) plus the exclusions and notes to record.

    A meter excluded in any window is left out of the datasets, with the reason listed.
    """
    datasets: dict[str, Any] = {duration_name: np.array([m.duration_s for m in ms], dtype=float)}
    exclusions: list[str] = []
    notes: list[str] = []
    for m in ms:
        exclusions.extend(e for e in m.exclusions if e not in exclusions)
        notes.extend(n for n in m.notes if n not in notes)
    meters = sorted({k for m in ms for k in m.energy_j})
    for meter in meters:
        vals = [m.energy_j.get(meter) for m in ms]
        missing = sum(v is None for v in vals)
        if missing:
            exclusions.append(f"{meter}: left out of {prefix or 'this point'}: excluded in "
                              f"{missing} of {len(ms)} windows")
            continue
        datasets[f"{prefix}energy_j_{meter}"] = np.array(vals, dtype=float)
    if not prefix and ms and ms[-1].power_samples is not None:
        datasets["power_w"] = ms[-1].power_samples
    return datasets, exclusions, notes


def spread_ratio(ms: list[Measurement]) -> float:
    """Longest over shortest window duration."""
    d = [m.duration_s for m in ms]
    return max(d) / min(d) if d and min(d) > 0 else float("inf")


def _window_probe(device, monitor, fn, *, reps, min_window_s, warmup_s, key):
    call_s = estimate_call_s(fn, device, warmup_s)
    iters, ms = measure_windows_adaptive(fn, monitor, iters_for(call_s, min_window_s), reps,
                                         key, min_window_s)
    notes_extra = []
    ratio = spread_ratio(ms)
    if reps >= 2 and ratio > SPREAD_LIMIT:
        # A stalled window (a descheduled virtual CPU can slow a window 2-100x) must not
        # become the median: measure as many windows again and keep them all.
        ms += measure_windows(fn, monitor, iters, reps, key)
        notes_extra.append(f"window spread {ratio:.2f} > {SPREAD_LIMIT}: {reps} extra "
                           f"windows measured")
    datasets, exclusions, notes = measurements_to_datasets(ms)
    notes = notes + notes_extra
    attrs = {"iters_per_rep": iters, "reps": reps, "min_window_s": min_window_s,
             "warmup_s": warmup_s, "estimated_call_s": call_s, "exclusions": exclusions,
             "notes": notes}
    return attrs, datasets


def _prepare(device, monitor, min_window_s, warmup_s):
    monitor = monitor or EnergyMonitor(device)
    min_window_s = default_min_window_s(device) if min_window_s is None else min_window_s
    warmup_s = (0.1 if device.backend == "cpu" else 0.5) if warmup_s is None else warmup_s
    return monitor, min_window_s, warmup_s


# -- probes ---------------------------------------------------------------------------------------
def membw_probe(device, monitor: EnergyMonitor | None = None, *, size_bytes: int | None = None,
                reps: int = 3, min_window_s: float | None = None, warmup_s: float | None = None,
                purpose: str = "calibration") -> PointResult:
    """Device memory bandwidth: ``dst.copy_(src)`` of ``size_bytes`` (256 MiB on CPU, 1 GiB
    on CUDA); each copy moves ``2 * size_bytes`` (read + write), recorded as bytes_per_iter."""
    import torch

    monitor, min_window_s, warmup_s = _prepare(device, monitor, min_window_s, warmup_s)
    size_bytes = size_bytes or ((256 << 20) if device.backend == "cpu" else (1 << 30))
    n = size_bytes // 4
    attrs = {**environment_attrs(device, monitor, purpose), "kind": "membw",
             "precision": "fp32", "size_bytes": n * 4, "bytes_per_iter": 2 * n * 4,
             "started": now_iso()}
    try:
        with torch.inference_mode():
            src = torch.ones(n, dtype=torch.float32, device=device.torch_device)
            dst = torch.empty_like(src)
            extra, datasets = _window_probe(device, monitor, lambda: dst.copy_(src), reps=reps,
                                            min_window_s=min_window_s, warmup_s=warmup_s,
                                            key="membw")
        src = dst = None  # free before release_memory
    except Exception as exc:
        src = dst = None
        return skip_on_oom(exc, device, attrs, f"{size_bytes} bytes")
    release_memory(device)
    return PointResult({**attrs, **extra, "status": "ok", "finished": now_iso()}, datasets)


def gemm_probe(device, monitor: EnergyMonitor | None = None, *, n: int | None = None,
               precision: str | None = None, reps: int = 3, min_window_s: float | None = None,
               warmup_s: float | None = None, purpose: str = "calibration") -> PointResult:
    """16-bit square matmul ``n x n @ n x n`` (1024 on CPU, 8192 on CUDA);
    flops_per_iter = 2 n^3."""
    import torch

    monitor, min_window_s, warmup_s = _prepare(device, monitor, min_window_s, warmup_s)
    n = n or (1024 if device.backend == "cpu" else 8192)
    precision = precision or ("bf16" if device.backend == "cpu" else "fp16")
    attrs = {**environment_attrs(device, monitor, purpose), "kind": "gemm",
             "precision": precision, "in_features": n, "out_features": n, "batch": n,
             "flops_per_iter": 2 * n**3, "started": now_iso()}
    try:
        with torch.inference_mode():
            gen = torch.Generator(device=device.torch_device).manual_seed(0)
            dt = _torch_dtype(precision)
            a = torch.randn(n, n, generator=gen, device=device.torch_device).to(dt)
            b = torch.randn(n, n, generator=gen, device=device.torch_device).to(dt)
            out = torch.empty(n, n, device=device.torch_device, dtype=a.dtype)
            extra, datasets = _window_probe(device, monitor, lambda: torch.mm(a, b, out=out),
                                            reps=reps, min_window_s=min_window_s,
                                            warmup_s=warmup_s, key="gemm")
        a = b = out = None
    except Exception as exc:
        a = b = out = None
        return skip_on_oom(exc, device, attrs, f"n={n}")
    release_memory(device)
    return PointResult({**attrs, **extra, "status": "ok", "finished": now_iso()}, datasets)


# -- rotating buffers -----------------------------------------------------------------------------
#: rotate over layers whose weights add up to this multiple of the last-level cache
ROTATE_CACHE_FACTOR = 2.0
ROTATE_MAX_LAYERS = 512  # building the copies costs ~1 ms each on a CPU
ROTATE_MAX_BYTES = 512 << 20  # never hold more than this in rotating weights
DEFAULT_LLC_BYTES = 32 << 20


def _size_bytes(text: str) -> int | None:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if text and text[-1] in mult:
            return int(float(text[:-1]) * mult[text[-1]])
        return int(text)
    except ValueError:
        return None


def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> tuple[int, str]:
    """(bytes, where from) of the CPU's last-level cache: the highest-level data/unified cache
    in sysfs, else ``lscpu``'s L3/L2, else :data:`DEFAULT_LLC_BYTES` (assumed, said so)."""
    best = (0, 0)
    for d in glob.glob(os.path.join(root, "index*")):
        try:
            with open(os.path.join(d, "type")) as f:
                kind = f.read().strip()
            with open(os.path.join(d, "level")) as f:
                level = int(f.read())
            with open(os.path.join(d, "size")) as f:
                size = _size_bytes(f.read())
        except (OSError, ValueError):
            continue
        if kind != "Instruction" and size and (level, size) > best:
            best = (level, size)
    if best[1]:
        return best[1], f"sysfs L{best[0]}"
    try:
        out = subprocess.run(["lscpu", "-B"], capture_output=True, text=True, timeout=5).stdout
        for key in ("L3 cache:", "L2 cache:"):
            for line in out.splitlines():
                if line.startswith(key):
                    size = _size_bytes(line.split(":", 1)[1].split("(")[0])
                    if size:
                        return size, f"lscpu {key[:-1]}"
    except (OSError, subprocess.SubprocessError):
        pass
    return DEFAULT_LLC_BYTES, "assumed (no cache size readable)"


def rotation_count(weight_bytes: int, llc_bytes: int, factor: float = ROTATE_CACHE_FACTOR,
                   max_layers: int = ROTATE_MAX_LAYERS, max_bytes: int = ROTATE_MAX_BYTES) -> int:
    """How many independent layers of ``weight_bytes`` to rotate over so that their weights
    exceed ``factor`` x the last-level cache, capped at ``max_layers`` and ``max_bytes``."""
    w = max(int(weight_bytes), 1)
    n = math.ceil(factor * llc_bytes / w)
    return int(max(1, min(n, max_layers, max_bytes // w)))


def outlier_dims(in_features: int, n_dims: int = OUTLIER_N_DIMS) -> list[int]:
    """The fixed hidden dimensions made outliers: evenly spaced, ``i * in // n`` for i < n."""
    n = min(n_dims, in_features)
    return [i * in_features // n for i in range(n)]


def linear_point_id(path: str, in_features: int, out_features: int, batch: int,
                    outlier_injection: bool = False, rotate: bool = False) -> str:
    """``linear__<path>__<in>x<out>__b<batch>[__oi][__rot]`` (``rot``: rotating buffers)."""
    parts = [path, f"{in_features}x{out_features}", f"b{batch}"]
    if outlier_injection:
        parts.append("oi")
    if rotate:
        parts.append("rot")
    return make_point_id("linear", *parts)


def _layer_copies(layer, attrs: dict) -> list:
    """The extra copies of ``layer`` a rotating probe calls in turn (:func:`rotation_count`
    over the last-level cache); records ``llc_bytes`` and ``llc_source`` in ``attrs``."""
    llc, llc_src = last_level_cache_bytes()
    n_rot = rotation_count(attrs["weight_bytes"], llc)
    attrs.update(llc_bytes=int(llc), llc_source=llc_src)
    return [copy.deepcopy(layer) for _ in range(n_rot - 1)]


def probe_layers(device, lp: LinearPath, in_features: int, out_features: int, seed: int = 0,
                 rotate: bool = False) -> tuple[list, dict]:
    """The layers a linear probe calls (:func:`build_linear`, and with ``rotate`` its copies
    over the last-level cache) and their attributes: ``weight_bytes``, ``rotation``,
    ``rotation_bytes`` (and ``llc_bytes``, ``llc_source`` with ``rotate``)."""
    layer = build_linear(lp, in_features, out_features, device, seed)
    attrs = {"weight_bytes": weight_storage_bytes(layer)}
    layers = [layer] + _layer_copies(layer, attrs) if rotate else [layer]
    attrs.update(rotation=len(layers), rotation_bytes=len(layers) * attrs["weight_bytes"])
    return layers, attrs


def probe_input(batch: int, in_features: int, seed: int, outlier_injection: bool = False):
    """A linear probe's seeded float32 input (batch x in_features); with
    ``outlier_injection`` the :func:`outlier_dims` set to +-``OUTLIER_SCALE``."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, in_features, generator=gen)
    if outlier_injection:
        dims = outlier_dims(in_features)
        x[:, dims] = OUTLIER_SCALE * torch.where(x[:, dims] < 0, -1.0, 1.0)
    return x


def linear_probe(device, path: str, in_features: int, out_features: int, batch: int, *,
                 monitor: EnergyMonitor | None = None, reps: int = 3,
                 min_window_s: float | None = None, warmup_s: float | None = None,
                 seed: int = 0, outlier_injection: bool = False,
                 purpose: str = "calibration", rotate: bool = False,
                 layers=None) -> PointResult:
    """Time one linear forward ``y = x W^T`` (x: batch x in_features) on kernel ``path``.

    Calls run under ``torch.inference_mode()``; durations are per window of
    ``iters_per_rep`` calls. ``outlier_injection`` sets 8 fixed input dims to +-20 (> the
    LLM.int8() threshold) so int8's fp16 outlier path runs.

    ``rotate``: call :func:`rotation_count` independent copies of the layer in turn, so that
    their weights together exceed the last-level cache (:func:`last_level_cache_bytes`) and
    each call streams its weights from memory, as a decoder does with every layer once per
    step; without it one weight matrix is called over and over and stays in cache (the older
    behaviour, kept for comparison). Recorded: ``rotation`` (layers rotated over, 1 without),
    ``rotation_bytes``, ``llc_bytes`` and ``llc_source``.

    ``layers``: a callable returning what :func:`probe_layers` returns for this path, shape,
    seed and rotation (e.g. kept from the previous batch of the same layer: building and
    copying them is not measured, and a layer's weights do not depend on the batch).
    """
    import torch

    lp = linear_path(path, batch)
    monitor, min_window_s, warmup_s = _prepare(device, monitor, min_window_s, warmup_s)
    attrs: dict[str, Any] = {
        **environment_attrs(device, monitor, purpose), "kind": "linear", "path": lp.name,
        **quant_attrs(lp, device), "batch": batch, "in_features": in_features,
        "out_features": out_features, "seed": seed, "outlier_injection": outlier_injection,
        "started": now_iso(),
    }
    if outlier_injection:
        attrs.update(outlier_dims=outlier_dims(in_features), outlier_scale=OUTLIER_SCALE)
    try:
        with torch.inference_mode():
            built = layers() if layers is not None else probe_layers(
                device, lp, in_features, out_features, seed, rotate)
            layers, layer_attrs = built
            layer = layers[0]
            attrs.update(layer_attrs)
            x = probe_input(batch, in_features, seed, outlier_injection).to(
                device.torch_device, _torch_dtype(attrs["compute_dtype"]))
            if len(layers) == 1:
                fn = lambda: layer(x)  # noqa: E731
            else:
                nxt = itertools.cycle(layers).__next__
                fn = lambda: nxt()(x)  # noqa: E731
            extra, datasets = _window_probe(device, monitor, fn, reps=reps,
                                            min_window_s=min_window_s, warmup_s=warmup_s,
                                            key=f"linear-{lp.name}")
        layer = layers = built = fn = nxt = x = None
    except Exception as exc:
        layer = layers = built = fn = nxt = x = None
        return skip_on_oom(exc, device, attrs, f"batch {batch}")
    release_memory(device)
    return PointResult({**attrs, **extra, "status": "ok", "finished": now_iso()}, datasets)
