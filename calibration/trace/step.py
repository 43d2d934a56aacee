"""Trace one real decode step: the operation inventory behind the host/device timelines.

A tiny random-weight model of a given architecture (:func:`tiny_config`, built with
:func:`qtsim.calibration.probes.decode.build_model`) greedy-decodes 3 tokens on the CPU with HF
``generate`` under a ``TorchDispatchMode`` that records every aten op dispatched, and every
``bitsandbytes::*`` custom op as one op without descending into its CPU implementation. The
traced step is one full steady-state cycle of ``generate``: from the start of the first
decode-step forward to the start of the next one, so it holds the model's forward and
``generate``'s per-step work (logits processors, argmax, stopping criteria with their host
read-back, cache and input updates).

Regions (module hooks): ``pre`` (forward start to the first decoder layer: embedding, rotary,
masks), per decoder layer a list of **blocks** (the ops since the previous linear ended, up to
and including one linear call, in execution order, then a ``tail`` block after the layer's
last linear), and ``post`` (after the last layer: final norm, lm_head and ``generate``'s
bookkeeping up to the next forward). Composite aten ops (``linear``, ``to``, ``reshape``,
``scaled_dot_product_attention``) are decomposed with the mode active, so counts are of the
leaf ops that reach a kernel (their number is ``composite_ops``).

Per block: ``aten_ops`` (leaf aten dispatches, views included), ``view_ops`` (the subset in
:data:`qtsim.calibration.trace.ops.VIEW_OPS`: no kernel), ``bnb_ops`` (bitsandbytes op calls),
``kernels_cuda`` (kernels the block launches on CUDA: each leaf aten op not a view nor in
:data:`~qtsim.calibration.trace.ops.ALLOC_OPS` counts 1, each bitsandbytes op what its CUDA
backend launches, counted by :class:`qtsim.calibration.trace.bnb_cuda.BnbCuda` on the very call's
arguments), ``syncs_cuda`` (host-device synchronisations on CUDA, :data:`SYNC_OPS` plus those
inside the bitsandbytes CUDA code), ``modules`` (``nn.Module`` forward calls started in the
block), ``bnb_cuda_aten_ops`` (aten dispatches inside the bitsandbytes CUDA code: host work),
``linear_ops`` (linear blocks only: the leaf aten ops dispatched inside the linear module's
forward, from its forward pre-hook to its forward hook; the rest of the block's ``aten_ops`` are
the non-linear work before it), ``sync_at`` (positions in ``ops`` of the ops that synchronise)
and ``ops`` (the op-name
sequence, stored once per unique sequence in ``op_sequences``; ``ops`` is its index).

CUDA-side Python branch: ``Linear4bit.forward`` converts weights to a CPU-only packed layout
and calls ``gemv_4bit`` when the CPU has AVX512-BF16; the trace sets every layer's
``support_avx512bf16_for_cpu = False`` so that ``matmul_4bit`` takes the branch CUDA takes
(``gemm_4bit``). Outlier injection's own ops (forward pre-hooks added by
:func:`~qtsim.calibration.probes.decode.add_outlier_hooks`) are excluded from the counts (their number
is ``outlier_injection_ops_excluded``).

``python -m qtsim.calibration.trace OUT.json`` traces every model type, path and batch and
writes the inventory (:func:`build_inventory`).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.resources
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import qtsim
from qtsim.calibration.measure.device import CpuDevice
from qtsim.calibration.probes.decode import build_model
from qtsim.calibration.trace.bnb_cuda import BnbCuda, CudaCount, lib_calls_by_ast
from qtsim.calibration.trace.ops import (
    ALLOC_OPS,
    SYNC_OPS,
    VIEW_OPS,
    classify,
    decompose_if_composite,
    leaf_name,
)
from qtsim.errors import MeasurementError, QtsimError

SCHEMA = 1
COMMAND = "python -m qtsim.calibration.trace data/reference/op_inventory.json"
MODEL_SOURCES = {"llama": "llama-3.1-8b", "mistral": "mistral-7b", "qwen2": "qwen2.5-0.5b",
                 "qwen3": "qwen3-0.6b", "gemma2": "gemma-2-2b"}
"""Model type -> architecture config (``qtsim.data.architectures``) its tiny config shrinks."""


@dataclass(frozen=True)
class PathSpec:
    """How to build one traced path: precision, double quant, LLM.int8() threshold, outliers."""

    base: str
    precision: str
    double_quant: bool = False
    threshold: float = 6.0
    outliers: bool = False


PATH_SPECS = (
    PathSpec("fp16", "fp16"), PathSpec("bf16", "bf16"),
    PathSpec("int8", "int8", outliers=True), PathSpec("int8", "int8", outliers=False),
    PathSpec("int8_t0", "int8", threshold=0.0),
    PathSpec("nf4", "nf4"), PathSpec("nf4dq", "nf4", double_quant=True), PathSpec("fp4", "fp4"),
)
BATCHES = (1, 4)
PROMPT_LEN = 5
NEW_TOKENS = 3  # forwards 0 (prefill), 1, 2: the traced cycle is [start of 1, start of 2)
_DROP = ("layer_types", "max_window_layers", "_qtsim_name", "_qtsim_source")


def tiny_config(model_type: str, hidden: int = 128, n_layers: int = 2) -> dict:
    """A tiny HF config dict of ``model_type``, from the shipped architecture config.

    Keeps the family's flags (biases, softcapping, tied embeddings, sliding window) and shrinks
    sizes: ``hidden`` (hidden size), 4 heads of ``hidden // 4``, 2 KV heads, intermediate
    ``2 * hidden``, ``n_layers`` layers, vocab 512, eos 2.
    """
    if model_type not in MODEL_SOURCES:
        raise QtsimError(f"no tiny config for model type {model_type!r} "
                         f"(known: {', '.join(MODEL_SOURCES)})")
    src = importlib.resources.files("qtsim.data.architectures") / f"{MODEL_SOURCES[model_type]}.json"
    cfg = {k: v for k, v in json.loads(src.read_text()).items() if k not in _DROP}
    cfg.update(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
               num_key_value_heads=2, head_dim=hidden // 4, num_hidden_layers=n_layers,
               vocab_size=512, bos_token_id=1, eos_token_id=2,
               pad_token_id=0)
    if "query_pre_attn_scalar" in cfg:
        cfg["query_pre_attn_scalar"] = hidden // 4
    return cfg


# -- recording --------------------------------------------------------------------------------
@dataclass
class Block:
    """Counts of one region of the step (see the module docstring for the fields)."""

    linear: str | None = None
    ops: list[str] = field(default_factory=list)
    aten_ops: int = 0
    view_ops: int = 0
    bnb_ops: int = 0
    kernels_cuda: int = 0
    syncs_cuda: int = 0
    modules: int = 0
    composite_ops: int = 0
    bnb_cuda_aten_ops: int = 0
    linear_ops: int = 0
    linear_start: int | None = None
    sync_at: list[int] = field(default_factory=list)

    def add_aten(self, func, args) -> None:
        kind = classify(func, args)
        if kind.sync:
            self.sync_at.append(len(self.ops))
        self.ops.append(leaf_name(func, args))
        self.aten_ops += 1
        self.view_ops += kind.view
        self.kernels_cuda += kind.kernel
        self.syncs_cuda += kind.sync

    def add_bnb(self, name: str, cuda) -> None:
        if cuda.syncs:
            self.sync_at.append(len(self.ops))
        self.ops.append(name)
        self.bnb_ops += 1
        self.kernels_cuda += cuda.kernels
        self.syncs_cuda += cuda.syncs
        self.bnb_cuda_aten_ops += cuda.aten_ops

    def counts(self) -> dict[str, Any]:
        d = {"aten_ops": self.aten_ops, "view_ops": self.view_ops, "bnb_ops": self.bnb_ops,
             "kernels_cuda": self.kernels_cuda, "syncs_cuda": self.syncs_cuda,
             "modules": self.modules, "composite_ops": self.composite_ops,
             "bnb_cuda_aten_ops": self.bnb_cuda_aten_ops, "sync_at": list(self.sync_at)}
        if self.linear is None:
            return d
        return {"linear": self.linear, **d, "linear_ops": self.linear_ops}


def _mode_class():
    from torch.utils._python_dispatch import TorchDispatchMode

    class StepTracer(TorchDispatchMode):
        """Records leaf aten ops and bitsandbytes ops into the tracer's current block."""

        def __init__(self, tracer):
            super().__init__()
            self.tracer = tracer

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            t = self.tracer
            block = t.current()
            if func.namespace == "bitsandbytes":
                if block is not None:
                    block.add_bnb(func.name(), t.bnb_count(func, args, kwargs))
                elif t.skipping:
                    t.skipped += 1
                return func(*args, **kwargs)
            out = decompose_if_composite(self, func, args, kwargs)
            if out is not NotImplemented:
                if block is not None:
                    block.composite_ops += 1
                return out
            if block is not None:
                block.add_aten(func, args)
            elif t.skipping:
                t.skipped += 1
            return func(*args, **kwargs)

    return StepTracer


