"""Calibration measurement plans: which points to measure on a device, and each point's spec.

A plan is a list of point specs (frozen dataclasses with ``point_id()``, ``run(ctx)`` and
``estimate_s(device)``) that :func:`qtsim.calibration.probes.runner.run_plan` executes.

- :func:`quick_plan` - minutes: idle, bandwidth, GEMM, linear probes over every kernel path at
  a few shapes and batches, short decodes of a small architecture.
- :func:`full_plan` - CUDA: shapes 1024..8192 plus the 7 linear shapes of a Llama-3-8B layer,
  batches 1..128 (about 15 minutes on an H100).
- :func:`calibration_plan` - either, after the power-state windows
  (:mod:`qtsim.calibration.probes.power_states`) where a real meter can see them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from qtsim.calibration.measure.conditions import environment_attrs
from qtsim.calibration.measure.energy import measure_idle, rapl_status
from qtsim.calibration.measure.raw import PointResult, make_point_id, now_iso
from qtsim.calibration.probes.bench import (
    DEFAULT_THRESHOLD,
    default_min_window_s,
    gemm_probe,
    linear_path,
    linear_point_id,
    linear_probe,
    measurements_to_datasets,
    membw_probe,
    probe_layers,
)
from qtsim.calibration.probes.decode import build_model, decode_point_id, decode_run
from qtsim.calibration.probes.power_states import DEFAULT_WINDOW_S, power_state_plan
from qtsim.errors import QtsimError
from qtsim.model import paths

# A tiny Qwen3-like architecture (random weights): big enough to have every kernel of a real
# decoder layer, small enough to decode 16 tokens in well under a second on 2 CPU cores.
TINY_QWEN3_CONFIG: dict[str, Any] = {
    "model_type": "qwen3",
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
}

# The same with twice the depth: decodes at two depths separate per-layer from per-step cost.
TINY_QWEN3_DEEP_CONFIG: dict[str, Any] = {**TINY_QWEN3_CONFIG, "num_hidden_layers": 8}

# Qwen3-0.6B's shapes (random weights): the CUDA plans' decode architecture.
QWEN3_0_6B_CONFIG: dict[str, Any] = {
    "model_type": "qwen3",
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}

# (in_features, out_features) of the 7 linears in a Llama-3-8B decoder layer:
# q, k, v, o, gate, up, down.
LLAMA3_8B_LAYER_SHAPES: tuple[tuple[int, int], ...] = (
    (4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096),
    (4096, 14336), (4096, 14336), (14336, 4096),
)

CPU_QUICK_SHAPES = ((256, 256), (512, 1024), (1024, 512), (1024, 1024))
#: the quick plan's linear batches on a CPU: 1 (the GEMV side), 4 and 64 (refitting the recorded
#: quick calibration without batch 16 moved the held-out step-time MAPE from 8.40% to 8.44%)
CPU_QUICK_BATCHES = (1, 4, 64)
CPU_FULL_BATCHES = (1, 4, 16, 64)
#: repetitions of the quick plan's linear and decode points on a CPU (3 elsewhere): refitting
#: the recorded quick calibration on its first 2 repetitions, with batch 16 dropped too, moved
#: the held-out step-time MAPE from 8.40% to 8.69% and latency's from 6.97% to 7.53%, and the
#: kernel-path constants' stderr by at most a quarter
CPU_QUICK_REPS = 2
#: the 16-bit GEMM probe's size on a CPU: a CPU without 16-bit arithmetic (AMD EPYC) runs a
#: 1024 fp16 GEMM in 2.7 s on one thread, and the probe calls it 9 times; the fit does not use it
CPU_GEMM_N = 512
CPU_DECODE_BATCHES = (1, 3, 8)  # validation holds out 2 and 6
CUDA_QUICK_SHAPES = ((1024, 1024), (4096, 4096), (4096, 14336), (14336, 4096))
CUDA_QUICK_BATCHES = (1, 8, 64)
CUDA_FULL_SQUARES = (1024, 2048, 4096, 8192)
CUDA_FULL_BATCHES = (1, 2, 8, 32, 64, 128)


def _base(ctx, kind: str, **extra) -> dict[str, Any]:
    return {**environment_attrs(ctx.device, ctx.monitor, ctx.purpose), "kind": kind,
            "started": now_iso(), **extra}


@dataclass(frozen=True)
class IdleSpec:
    """Idle power: one window of ``seconds`` with nothing running."""

    seconds: float = 2.0

    def point_id(self) -> str:
        return make_point_id("idle", f"{self.seconds:g}s")

    def base_attrs(self, ctx) -> dict[str, Any]:
        return _base(ctx, "idle", seconds=self.seconds)

    def run(self, ctx) -> PointResult:
        attrs = self.base_attrs(ctx)
        m = measure_idle(ctx.monitor, self.seconds)
        datasets, excl, notes = measurements_to_datasets([m])
        return PointResult({**attrs, "iters_per_rep": 1, "reps": 1, "exclusions": excl,
                            "notes": notes, "status": "ok", "finished": now_iso()}, datasets)

    def estimate_s(self, device) -> float:
        return self.seconds + 0.1


@dataclass(frozen=True)
class MembwSpec:
    """Memory bandwidth: copies of ``size_bytes``."""

    size_bytes: int
    reps: int = 3
    min_window_s: float | None = None

    def point_id(self) -> str:
        return make_point_id("membw", "copy", f"{self.size_bytes >> 20}mib")

    def base_attrs(self, ctx) -> dict[str, Any]:
        return _base(ctx, "membw", size_bytes=self.size_bytes)

    def run(self, ctx) -> PointResult:
        return membw_probe(ctx.device, ctx.monitor, size_bytes=self.size_bytes, reps=self.reps,
                           min_window_s=self.min_window_s, purpose=ctx.purpose)

    def estimate_s(self, device) -> float:
        return (self.reps + 1) * (self.min_window_s or default_min_window_s(device)) + 0.5


@dataclass(frozen=True)
class GemmSpec:
    """16-bit square GEMM of size ``n``."""

    n: int
    precision: str
    reps: int = 3
    min_window_s: float | None = None

    def point_id(self) -> str:
        return make_point_id("gemm", self.precision, f"{self.n}")

    def base_attrs(self, ctx) -> dict[str, Any]:
        return _base(ctx, "gemm", precision=self.precision, in_features=self.n)

    def run(self, ctx) -> PointResult:
        return gemm_probe(ctx.device, ctx.monitor, n=self.n, precision=self.precision,
                          reps=self.reps, min_window_s=self.min_window_s, purpose=ctx.purpose)

    def estimate_s(self, device) -> float:
        window = self.min_window_s or default_min_window_s(device)
        call = 0.0
        if device.backend == "cpu":  # a 16-bit GEMM on a CPU core runs at about 0.8 GFLOP/s
            call = 2.0 * self.n ** 3 / CPU_16BIT_FLOPS_PER_THREAD / _cpu_threads(device)
        # warm-up, the window-length probe and the measured reps each run at least one call
        return (2 * self.reps + 3) * max(window, call) + 0.3


#: 16-bit GEMM throughput of one CPU thread, FLOP/s: 0.80-0.85 GFLOP/s for fp16 and bf16 at
#: n = 1024 in data/raw/cpu-epyc-2c-calibration.h5 (one thread, a quiet 2-core AMD EPYC VM)
CPU_16BIT_FLOPS_PER_THREAD = 0.8e9


def _cpu_threads(device) -> int:
    """torch's intra-op threads on a CPU device (1 where not known)."""
    try:
        import torch

        return max(int(torch.get_num_threads()), 1)
    except ImportError:
        return 1