class _Tracer:
    """Hook state: which region of the traced cycle the ops issued now belong to."""

    def __init__(self, model, bnb_cuda):
        import torch

        self.top = model
        self.layers = list(model.model.layers)
        self.layer_of = {id(m): i for i, m in enumerate(self.layers)}
        self.linear_name: dict[int, str] = {}
        for layer in self.layers:
            for name, m in layer.named_modules():
                if isinstance(m, torch.nn.Linear):
                    self.linear_name[id(m)] = name.split(".")[-1]
        self.bnb_cuda = bnb_cuda
        self.bnb_calls: dict[str, dict] = {}
        self.forward_idx = -1
        self.block: Block | None = None
        self.skipping = False
        self.skipped = 0
        self.pre = Block()
        self.post: Block | None = None
        self.between: list[Block] = []
        self.layer_blocks: list[list[Block]] = [[] for _ in self.layers]
        self.layer_i: int | None = None

    def current(self) -> Block | None:
        return None if self.skipping else self.block

    def bnb_count(self, func, args, kwargs):
        name = func.name().split("::")[-1]
        try:
            c = self.bnb_cuda.count(name, args, kwargs)
            method = "executed"
        except Exception as exc:  # noqa: BLE001 - fall back to the source, recorded

            n = lib_calls_by_ast().get(name, 0)
            c = CudaCount(kernels=n, lib_calls=n)
            method = f"ast ({type(exc).__name__}: {str(exc)[:120]})"
        key = _bnb_variant(func, args, kwargs)
        self.bnb_calls.setdefault(key, {**c.as_dict(method), "op": name})
        return c

    # global module hooks
    def pre_hook(self, module, args):
        if module is self.top:
            self.forward_idx += 1
            if self.forward_idx == 1:
                self.block = self.pre
            elif self.forward_idx == 2:
                self.block = None
        if self.block is None and self.layer_i is None:
            return
        i = self.layer_of.get(id(module))
        if i is not None and self.block is not None:
            self.layer_i = i
            self.block = Block()
        if self.block is not None:
            self.block.modules += 1
        if id(module) in self.linear_name and self.block is not None:
            self.block.linear_start = self.block.aten_ops  # the linear's own ops start here
            self.skipping = True  # outlier-injection pre-hooks run next; ours ends the skip

    def end_skip(self, module, args):
        self.skipping = False

    def post_hook(self, module, args, out):
        if self.block is None:
            return
        name = self.linear_name.get(id(module))
        if name is not None and self.layer_i is not None:
            self.block.linear = name
            if self.block.linear_start is not None:
                self.block.linear_ops = self.block.aten_ops - self.block.linear_start
            self.layer_blocks[self.layer_i].append(self.block)
            self.block = Block()
        elif self.layer_of.get(id(module)) is not None:
            i = self.layer_of[id(module)]
            self.block.linear = "tail"
            self.layer_blocks[i].append(self.block)
            self.layer_i = None
            if i == len(self.layers) - 1:
                self.post = self.block = Block()
            else:
                self.block = Block()
                self.between.append(self.block)


def _bound(func, args, kwargs) -> dict[str, Any]:
    """The call's arguments by schema name (dispatch passes most of them positionally)."""
    names = [a.name for a in func._schema.arguments]
    return {**dict(zip(names, args, strict=False)), **kwargs}


def _bnb_variant(func, args, kwargs) -> str:
    """A key naming the CUDA code path a bitsandbytes call takes (for the summary table)."""
    import torch

    name = func.name().split("::")[-1]
    a = _bound(func, args, kwargs)
    tags = []
    if name == "int8_vectorwise_quant":
        thr = a.get("threshold", 0.0)
        if thr > 0:
            out = bool((a["A"].abs() >= thr).any())
            rows = a["A"].numel() // a["A"].shape[-1]
            tags.append(f"threshold>0, {'outliers' if out else 'no outliers'}, "
                        f"rows{'=1' if rows == 1 else '>1'}")
        else:
            tags.append("threshold=0")
    elif name == "int8_mixed_scaled_mm":
        oc = a.get("outlier_cols")
        tags.append("outliers" if oc is not None and oc.numel() else "no outliers")
    elif name.startswith("gemm_4bit"):
        A = a["A"]
        tags.append(f"M={A.numel() // A.shape[-1]}")
        if a.get("absmax_8bit") is not None:
            tags.append("nested")
    if isinstance(a.get("bias"), torch.Tensor):
        tags.append("bias")
    return f"{name}[{', '.join(tags)}]" if tags else name