@dataclass(frozen=True)
class LinearSpec:
    """One linear layer on one kernel path at one batch."""

    path: str
    in_features: int
    out_features: int
    batch: int
    reps: int = 3
    min_window_s: float | None = None
    outlier_injection: bool = False
    rotate: bool = False  # rotating buffers larger than the last-level cache (bench.linear_probe)

    def point_id(self) -> str:
        return linear_point_id(self.path, self.in_features, self.out_features, self.batch,
                               self.outlier_injection, self.rotate)

    def base_attrs(self, ctx) -> dict[str, Any]:
        return _base(ctx, "linear", path=self.path, batch=self.batch,
                     in_features=self.in_features, out_features=self.out_features)

    def layer_key(self) -> tuple:
        """What the probe's layers depend on: the path's precision and settings (not its batch
        side), the shape and the rotation. Consecutive batches of one key share the layers."""
        lp = linear_path(self.path, self.batch)
        return (lp.precision, lp.threshold, lp.double_quant, self.in_features,
                self.out_features, self.rotate)

    def run(self, ctx) -> PointResult:
        layers = None
        if hasattr(ctx, "cached_layers"):
            lp = linear_path(self.path, self.batch)

            def layers():
                return ctx.cached_layers(self.layer_key(), lambda: probe_layers(
                    ctx.device, lp, self.in_features, self.out_features, rotate=self.rotate))

        return linear_probe(ctx.device, self.path, self.in_features, self.out_features,
                            self.batch, monitor=ctx.monitor, reps=self.reps,
                            min_window_s=self.min_window_s,
                            outlier_injection=self.outlier_injection, purpose=ctx.purpose,
                            rotate=self.rotate, layers=layers)

    def estimate_s(self, device) -> float:
        window = self.min_window_s or default_min_window_s(device)
        warm = 0.1 if device.backend == "cpu" else 0.5
        build = 1e-8 * self.in_features * self.out_features  # quantising the weight
        if self.rotate:
            build += 0.3  # copies of the layer (about 1 ms each on a CPU)
        return self.reps * window + warm + build + 0.05