def _force_cuda_branch(model) -> int:
    """Make bitsandbytes' 4-bit layers take the Python branch CUDA takes (no CPU packing)."""
    import bitsandbytes as bnb

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _traced_generate(model, tracer, kwargs: dict):
    """One warm-up generate, then one under ``tracer`` (module hooks and dispatch mode)."""
    import torch

    handles = []
    with torch.inference_mode():
        model.generate(**kwargs)  # warm-up: lazy state (bnb init, compute dtypes) is set now
        try:
            mm = torch.nn.modules.module
            handles = [mm.register_module_forward_pre_hook(tracer.pre_hook),
                       mm.register_module_forward_hook(tracer.post_hook)]
            handles += [m.register_forward_pre_hook(tracer.end_skip)
                        for m in model.modules() if id(m) in tracer.linear_name]
            with _mode_class()(tracer):
                return model.generate(**kwargs)
        finally:
            for h in handles:
                h.remove()


def _inventory_entry(config: dict, spec: PathSpec, batch: int, tracer, built) -> dict[str, Any]:
    """A traced decode cycle as an inventory entry (ops as lists, not yet indexed)."""
    layers = tracer.layer_blocks
    sig = [[(b.linear, tuple(b.ops)) for b in layer] for layer in layers]
    agree = all(s == sig[0] for s in sig)
    entry: dict[str, Any] = {
        "model_type": config["model_type"], "path": f"{spec.base}_{'b1' if batch == 1 else 'bn'}",
        "base_path": spec.base, "batch": batch, "outliers": spec.outliers,
        "precision": spec.precision, "double_quant": spec.double_quant,
        "llm_int8_threshold": spec.threshold if spec.precision == "int8" else None,
        "layers_agree": agree, "n_layers_traced": len(layers),
        "layer": [_with_ops(b) for b in layers[0]],
        "pre": _with_ops(tracer.pre), "post": _with_ops(tracer.post),
        "outlier_injection_ops_excluded": tracer.skipped,
        "build": {k: built.attrs.get(k) for k in ("build_route", "compute_dtype",
                                                  "n_quantised_linears")},
    }
    between = [b for b in tracer.between if b.ops]
    if between:
        entry["between_layers"] = [_with_ops(b) for b in tracer.between]
    if not agree:
        entry["layer_variants"] = [[_with_ops(b) for b in layer] for layer in layers]
    return entry