@dataclass(frozen=True)
class DecodeSpec:
    """A short greedy decode of ``new_tokens`` for ``batch`` prompts of ``prompt_len``."""

    model_name: str
    config: dict = field(hash=False, compare=False)
    precision: str = "fp16"
    batch: int = 1
    prompt_len: int = 16
    new_tokens: int = 16
    reps: int = 3
    warmup: int = 1
    double_quant: bool = False
    threshold: float = DEFAULT_THRESHOLD
    outlier_injection: bool = False
    min_window_s: float | None = None
    seed: int = 0

    def point_id(self) -> str:
        return decode_point_id(self.model_name, self.precision, self.batch, self.prompt_len,
                               self.new_tokens, double_quant=self.double_quant,
                               threshold=self.threshold,
                               outlier_injection=self.outlier_injection)

    def model_key(self) -> tuple:
        return (self.model_name, json.dumps(self.config, sort_keys=True), self.precision,
                self.double_quant, self.threshold, self.outlier_injection, self.seed)

    def base_attrs(self, ctx) -> dict[str, Any]:
        return _base(ctx, "decode", model=self.model_name, precision=self.precision,
                     batch=self.batch, prompt_len=self.prompt_len, new_tokens=self.new_tokens,
                     config_json=json.dumps(self.config, sort_keys=True))

    def run(self, ctx) -> PointResult:
        built = ctx.cached_model(self.model_key(), lambda: build_model(
            self.config, self.precision, ctx.device, seed=self.seed,
            outlier_injection=self.outlier_injection, double_quant=self.double_quant,
            threshold=self.threshold))
        return decode_run(built, self.batch, self.prompt_len, self.new_tokens, self.reps,
                          self.warmup, monitor=ctx.monitor, min_window_s=self.min_window_s,
                          model_name=self.model_name, purpose=ctx.purpose)

    def estimate_s(self, device) -> float:
        # per-token cost of a small model: 0.007 s on one CPU thread makes the quick plan's
        # decodes take what they took on a quiet 2-core VM (median 1.77 s per point, 99 s in
        # all, data/raw/cpu-epyc-2c-calibration.h5), and 0.0035 s on two what the issue-21 plan's
        # took there (0.96 s per point, 49 s in all); the runner's real time is what counts
        per_token = 0.007 / _cpu_threads(device) if device.backend == "cpu" else 0.02
        n = (self.reps + self.warmup + 1) * (self.new_tokens + 1) * per_token * 2
        if self.min_window_s:
            n = max(n, 2 * self.reps * self.min_window_s)
        return n + 0.5


def linear_paths(device, precisions: tuple[str, ...], batch: int) -> list[str]:
    """Kernel path names for ``precisions`` (path families, :data:`qtsim.model.paths.FAMILIES`:
    ``nf4dq`` = nf4 with double quantisation, ``int8_t0`` = int8 at threshold 0) at ``batch``."""
    return [paths.path_at(p, batch) for p in precisions]