def trace_step(config: dict, spec: PathSpec, batch: int, *, bnb_cuda=None,
               seed: int = 0) -> dict[str, Any]:
    """Trace one steady decode cycle of ``config`` on ``spec``'s path at ``batch``.

    Returns an inventory entry (ops as lists, not yet indexed) plus ``bnb_calls``: the CUDA
    counts of each bitsandbytes call variant seen.
    """
    import torch

    bnb_cuda = bnb_cuda or BnbCuda()
    built = build_model(config, spec.precision, CpuDevice(), seed=seed,
                        outlier_injection=spec.outliers, double_quant=spec.double_quant,
                        threshold=spec.threshold, route="module_replacement")
    model = built.model
    _force_cuda_branch(model)
    tracer = _Tracer(model, bnb_cuda)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, int(config["vocab_size"]), (batch, PROMPT_LEN), generator=gen)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                  min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0)
    out = _traced_generate(model, tracer, kwargs)
    if tuple(out.shape) != (batch, PROMPT_LEN + NEW_TOKENS) or tracer.forward_idx != 2:
        raise MeasurementError(f"unexpected generate: shape {tuple(out.shape)}, "
                               f"{tracer.forward_idx + 1} forwards")
    entry = _inventory_entry(config, spec, batch, tracer, built)
    entry["bnb_calls"] = tracer.bnb_calls
    return entry


def _with_ops(b: Block) -> dict[str, Any]:
    return {**b.counts(), "ops": list(b.ops)}