def linear_grid(device, precisions, shapes, batches, *, reps: int = 3,
                min_window_s: float | None = None, rotate: bool = False) -> list[LinearSpec]:
    """Every (path, shape, batch) combination, unique shapes only; the batches of one
    precision and shape consecutive, so they share one built (and rotated) set of layers."""
    specs: list[LinearSpec] = []
    seen = set()
    for in_f, out_f in shapes:
        if (in_f, out_f) in seen:
            continue
        seen.add((in_f, out_f))
        for i in range(len(precisions)):
            for b in batches:
                path = linear_paths(device, precisions, b)[i]
                specs.append(LinearSpec(path, in_f, out_f, b, reps, min_window_s,
                                        rotate=rotate))
    return specs


def decode_grid(model_name: str, config: dict, precisions, batches, *, prompt_len: int,
                new_tokens: int, reps: int = 3, min_window_s: float | None = None,
                outlier_injection: bool = False) -> list[DecodeSpec]:
    """Decode points, grouped by precision so each model is built once."""
    specs = []
    for p in precisions:
        base, dq, thr = paths.family_settings(p)
        for b in batches:
            specs.append(DecodeSpec(model_name, config, base, b, prompt_len, new_tokens, reps,
                                    double_quant=dq, min_window_s=min_window_s, threshold=thr,
                                    outlier_injection=outlier_injection and base == "int8"))
    return specs


def _sixteen_bit(device) -> tuple[str, ...]:
    return ("fp16", "bf16") if device.backend == "cpu" else ("fp16",)


def quick_plan(device, arch_config: dict | None = None, *, model_name: str | None = None,
               shapes=None, batches=None, decode_batches=None, reps: int | None = None,
               new_tokens: int = 16, include_outlier_probes: bool = False,
               rotate: bool | None = None) -> list:
    """A few minutes of measurements on ``device`` (CPU: about 2 minutes on 2 cores).

    Idle, bandwidth, GEMM; linear probes over {fp16 (+bf16 on CPU), int8, int8_t0, nf4, nf4dq}
    x shapes x batches (``reps`` repetitions of linear and decode points: default
    :data:`CPU_QUICK_REPS` on a CPU, 3 on a GPU); decodes of ``arch_config`` (default:
    :data:`TINY_QWEN3_CONFIG` on CPU,
    :data:`QWEN3_0_6B_CONFIG` on CUDA) per precision at 2 batch sizes. On a CPU the linear
    probes rotate over layers larger than the last-level cache (``rotate``, default: CPU only)
    and the decodes include a Llama-layout twin, so that per-operation host cost and the
    16-bit paths' in-model per-call cost separate (their op counts per layer differ).
    """
    cpu = device.backend == "cpu"
    rotate = cpu if rotate is None else rotate
    default_arch = arch_config is None
    if arch_config is None:
        arch_config = TINY_QWEN3_CONFIG if cpu else QWEN3_0_6B_CONFIG
        model_name = model_name or ("tiny-qwen3" if cpu else "qwen3-0.6b-shapes")
    model_name = model_name or "arch"
    shapes = shapes or (CPU_QUICK_SHAPES if cpu else CUDA_QUICK_SHAPES)
    batches = batches or (CPU_QUICK_BATCHES if cpu else CUDA_QUICK_BATCHES)
    sixteen = _sixteen_bit(device)
    plan: list = [IdleSpec(2.0 if cpu else 5.0), MembwSpec((256 << 20) if cpu else (1 << 30))]
    plan += [GemmSpec(CPU_GEMM_N if cpu else 8192, p) for p in sixteen]
    reps = reps if reps is not None else (CPU_QUICK_REPS if cpu else 3)
    # CUDA quick: 0.3 s windows (3x the NVML counter's ~100 ms update; the poller cross-checks)
    lin_window = None if cpu else 0.3
    # int8 at threshold 0 and NF4 with double quantisation: CPU quick and the full plans
    variants = ("int8_t0", "nf4dq") if cpu else ()
    plan += linear_grid(device, (*sixteen, "int8", "nf4", *variants), shapes, batches,
                        reps=reps, min_window_s=lin_window, rotate=rotate)
    if include_outlier_probes:
        plan += [LinearSpec("int8", i, o, b, reps, lin_window, outlier_injection=True)
                 for (i, o) in shapes[-1:] for b in batches]
    dec_batches = decode_batches or (CPU_DECODE_BATCHES if cpu else (1, 4, 16))
    archs = _decode_archs(arch_config, model_name, default_arch)
    if cpu and default_arch:
        archs.append((f"{model_name}-llama", llama_twin(arch_config)))
    for i, (name, cfg) in enumerate(archs):
        # CUDA quick: the twins (depth, vocabulary) decode in the native precision only; t_step
        # and t_vocab are shared by every precision, so one family pins them
        precs = (*sixteen, "int8", "nf4") if (i == 0 or cpu) else sixteen
        plan += decode_grid(name, cfg, precs,
                            dec_batches if (i == 0 or cpu) else dec_batches[:2],
                            prompt_len=16 if cpu else 64, new_tokens=new_tokens, reps=reps,
                            min_window_s=None if cpu else 0.5)
    return plan


def _decode_archs(arch_config: dict, model_name: str, default_arch: bool = True):
    """The decode architectures: the given one, a twice-as-deep twin and a half-as-deep twin
    with three times the vocabulary, so the fit can separate per-step, per-layer and
    per-vocabulary-entry costs (three depths, two vocabularies)."""
    layers = int(arch_config["num_hidden_layers"])
    vocab = int(arch_config["vocab_size"])
    return [
        (model_name, arch_config),
        (f"{model_name}-{2 * layers}l", {**arch_config, "num_hidden_layers": 2 * layers}),
        (f"{model_name}-{max(layers // 2, 1)}l-v{3 * vocab}",
         {**arch_config, "num_hidden_layers": max(layers // 2, 1), "vocab_size": 3 * vocab}),
    ]


def llama_twin(arch_config: dict) -> dict:
    """The same shapes in Llama layout (no q/k norms): another model class, other op counts."""
    cfg = {k: v for k, v in arch_config.items() if k not in ("model_type",)}
    return {**cfg, "model_type": "llama", "attention_bias": False, "mlp_bias": False}


def calibration_plan(device, quick: bool = True, arch_config: dict | None = None,
                     rotate: bool | None = None, power_states: bool | None = None,
                     power_window_s: float = DEFAULT_WINDOW_S) -> list:
    """The plan ``qtsim calibrate`` runs: :func:`quick_plan` or :func:`full_plan`
    (``rotate``: rotating buffers in the linear probes, quick plan; default on CPUs), after the
    power-state windows of ``power_window_s`` (:func:`power_state_plan`; ``power_states``
    None: on a GPU, and on a CPU where RAPL is readable, for nothing else can meter them)."""
    plan = quick_plan(device, arch_config, rotate=rotate) if quick else full_plan(device, arch_config)
    if power_states is None:
        power_states = device.backend != "cpu" or rapl_status()[0]
    return (power_state_plan(device, power_window_s) if power_states else []) + plan


def full_plan(device, arch_config: dict | None = None, *, model_name: str | None = None,
              reps: int = 3, new_tokens: int = 32, include_outlier_probes: bool = True,
              linear_min_window_s: float | None = None) -> list:
    """The full calibration: squares 1024..8192 and the Llama-3-8B layer shapes x batches
    1, 2, 8, 32, 64, 128 x {fp16, int8, int8_t0, nf4, nf4dq}, plus decodes at 3 batch sizes
    for {fp16, int8, nf4, nf4dq} (and int8 with outlier injection). On CPU the shapes and
    batches are the quick plan's plus one larger of each.

    Linear windows on CUDA default to 0.5 s (5x the NVML counter's ~100 ms update; the
    poller resolves them too), which keeps the plan under 15 minutes on an H100."""
    cpu = device.backend == "cpu"
    default_arch = arch_config is None
    if arch_config is None:
        arch_config = TINY_QWEN3_CONFIG if cpu else QWEN3_0_6B_CONFIG
        model_name = model_name or ("tiny-qwen3" if cpu else "qwen3-0.6b-shapes")
    model_name = model_name or "arch"
    sixteen = _sixteen_bit(device)
    if cpu:
        shapes, batches = CPU_QUICK_SHAPES + ((2048, 2048),), CPU_FULL_BATCHES
    else:
        shapes = tuple((n, n) for n in CUDA_FULL_SQUARES) + LLAMA3_8B_LAYER_SHAPES
        batches = CUDA_FULL_BATCHES
    plan: list = [IdleSpec(2.0 if cpu else 5.0),
                  MembwSpec((256 << 20) if cpu else (1 << 30), reps)]
    plan += [GemmSpec(n, p, reps) for p in sixteen
             for n in ((512, 1024) if cpu else (4096, 8192))]
    if linear_min_window_s is None and not cpu:
        linear_min_window_s = 0.5
    plan += linear_grid(device, (*sixteen, "int8", "int8_t0", "nf4", "nf4dq"), shapes, batches,
                        reps=reps, min_window_s=linear_min_window_s)
    if include_outlier_probes:
        big = (1024, 1024) if cpu else (4096, 4096)
        plan += [LinearSpec("int8", *big, b, reps, linear_min_window_s, outlier_injection=True)
                 for b in batches]
    dec_batches = CPU_DECODE_BATCHES if cpu else (1, 8, 32)
    for i, (name, cfg) in enumerate(_decode_archs(arch_config, model_name, default_arch)):
        # the twins vary depth and vocabulary; the base architecture carries the batch range
        plan += decode_grid(name, cfg, (*sixteen, "int8", "nf4") + (("nf4dq",) if i == 0 else ()),
                            dec_batches if (i == 0 or cpu) else dec_batches[:2],
                            prompt_len=16 if cpu else 64, new_tokens=new_tokens, reps=reps,
                            min_window_s=None if cpu else 1.0)
    if include_outlier_probes:
        plan += decode_grid(model_name, arch_config, ("int8",), dec_batches,
                            prompt_len=16 if cpu else 64, new_tokens=new_tokens, reps=reps,
                            min_window_s=None if cpu else 1.0, outlier_injection=True)
    return plan


MODEL_BUILD_S = {"cpu": 1.0, "cuda": 10.0}  # building a (small) random model, per precision


def estimate_plan_s(plan: list, device) -> float:
    """Rough wall time of ``plan`` on ``device`` in seconds (before resume), counting one
    model build per distinct decode model."""
    builds = {p.model_key() for p in plan if isinstance(p, DecodeSpec)}
    return float(sum(p.estimate_s(device) for p in plan)
                 + len(builds) * MODEL_BUILD_S.get(device.backend, 10.0))


TINY_SHAPES = ((256, 256), (512, 1024), (1024, 1024))
TINY_BATCHES = (1, 4, 16)
TINY_DECODE_BATCHES = (1, 3)


def tiny_plan(device, *, reps: int = 2, new_tokens: int = 16, min_window_s: float = 0.03,
              decode_reps: int = 2) -> list:
    """The smallest plan that still fits a whole profile: seconds, for tests and fleet smoke
    runs (``qtsim fleet calibrate --plan tiny``), not for decisions.

    Linear probes over the 16-bit path(s), int8 and nf4 at 3 small shapes x batches 1, 4, 16
    (short windows), and decodes of :data:`TINY_QWEN3_CONFIG` and its twice-as-deep twin
    (two depths separate per-step from per-layer cost) in fp16, int8 and nf4 at batches 1
    and 3. No idle, bandwidth or GEMM probes: the fit does not use them.
    """
    sixteen = _sixteen_bit(device)
    window = min_window_s if device.backend == "cpu" else max(min_window_s, 0.3)
    plan: list = linear_grid(device, (*sixteen, "int8", "nf4"), TINY_SHAPES, TINY_BATCHES,
                             reps=reps, min_window_s=window)
    for name, cfg in _decode_archs(TINY_QWEN3_CONFIG, "tiny-qwen3")[:2]:
        plan += decode_grid(name, cfg, ("fp16", "int8", "nf4"), TINY_DECODE_BATCHES,
                            prompt_len=16, new_tokens=new_tokens, reps=decode_reps,
                            min_window_s=None if device.backend == "cpu" else 0.5)
    return plan


PLANS = ("tiny", "quick", "full")


def named_plan(name: str, device) -> list:
    """``tiny`` (:func:`tiny_plan`), ``quick`` (:func:`quick_plan`) or ``full``
    (:func:`full_plan`) for ``device``."""
    if name not in PLANS:
        raise QtsimError(f"unknown plan {name!r} (choose from {', '.join(PLANS)})")
    if name == "tiny":
        return tiny_plan(device)
    return calibration_plan(device, quick=name == "quick")