# -- the inventory file -----------------------------------------------------------------------
def _index_ops(obj, table: list, index: dict) -> None:
    """Replace every block's ``ops`` list by its index in ``table`` (in place)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("ops"), list) and "aten_ops" in obj:
            key = tuple(obj["ops"])
            if key not in index:
                index[key] = len(table)
                table.append(list(key))
            obj["ops"] = index[key]
        for v in obj.values():
            _index_ops(v, table, index)
    elif isinstance(obj, list):
        for v in obj:
            _index_ops(v, table, index)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def produced_by(command: str = COMMAND) -> dict[str, Any]:
    return {"torch": _version("torch"), "transformers": _version("transformers"),
            "bitsandbytes": _version("bitsandbytes"), "python": platform.python_version(),
            "qtsim": qtsim.__version__, "date": _dt.date.today().isoformat(), "device": "cpu",
            "command": command}


NOTES = [
    "Traced on the CPU (torch CPU build): each entry is one steady cycle of HF generate "
    "(greedy, max_new_tokens=min_new_tokens=3, prompt 5 tokens, use_cache=True, DynamicCache), "
    "from the start of the first decode forward to the start of the next; tiny random-weight "
    "models (hidden 128, 4 heads of 32, 2 KV heads, 2 layers, vocab 512); counts depend on the "
    "code path, not on sizes (tests/test_trace.py checks two widths agree).",
    "Quantised models are built by module replacement (bitsandbytes layers swapped in for "
    "nn.Linear except lm_head, as transformers' replace_with_bnb_linear does); 4-bit compute "
    "dtype is bf16 on the CPU (fp16 on CUDA): the ops are the same, the dtype is not recorded.",
    "CUDA-side Python branch: bnb 0.50 Linear4bit.forward repacks weights for AVX512-BF16 CPUs "
    "and then calls gemv_4bit (a CPU-only branch of matmul_4bit); the trace sets "
    "support_avx512bf16_for_cpu=False on every Linear4bit so matmul_4bit calls gemm_4bit as on "
    "CUDA. bnb.matmul (LLM.int8()) differs by device only in training (MatMul8bitFp on CPU/XPU); "
    "in inference both devices run MatMul8bitLt (int8_vectorwise_quant then int8_scaled_mm, or "
    "int8_mixed_scaled_mm when threshold > 0).",
    "bnb 0.50 calls gemm_4bit for every batch (no gemv_4bit on CUDA from Python): its CUDA "
    "implementation runs one fused kernel (cgemm_4bit_*) for M <= 4 rows and, for 5..1536 rows, "
    "picks fused kernel vs dequantize+F.linear by a per-GPU-architecture heuristic "
    "(_gemm_4bit_use_custom_cuda); batch 4 (the _bn entries) is below that floor, so larger "
    "batches may launch the dequantize fallback instead (see bnb_cuda_ops 'fallback' rows).",
    "int8 (threshold 6) is traced twice: outliers=true with add_outlier_hooks (8 input dims "
    "set to +-20 on every quantised linear; the hooks' own ops are excluded) and outliers=false "
    "(random weights: no activation outliers). On CUDA int8_vectorwise_quant with threshold > 0 "
    "syncs once per call ('if outliers.any():') and once more (argwhere -> nonzero) when there "
    "are outliers; int8_mixed_scaled_mm with outliers adds index, dequant and addmm kernels.",
    "kernels_cuda counts 1 per leaf aten op that is not a view or allocation (cuBLAS split-K, "
    "multi-kernel ops such as isin/cumsum/sort, and sdpa backends that split KV are not "
    "resolved) plus, per bitsandbytes op, what its CUDA implementation launches "
    "(bnb_cuda_ops). Scaled-dot-product attention decomposes on the CPU to "
    "_scaled_dot_product_flash_attention_for_cpu (1 op); on CUDA it becomes one flash / "
    "efficient-attention op, also counted as 1 kernel.",
    "Syncs are counted from ops that read device data on CUDA (sync_ops). On the CPU every "
    "tensor is on one device, so host-to-device copies that generate or the cache may issue on "
    "CUDA (torch.tensor(...) built on the host, then moved: lift_fresh + _to_copy) are not "
    "seen as copies; lift_fresh is counted as a view.",
    "bnb_cuda_ops keys name the CUDA code path (op[variant]); rows are synthetic runs of the "
    "CUDA implementation (128x256 weights) and the variants seen in the traces "
    "(seen_in_traces). With threshold > 0 and more than one row, int8_vectorwise_quant zeroes "
    "the outlier columns with an index_put_ even when there are none (an empty index: counted "
    "as a kernel, as the host still launches it), hence int8_bn's extra kernel per linear. "
    "lib_calls_ast is a static cross-check (launch sites reachable from the op, dtype "
    "alternatives once), not a per-call count.",
    "gemma2 alternates sliding-window and global attention layers: layers_agree is false and "
    "layer_variants holds each traced layer (layer = layer 0); pre builds both masks.",
]


#: the synthetic bitsandbytes problem: K inputs, N outputs (weights N x K)
SYNTH_K, SYNTH_N = 128, 256


def _synthetic_inputs() -> dict[str, Any]:
    """Seeded inputs of the bitsandbytes ops for :func:`bnb_cuda_table` (x1/x4: 1 and 4 rows,
    xo: 4 rows with outlier columns; packed 4-bit weights with absmax, nested absmax and code;
    int8 weights/activations with their scales)."""
    import torch

    g = torch.Generator().manual_seed(0)
    K, N = SYNTH_K, SYNTH_N
    t: dict[str, Any] = {"x1": torch.randn(1, K, generator=g, dtype=torch.float16),
                         "x4": torch.randn(4, K, generator=g, dtype=torch.float16)}
    t["xo"] = t["x4"].clone()
    t["xo"][:, ::16] = 20.0
    t["packed"] = torch.randint(0, 255, (N * K // 2, 1), generator=g, dtype=torch.uint8)
    t["absmax"] = torch.rand(N * K // 64, generator=g) + 0.5
    t["absmax8"] = torch.randint(0, 255, (N * K // 64,), generator=g, dtype=torch.uint8)
    t["absmax2"] = torch.rand(N * K // 64 // 256, generator=g) + 0.5
    t["code"] = torch.linspace(-1, 1, 256)
    t["offset"] = torch.tensor(0.1)
    t["CB"] = torch.randint(-127, 127, (N, K), generator=g, dtype=torch.int8)
    t["SCB"] = torch.rand(N, generator=g) + 0.5
    t["CA"] = torch.randint(-127, 127, (4, K), generator=g, dtype=torch.int8)
    t["SCA"] = torch.rand(4, generator=g) + 0.5
    t["i32"] = torch.randint(-1000, 1000, (4, N), generator=g, dtype=torch.int32)
    return t


def _bnb_cases(t: dict[str, Any]) -> dict[str, tuple[str, tuple, dict]]:
    """table key -> (bitsandbytes op, args, kwargs) over :func:`_synthetic_inputs`."""
    import torch

    K, N = SYNTH_K, SYNTH_N
    x1, x4, xo, packed, absmax, absmax8, absmax2, code = (
        t[k] for k in ("x1", "x4", "xo", "packed", "absmax", "absmax8", "absmax2", "code"))
    CA, CB, SCA, SCB = t["CA"], t["CB"], t["SCA"], t["SCB"]
    vq = "int8_vectorwise_quant"
    return {
        "gemv_4bit": ("gemv_4bit", (x1, packed, (N, K), absmax, code, 64), {}),
        "dequantize_4bit": ("dequantize_4bit", (packed, absmax, 64, "nf4", (N, K),
                                                torch.float16), {}),
        "dequantize_blockwise": ("dequantize_blockwise", (absmax8, absmax2, code, 256,
                                                          torch.float32), {}),
        "gemm_4bit[M<=4]": ("gemm_4bit", (x4, packed, (N, K), absmax, 64, "nf4"), {}),
        "gemm_4bit[M<=4, nested]": ("gemm_4bit", (x4, packed, (N, K), absmax2, 64, "nf4"),
                                    {"absmax_8bit": absmax8, "absmax_code": code,
                                     "absmax_offset": t["offset"]}),
        f"{vq}[threshold=0]": (vq, (x4, 0.0), {}),
        f"{vq}[threshold>0, no outliers, rows>1]": (vq, (x4, 6.0), {}),
        f"{vq}[threshold>0, no outliers, rows=1]": (vq, (x1, 6.0), {}),
        f"{vq}[threshold>0, outliers, rows>1]": (vq, (xo, 6.0), {}),
        f"{vq}[threshold>0, outliers, rows=1]": (vq, (xo[:1], 6.0), {}),
        "int8_linear_matmul": ("int8_linear_matmul", (CA, CB), {}),
        "int8_mm_dequant": ("int8_mm_dequant", (t["i32"], SCA, SCB), {}),
        "int8_scaled_mm": ("int8_scaled_mm", (CA, CB, SCA, SCB), {"dtype": torch.float16}),
        "int8_mixed_scaled_mm[no outliers]": ("int8_mixed_scaled_mm",
                                              (x4, CA, CB, SCA, SCB, None), {}),
        "int8_mixed_scaled_mm[outliers]": ("int8_mixed_scaled_mm",
                                           (xo, CA, CB, SCA, SCB,
                                            torch.arange(0, K, 16)), {}),
    }


def _count_case(bnb_cuda, op: str, args: tuple, kwargs: dict, ast_counts: dict) -> dict:
    """CUDA counts of one op call, or (where it cannot run here) its static launch sites."""
    try:
        c = bnb_cuda.count(op, args, kwargs)
        return {**c.as_dict(), "op": op, "backend": bnb_cuda.impl_for(op)[1]}
    except Exception as exc:  # noqa: BLE001 - fall back to the source, recorded
        n = ast_counts.get(op, 0)
        return {"kernels": n, "syncs": None, "aten_ops": None, "lib_calls": n,
                "method": "ast", "op": op, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}


def bnb_cuda_table(bnb_cuda) -> dict[str, dict[str, Any]]:
    """CUDA counts of the bitsandbytes ops on these paths, from synthetic inputs (each op
    run once through its CUDA implementation), including variants the traces do not reach."""
    t = _synthetic_inputs()
    ast_counts = lib_calls_by_ast()
    table = {key: _count_case(bnb_cuda, op, args, kwargs, ast_counts)
             for key, (op, args, kwargs) in _bnb_cases(t).items()}
    # gemm_4bit's dequantize + F.linear fallback (M in 5..1536, per-arch heuristic)
    ns = bnb_cuda.namespaces["bitsandbytes.backends.cuda.ops"]
    for key, kw in (("gemm_4bit[fallback]", {}),
                    ("gemm_4bit[fallback, nested]", {"absmax_8bit": t["absmax8"],
                                                     "absmax_code": t["code"],
                                                     "absmax_offset": t["offset"]})):
        absm = t["absmax2"] if kw else t["absmax"]
        c = bnb_cuda.count_callable(ns["_dequant_linear_fallback"],
                                    (t["x4"], t["packed"], (SYNTH_N, SYNTH_K), absm, 64, "nf4"),
                                    kw)
        table[key] = {**c.as_dict(), "op": "gemm_4bit", "backend": "cuda"}
    # static cross-check: lib.c* launch sites reachable from the op's function (one helper
    # deep, dtype alternatives counted once): not a per-call count
    for v in table.values():
        v["lib_calls_ast"] = ast_counts.get(v["op"])
    return table


def build_inventory(model_types=tuple(MODEL_SOURCES), specs=PATH_SPECS, batches=BATCHES,
                    *, hidden: int = 128, progress=None) -> dict[str, Any]:
    """Trace every (model type, path, batch) and assemble the inventory dict (schema 1)."""
    bnb_cuda = BnbCuda()
    entries, seen_calls = [], {}
    for mt in model_types:
        cfg = tiny_config(mt, hidden)
        for spec in specs:
            for batch in batches:
                t0 = time.perf_counter()
                e = trace_step(cfg, spec, batch, bnb_cuda=bnb_cuda)
                for k, v in e.pop("bnb_calls").items():
                    seen_calls.setdefault(k, v)
                entries.append(e)
                if progress:
                    n_l = sum(b["aten_ops"] for b in e["layer"])
                    progress(f"{mt:8s} {e['path']:11s} outliers={str(spec.outliers):5s} "
                             f"layer aten={n_l:4d} kernels_cuda="
                             f"{sum(b['kernels_cuda'] for b in e['layer']):4d} "
                             f"syncs={sum(b['syncs_cuda'] for b in e['layer'])} "
                             f"agree={e['layers_agree']} ({time.perf_counter() - t0:.1f} s)")
    table = bnb_cuda_table(bnb_cuda)
    for key, v in seen_calls.items():
        table.setdefault(key, {k: v[k] for k in ("kernels", "syncs", "aten_ops", "lib_calls",
                                                 "method", "ops", "op")})
        table[key]["seen_in_traces"] = True
    inv: dict[str, Any] = {
        "schema": SCHEMA, "produced_by": produced_by(),
        "sync_ops": sorted(SYNC_OPS), "view_ops": sorted(VIEW_OPS),
        "no_kernel_ops": sorted(ALLOC_OPS),
        "bnb_cuda_ops": dict(sorted(table.items())), "notes": list(NOTES),
        "entries": entries, "op_sequences": [],
    }
    index: dict = {}
    _index_ops(inv["entries"], inv["op_sequences"], index)
    for v in inv["bnb_cuda_ops"].values():
        v["ops"] = " ".join(v["ops"])
    return inv


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m qtsim.calibration.trace OUT.json", file=sys.stderr)
        return 2
    inv = build_inventory(progress=lambda s: print(s, flush=True))
    with open(argv[0], "w", encoding="utf-8") as f:
        json.dump(inv, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {argv[0]}: {len(inv['entries'])} entries, "
          f"{len(inv['op_sequences'])} op sequences")
    return 0


__all__ = ["PathSpec", "PATH_SPECS", "tiny_config", "trace_step", "build_inventory",
           "bnb_cuda_table", "produced_by", "main"]
