"""The physical model ("physical" mode): decode-step time and energy from architecture counts.

Per decoding step (one token for each of B sequences), after DESIGN.md sec. 2 and 2a, a host
timeline and a device timeline (:func:`timelines`) are composed by :func:`qtsim.model.timeline.step_s`:
they overlap between synchronisations on a CUDA GPU and add on a CPU. Per linear block of a layer
the device time is

    kernels x t_kernel + t_call[path] + W (bytes_per_weight(path) / BW + t_weight[path])
                                      + B W t_tokweight[path]

with the KV cache and attention (B ctx kv_bytes_per_token / BW + attention FLOPs) and
``t_layertok`` in the o_proj block, and lm_head (in the activation path: LLM.int8() computes in
fp16, 4-bit in its compute dtype ``[hardware] compute_dtype_4bit``) plus B V ``t_vocab_s`` after
the layers. Any path may split into ``PATH_b1`` (batch 1: GEMV kernels) and ``PATH_bn`` (batch
>= 2). ``t_weight`` is the per-step, per-weight casting (dequantisation) time that batching
amortises; ``t_tokweight`` the per-token, per-weight time (the matmul, 2 FLOPs per weight, plus
per-token casting such as LLM.int8()'s activation quantisation) that batching does not.

Power in states (:mod:`qtsim.model.power`): ``p_awake_w`` over the whole step (context open,
clocks up, the device waiting for the host or working), plus ``e_byte_j`` per byte moved
(dequantisation traffic included) and ``e_flop_j`` per FLOP while it works; where that busy
power would exceed the board limit ``p_cap_w`` (else the TDP) the device timeline stretches
until it fits (power capping lowers clocks) and the step is recomposed from it.

Host and device timelines (:func:`timelines`, :mod:`qtsim.model.timeline`): in ``inventory`` mode
(the host part has ``h_op_s``) each block's host time is its traced aten operations x ``h_op_s``
+ CUDA kernels x ``h_launch_s`` + ``h_call_<path>_s`` per linear call, plus ``h_step_s`` per
step. Double counting on CPUs: a CPU calibration measures ``t_call_<path>_s`` with a linear
microbenchmark on the thread that also dispatches it, so ``t_call`` is the *whole* per-call
cost (dispatch of the linear's own aten ops, bitsandbytes' wrapper and the kernel). Such
profiles set ``[hardware] t_call_includes_dispatch = true`` (the Simulator passes it as the
params entry :data:`DISPATCH_FLAG`), and the host timeline then counts only each block's
non-linear ops (``ops - linear_ops``, traced per block); ``h_call_<path>_s`` is then the
in-model per-call cost beyond the microbenchmark's. GPU profiles (device time from kernels,
host from a host part) leave it unset: every traced op is host work there.

Kernel paths (the names calibration records, :mod:`qtsim.model.paths`): ``fp16``, ``bf16``,
``int8`` (LLM.int8(), threshold 6), ``int8_t0`` (threshold 0), ``nf4_b1``/``nf4_bn`` (batch 1 /
batch >= 2 code paths), ``nf4dq_*`` (double quantisation), ``fp4_*``, ``fp4dq_*``. A path the
profile lacks falls back to a sibling (fp4 -> nf4, nf4dq -> nf4, bf16 <-> fp16) and the
fallback is reported.

Everything broadcasts: parameters may carry a leading axis of Monte-Carlo draws and the
workload (batch, context, model counts) any shape that broadcasts with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qtsim.model import (
    inventory,  # local: the table loads once, on first use
    power,
    timeline,
)
from qtsim.model.architecture import NATIVE_BYTES, ArchCounts
from qtsim.model.paths import (
    FOUR_BIT,
    SIDES,
    SIXTEEN_BIT,
    fallbacks,
    family_precision,
    path_family,
    path_param_names,
    resolve_path,
)
from qtsim.model.precision import get_precision
from qtsim.model.results import QueryResult
from qtsim.model.workload import Workload

GLOBAL_PARAMS = ("mem_bw_gbs", "p_awake_w", "e_byte_j", "e_flop_j")

PARAM_UNITS = {
    "mem_bw_gbs": "GB/s", "t_step_s": "s", "t_layer_s": "s", "t_vocab_s": "s/(sequence*token)", "p_awake_w": "W",
    "e_byte_j": "J/byte", "e_flop_j": "J/FLOP", "t_call": "s", "t_weight": "s/weight",
    "t_tokweight": "s/(weight*token)",
}


def path_coefficients(params: Mapping, family: str, batch):
    """(t_call_s, t_weight_s, t_tokweight_s) for the code path ``batch`` selects in ``family``.

    Where the profile splits a family at batch 1 (GEMV kernels) and batch >= 2, the batch
    picks the side; otherwise one set serves every batch.
    """
    b1 = resolve_path(params, f"{family}_b1")
    bn = resolve_path(params, f"{family}_bn")
    if b1 == bn:
        return tuple(params[n] for n in path_param_names(b1))
    one = np.asarray(batch) <= 1
    return tuple(np.where(one, params[x], params[y])
                 for x, y in zip(path_param_names(b1), path_param_names(bn), strict=True))


def activation_family(family: str, native: str = "fp16", compute_dtype_4bit: str | None = None) -> str:
    """The 16-bit dtype a model at ``family`` computes activations (and its lm_head) in."""
    if family in SIXTEEN_BIT:
        return family
    if family in FOUR_BIT:
        return compute_dtype_4bit or native
    return "fp16"  # LLM.int8() runs its activations and outlier columns in fp16


def layer_floor(params: Mapping, family: str, batch):
    """(t_layer_s, t_layertok_s): per-layer per-step and per-layer per-sequence floor times.

    A calibrated profile may split the per-step part at batch 1 and batch >= 2
    (``t_layer_<fam>_b1_s`` / ``_bn_s``), as the kernels behind norms and attention differ.
    """
    for cand in fallbacks(family):
        tok = params.get(f"t_layertok_{cand}_s", params.get("t_layertok_s", 0.0))
        if f"t_layer_{cand}_b1_s" in params and f"t_layer_{cand}_bn_s" in params:
            one = np.asarray(batch) <= 1
            return np.where(one, params[f"t_layer_{cand}_b1_s"], params[f"t_layer_{cand}_bn_s"]), tok
        if f"t_layer_{cand}_s" in params:
            return params[f"t_layer_{cand}_s"], tok
    return params.get("t_layer_s", 0.0), params.get("t_layertok_s", 0.0)


def bytes_per_weight(counts: ArchCounts, family: str):
    """Bytes streamed per quantizable weight for a path family (scales included)."""
    if family in SIXTEEN_BIT:
        return NATIVE_BYTES
    precision, dq = family_precision(family)
    return counts.bits_per_weight(precision, double_quant=dq) / 8.0


def linear_bytes_per_weight(family: str, in_features: int) -> float:
    """Bytes per weight one linear layer of ``in_features`` inputs streams on a path family
    (scales included: int8's fp32 scale per output row, 4-bit's absmax per block), as a linear
    microbenchmark's layer stores it."""
    precision, dq = family_precision(family)
    p = get_precision(precision)
    return (p.bits + p.scale_bits_per_weight(int(in_features), dq)) / 8.0


def linear_weight_s(weights, bytes_per_weight, mem_bw_gbs, t_weight_s):
    """Per-step device time of a linear layer's ``weights``, s: W (bytes_per_weight / BW +
    t_weight), streaming each weight once at ``mem_bw_gbs`` GB/s and casting it (s/weight)."""
    return weights * (bytes_per_weight / (mem_bw_gbs * 1e9) + t_weight_s)


def linear_token_s(weights, t_tokweight_s):
    """Per-sequence (per-token) device time of a linear layer, s: W t_tokweight (s/weight/token)."""
    return weights * t_tokweight_s


def linear_call_s(weights, bytes_per_weight, batch, mem_bw_gbs, t_call_s, t_weight_s,
                  t_tokweight_s):
    """Device time of one call of a linear layer on a kernel path for ``batch`` sequences, s:
    ``t_call + W (bytes_per_weight / BW + t_weight) + B W t_tokweight``, the linear part of a
    block's device time in :func:`timelines` (and what a linear microbenchmark measures)."""
    return (t_call_s + linear_weight_s(weights, bytes_per_weight, mem_bw_gbs, t_weight_s)
            + linear_token_s(batch * weights, t_tokweight_s))


def host_call_s(params: Mapping, family: str, batch):
    """Host time per linear call of a path beyond its traced aten operations (bitsandbytes'
    Python wrappers, quant-state handling), ``h_call_<path>_s``; 0 where the host part has none."""
    vals = []
    for side in SIDES:
        v = 0.0
        for cand in fallbacks(f"{family}_{side}"):
            if f"h_call_{cand}_s" in params:
                v = params[f"h_call_{cand}_s"]
                break
        vals.append(v)
    return np.where(np.asarray(batch) <= 1, vals[0], vals[1])


#: largest batch at which bitsandbytes >= 0.50 runs its fused 4-bit GEMM on CUDA (PR #1949:
#: batch 2-64; the exact cap is per architecture and shape in 0.50.2's CUDA backend); a host
#: part states its stack's cap as ``h_fused4bit_max_batch`` (0: no fused kernel, as in 0.45)
FUSED_4BIT_MAX_BATCH = 64.0


def dequantizes(params: Mapping, family: str, batch, overlap: bool = False):
    """1.0 where a 4-bit path dequantises to a 16-bit copy then runs a GEMM (batch >= 2, and on
    CUDA only above the stack's fused-kernel cap), else 0.0; 0 for other paths."""
    b = np.asarray(batch, float)
    if family not in FOUR_BIT:
        return 0.0 * b
    cap = params.get("h_fused4bit_max_batch", FUSED_4BIT_MAX_BATCH) if overlap else 0.0
    return ((b > 1) & (b > cap)).astype(float)


#: model flag (``[hardware] t_call_includes_dispatch``, passed in the params mapping as 1.0 by
#: :class:`qtsim.simulate.simulator.Simulator`): the profile's ``t_call_<path>_s`` was measured by a linear
#: microbenchmark on the same thread that dispatches it (a CPU), so it already contains the host
#: dispatch of the linear's own aten ops; the host timeline then prices only each block's
#: non-linear ops (``ops - linear_ops`` of the inventory) with ``h_op_s``
DISPATCH_FLAG = "t_call_includes_dispatch"


def timeline_mode(params: Mapping) -> str:
    """``inventory`` where the host part prices traced operations (``h_op_s``), else ``lumped``
    (calibrations before the timeline model: a fitted per-layer and per-step host floor)."""
    return "inventory" if "h_op_s" in params else "lumped"


def timelines(counts: ArchCounts, family: str, context, params: Mapping,
              native: str = "fp16", compute_dtype_4bit: str | None = None, side: str = "bn",
              deq: float = 0.0, per_seq_scale=1.0):
    """Host and device timelines of one decoding step for one code path, s.

    ``side`` picks the traced code path (``b1``: batch 1, GEMV kernels; ``bn``: batch >= 2) and
    ``deq`` whether a 4-bit path dequantises then runs a 16-bit GEMM (:func:`dequantizes`).
    Device, per linear block: ``kernels x t_kernel_s`` + ``t_call`` + W (bytes/BW + t_weight)
    and, per sequence, W ``t_tokweight``; attention (KV-cache bytes and FLOPs per sequence) and
    ``t_layertok_s`` in the o_proj block; lm_head and logits (``t_vocab_s``) in ``post``. Host
    (``inventory`` mode): traced aten operations x ``h_op_s`` + kernels x ``h_launch_s`` (CUDA
    launches) + ``h_call_<path>_s`` per linear call, ``h_step_s`` per step; in ``lumped`` mode
    the fitted ``t_layer`` / ``t_step_s`` floor.

    Returns block arrays (block axis last) shaped like the model counts and parameters, not
    the batch grid: ``h_layer``, ``d_layer`` (batch-independent device part), ``d_layer_per_seq``
    (device time per sequence), the scalars-or-arrays ``h_pre``, ``d_pre``, ``h_post``,
    ``d_post0``, ``d_post1`` (post device time = d_post0 + batch d_post1) and ``sync``.
    ``per_seq_scale`` multiplies the per-sequence (per-token) device time: a prefill's GEMMs over
    many rows run at another efficiency than a decode's (``prefill_tok_scale``, fitted).
    """
    b_rep = 1.0 if side == "b1" else 2.0  # any batch on this side selects the same constants
    bw = params["mem_bw_gbs"]
    t_call, t_weight, t_tok = path_coefficients(params, family, b_rep)
    act = path_coefficients(params, activation_family(family, native, compute_dtype_4bit), b_rep)
    if side == "bn" and family in FOUR_BIT:  # casting only where it dequantises
        t_weight = t_weight * deq
    inv = inventory.path_blocks(family.replace("fp4dq", "nf4dq"), side)
    cls = _model_class(counts)
    is_lin = _IS_LINEAR
    kern = inv["kernels"][cls] + deq * inv["unfused_kernels"] * is_lin
    ops = inv["ops"][cls] + deq * inv["unfused_ops"] * is_lin

    w = _block_weights(counts)
    bpw = _blk(bytes_per_weight(counts, family))
    t_kernel = params.get("t_kernel_s", 0.0)
    d_layer = (kern * _blk(t_kernel) + _blk(t_call) * is_lin
               + linear_weight_s(w, bpw, _blk(bw), _blk(t_weight)))
    t_layer_lump, t_layertok = layer_floor(params, family, b_rep)
    attn_per_seq = (context * counts.kv_bytes_per_token / counts.n_layers / (bw * 1e9)
                    + context * counts.attn_flops_per_token_per_ctx / counts.n_layers * act[2] / 2.0
                    + t_layertok)
    onehot_o = np.eye(8)[3]
    d_layer_per_seq = linear_token_s(w, _blk(t_tok)) + _blk(attn_per_seq) * onehot_o
    if not (np.ndim(per_seq_scale) == 0 and per_seq_scale == 1.0):  # x * 1.0 is x
        d_layer_per_seq = d_layer_per_seq * _blk(per_seq_scale)
    head0, head1 = _lm_head_s(counts, act, bw, params.get("t_vocab_s", 0.0), per_seq_scale)
    d_post0 = inv["post_kernels"][cls] * t_kernel + head0
    d_pre = inv["pre_kernels"][cls] * t_kernel
    if timeline_mode(params) == "inventory":
        h_pre, h_layer, h_post = _host_timeline(params, family, inv, cls, ops, kern, deq, b_rep)
    else:  # lumped: the fitted per-layer floor spread evenly over the blocks
        h_layer = _blk(t_layer_lump) * np.full(8, 1.0 / 8)
        h_pre = 0.0
        h_post = params.get("t_step_s", 0.0)
    return {"h_pre": h_pre, "d_pre": d_pre, "h_layer": h_layer, "d_layer": d_layer,
            "d_layer_per_seq": d_layer_per_seq, "h_post": h_post, "d_post0": d_post0,
            "d_post1": head1, "sync": inv["sync"]}


def _model_class(counts: ArchCounts):
    """The model class index of every model of ``counts`` (:data:`~qtsim.model.architecture.MODEL_CLASSES`):
    one int where all share it (one architecture, or a synthetic family of one), so that the
    per-class operation counts stay per block and do not take the shape of the grid."""
    cls = np.asarray(counts.model_class, float).astype(int)
    if cls.ndim and cls.size and np.all(cls == cls.flat[0]):
        return int(cls.flat[0])
    return cls


def _block_weights(counts: ArchCounts):
    """Quantizable weights per layer in each of the 8 blocks (q, k, v, o, gate, up, down, norm
    and residual: none), block axis last."""
    return np.stack(np.broadcast_arrays(counts.w_qo, counts.w_kv, counts.w_kv, counts.w_qo,
                                        counts.w_mlp, counts.w_mlp, counts.w_mlp,
                                        0.0 * counts.w_qo), axis=-1)


def _lm_head_s(counts: ArchCounts, act, mem_bw_gbs, t_vocab_s, per_seq_scale=1.0):
    """(batch-independent, per-sequence) device time of the 16-bit lm_head and logits, s: its
    weights streamed at ``mem_bw_gbs`` on the activation path ``act`` = (t_call, t_weight,
    t_tokweight), and ``t_vocab_s`` per vocabulary entry per sequence."""
    once = counts.n_native_streamed * (NATIVE_BYTES / (mem_bw_gbs * 1e9) + act[1]) + act[0]
    per_seq = (counts.n_native_streamed * act[2] + counts.vocab_size * t_vocab_s) * per_seq_scale
    return once, per_seq


def _blk(x):
    """A per-model or per-draw quantity with the block axis (last, 8 blocks) added."""
    return np.expand_dims(np.asarray(x, float), -1)


_IS_LINEAR = np.r_[np.ones(7), 0.0]  # the 7 linear blocks of a layer, then the rest


def _host_timeline(params: Mapping, family: str, inv: dict, cls, ops, kern, deq, b_rep):
    """(h_pre, h_layer, h_post) in ``inventory`` mode, s: traced aten operations x ``h_op_s`` +
    kernels x ``h_launch_s`` + ``h_call_<path>_s`` per linear call, ``h_step_s`` per step; the
    linear's own ops are left out where ``t_call`` already holds them (:data:`DISPATCH_FLAG`)."""
    h_op, h_launch = params["h_op_s"], params.get("h_launch_s", 0.0)
    if params.get(DISPATCH_FLAG, 0.0):  # t_call already holds the linear's own dispatch
        ops = ops - (inv["linear_ops"][cls] + deq * inv["unfused_ops"] * _IS_LINEAR)
    h_layer = (ops * _blk(h_op) + kern * _blk(h_launch)
               + _blk(host_call_s(params, family, b_rep)) * _IS_LINEAR)
    h_pre = inv["pre_ops"][cls] * h_op + inv["pre_kernels"][cls] * h_launch
    h_post = (inv["post_ops"][cls] * h_op + inv["post_kernels"][cls] * h_launch
              + params.get("h_step_s", 0.0))
    return h_pre, h_layer, h_post


def step_timelines(counts: ArchCounts, family: str, batch, context, params: Mapping,
                   native: str = "fp16", compute_dtype_4bit: str | None = None,
                   overlap: bool = False, per_seq_scale=1.0, device_scale=1.0) -> dict:
    """One decoding step composed from its timelines (:func:`qtsim.model.timeline.step_s`).

    Returns ``step_s`` (wall time), ``host_s`` and ``device_s`` (each timeline alone), s.
    ``overlap`` is True on CUDA GPUs (asynchronous launches), False on CPUs. Batches on
    either side of a kernel switch (batch 1 / >= 2; fused / dequantising 4-bit GEMM) take
    their own code path's timelines. ``device_scale`` (>= 1, broadcasting with ``batch``)
    stretches the device timeline of a power-capped device (:func:`qtsim.model.power.cap_stretch`).
    """
    b = np.asarray(batch, float)
    parts = _path_timelines(counts, family, b, context, params, native, compute_dtype_4bit,
                            overlap, per_seq_scale)
    return _compose(parts, counts, b, overlap, device_scale)


def _path_timelines(counts: ArchCounts, family: str, b, context, params: Mapping, native: str,
                    compute_dtype_4bit: str | None, overlap: bool, per_seq_scale) -> list:
    """[(batches selected, :func:`timelines`, their :class:`~qtsim.model.timeline.LayerSums`)]
    for each code path some batch of ``b`` takes (batch 1; >= 2 fused or not dequantising;
    >= 2 dequantising). The sums are taken once and serve every composition of the step."""
    deq = dequantizes(params, family, b, overlap)
    one = b <= 1
    parts = []
    for side, d, sel in (("b1", 0.0, one), ("bn", 0.0, ~one & (deq == 0)),
                         ("bn", 1.0, ~one & (deq > 0))):
        if np.any(sel):
            tl = timelines(counts, family, context, params, native, compute_dtype_4bit, side, d,
                           per_seq_scale)
            sums = timeline.layer_sums(tl["h_layer"], tl["d_layer"], tl["d_layer_per_seq"],
                                       tl["sync"] if overlap else None)
            parts.append((sel, tl, sums))
    return parts


def _compose(parts: list, counts: ArchCounts, b, overlap: bool, device_scale=1.0) -> dict:
    """The step of each code path's timelines (:func:`qtsim.model.timeline.compose`), each batch
    taking its own path's. Where paths split the batch axis (the last), each path is composed
    only on the batch columns it takes (the same floats, less work: the batch-1 GEMV path of
    a 200-batch grid composes one column, not 200)."""
    if len(parts) == 1:
        _, tl, sums = parts[0]
        return timeline.compose(sums, tl["h_pre"], tl["d_pre"], counts.n_layers, tl["h_post"],
                                tl["d_post0"] + b * tl["d_post1"], overlap=overlap, batch=b,
                                device_scale=device_scale)
    out = {}
    for sel, tl, sums in parts:
        per_model = (tl["h_pre"], tl["d_pre"], tl["h_post"], tl["d_post0"], tl["d_post1"],
                     counts.n_layers, *sums.p, *sums.a, *sums.c)
        cols, bb, sc = _batch_columns(sel, b, device_scale, per_model)
        r = timeline.compose(sums, tl["h_pre"], tl["d_pre"], counts.n_layers, tl["h_post"],
                             tl["d_post0"] + bb * tl["d_post1"], overlap=overlap, batch=bb,
                             device_scale=sc)
        if cols is None:
            out = r if not out else {k: np.where(sel, r[k], out[k]) for k in r}
            continue
        whole = bool(np.all(sel[..., cols]))  # the path takes every batch of its columns
        for k, v in r.items():
            shape = np.shape(v)[:-1] + (b.shape[-1],)
            if k not in out:
                out[k] = np.full(np.broadcast_shapes(shape, sel.shape), np.nan)
            elif np.shape(out[k]) != np.broadcast_shapes(np.shape(out[k]), shape):
                out[k] = np.broadcast_to(out[k], np.broadcast_shapes(np.shape(out[k]), shape)).copy()
            out[k][..., cols] = v if whole else np.where(sel[..., cols], v, out[k][..., cols])
    return out


def _batch_columns(sel, b, device_scale, per_model=()):
    """(columns, batch, device scale) restricted to the columns of the batch axis (the last)
    where ``sel`` selects some batch (a slice where they are contiguous, as on a sorted batch
    axis); (None, b, device_scale) where that saves nothing, or where the batch's last axis is
    not a batch axis of a grid (a ``per_model`` quantity varies along it too: points given one
    by one)."""
    if b.ndim == 0 or b.shape[-1] < 2:
        return None, b, device_scale
    if any(np.ndim(x) and np.shape(x)[-1] != 1 for x in per_model):
        return None, b, device_scale
    cols = np.flatnonzero(np.any(sel.reshape(-1, b.shape[-1]), axis=0))
    if cols.size == b.shape[-1]:
        return None, b, device_scale
    if cols.size and cols[-1] - cols[0] + 1 == cols.size:
        cols = slice(int(cols[0]), int(cols[-1]) + 1)
    sc = device_scale
    if np.ndim(sc) and np.shape(sc)[-1] == b.shape[-1]:
        sc = sc[..., cols]
    return cols, b[..., cols], sc


def step_time_s(counts: ArchCounts, family: str, batch, context, params: Mapping,
                native: str = "fp16", compute_dtype_4bit: str | None = None,
                overlap: bool = False):
    """Wall time of one decoding step (one token for each of ``batch`` sequences), s.

    ``context`` is the number of tokens already in the KV cache; ``native`` the reference
    16-bit dtype and ``compute_dtype_4bit`` the 4-bit models' compute dtype (default native).
    """
    return step_timelines(counts, family, batch, context, params, native, compute_dtype_4bit,
                          overlap)["step_s"]


#: bytes per weight a dequantise-then-GEMM step moves beyond reading the quantized weights: the
#: 16-bit copy written and read back (the lower bound of that path's device work per weight)
DEQ_BYTES_PER_WEIGHT = 2.0 * NATIVE_BYTES


def step_bytes(counts: ArchCounts, family: str, batch, context, deq=0.0):
    """Bytes moved in one step: weights at precision, the KV cache, and where ``deq``
    (:func:`dequantizes`) the 16-bit copy a dequantise-then-GEMM path writes and reads back
    (2 x 2 bytes per quantizable weight)."""
    return (counts.n_quant_weights * bytes_per_weight(counts, family)
            + NATIVE_BYTES * counts.n_native_streamed
            + deq * DEQ_BYTES_PER_WEIGHT * counts.n_quant_weights
            + batch * context * counts.kv_bytes_per_token)


#: FLOPs per weight per token of a linear layer (one multiply-add)
FLOPS_PER_WEIGHT = 2.0


def step_flops(counts: ArchCounts, batch, context):
    """FLOPs of one step: 2 per weight per token, plus attention over the context."""
    return batch * (FLOPS_PER_WEIGHT * (counts.n_quant_weights + counts.n_native_streamed)
                    + context * counts.attn_flops_per_token_per_ctx)


def step_energy_j(time_s, bytes_, flops, params: Mapping):
    """Energy of one step of wall time ``time_s`` moving ``bytes_`` and computing ``flops``, J:
    the power states of :func:`qtsim.model.power.step_energy_j` (eq. P.1)."""
    return power.step_energy_j(time_s, bytes_, flops, params)


def linear_call_energy_j(time_s, weights, bytes_per_weight, batch, params: Mapping):
    """Energy of one linear layer call of ``time_s`` for ``batch`` sequences, J: the power model
    of :func:`step_energy_j` over its weights' bytes and :data:`FLOPS_PER_WEIGHT` per weight per
    sequence (what a linear microbenchmark meters)."""
    return step_energy_j(time_s, weights * bytes_per_weight,
                         batch * (FLOPS_PER_WEIGHT * weights), params)


def capped_step(counts: ArchCounts, family: str, batch, context, params: Mapping, tdp_w,
                bytes_, flops, native: str = "fp16", compute_dtype_4bit: str | None = None,
                overlap: bool = False, per_seq_scale=1.0) -> dict:
    """One step's timelines with power capping applied, and its energy.

    The device timeline is stretched where its busy power would exceed the board limit and its
    dynamic energy lowered (:func:`qtsim.model.power.cap_stretch`, eq. P.3), and the step
    recomposed from the stretched timeline (the same timelines composed again, only where
    some point is capped: the second composition is skipped otherwise). Returns the
    :func:`step_timelines` dict plus ``energy_j`` (eq. P.1), ``e_dyn_j`` (dynamic energy spent)
    and ``cap_stretch`` (1 where the device runs at full clocks).
    """
    b = np.asarray(batch, float)
    parts = _path_timelines(counts, family, b, context, params, native, compute_dtype_4bit,
                            overlap, per_seq_scale)
    st = _compose(parts, counts, b, overlap)
    e_dyn = power.dynamic_energy_j(bytes_, flops, params["e_byte_j"], params["e_flop_j"])
    dev = st["device_s"] if overlap else st["step_s"]
    stretch = power.cap_stretch(e_dyn, dev, params["p_awake_w"], power.power_cap_w(params, tdp_w))
    capped = stretch > 1.0
    if np.any(capped):  # only capped points take the recomposed step (bit-stable under tiling)
        st2 = _compose(parts, counts, b, overlap, device_scale=stretch)
        st = {k: np.where(capped, st2[k], st[k]) for k in st}
    return {**st, "energy_j": power.step_energy_j(st["step_s"], bytes_, flops, params, stretch),
            "e_dyn_j": power.capped_dynamic_j(e_dyn, stretch), "cap_stretch": stretch}


def prefill_tok_scale(params: Mapping, family: str):
    """Per-token device-time factor of a prefill's GEMMs on ``family``: the fitted
    ``prefill_tok_scale_<family>``, else ``prefill_tok_scale``, else 1."""
    return params.get(f"prefill_tok_scale_{family}", params.get("prefill_tok_scale", 1.0))


def prefill_timelines(counts: ArchCounts, family: str, batch, prompt_tokens, params: Mapping,
                      native: str = "fp16", compute_dtype_4bit: str | None = None,
                      overlap: bool = False) -> dict:
    """The first ``generate`` call (prefill of ``batch`` x ``prompt_tokens`` tokens and its first
    token) as one step at ``batch x prompt`` rows over half the prompt's context, its per-token
    device time scaled by ``prefill_tok_scale_<family>`` (else ``prefill_tok_scale``: a GEMM over
    many rows runs at another efficiency per row than the microbenchmarked batches, and each
    kernel family differently) and ``h_prefill_s`` added (generate's one-off
    host work: cache and mask set-up); both fitted from the calibration decodes' first-token
    times, 1 and 0 where a profile has none. Returns ``step_s``, ``host_s``, ``device_s``.
    """
    b = np.asarray(batch, float)
    prompt = np.asarray(prompt_tokens, float)
    pre = step_timelines(counts, family, b * np.maximum(prompt, 1.0), prompt / 2.0, params,
                         native, compute_dtype_4bit, overlap,
                         per_seq_scale=prefill_tok_scale(params, family))
    extra = params.get("h_prefill_s", 0.0)
    return {**pre, "step_s": pre["step_s"] + extra, "host_s": pre["host_s"] + extra}


def query(counts: ArchCounts, workload: Workload, params: Mapping, tdp_w, native: str = "fp16",
          compute_dtype_4bit: str | None = None, overlap: bool = False):
    """Latency, throughput and energy of one batch of queries (prefill + K-1 decode steps).

    ``workload``: precision with its bitsandbytes settings, batch B (any shape that broadcasts
    with the counts and parameters), new tokens K and prompt tokens. ``compute_dtype_4bit`` is
    the profile's 4-bit compute dtype, used where the workload names none.

    Returns a :class:`~qtsim.model.results.QueryResult` of arrays: ``step_s`` (mean decode
    step), ``host_s`` / ``device_s`` (the decode step's two timelines alone, the device's
    stretched where power-capped), ``prefill_s``, ``latency_s`` (whole batch), ``tok_per_s``
    (all sequences), ``j_per_query`` (power states, :mod:`qtsim.model.power`),
    ``j_per_query_hli`` (TDP x latency / B, the paper's HLI), ``avg_power_w``, ``step_j`` (one
    decode step, all sequences); the decode step's power-state mix ``busy_frac``, ``busy_w``,
    ``awake_frac``, ``awake_w`` and ``cap_stretch`` (device slow-down from the board limit).
    """
    family = workload.family
    cd = workload.bnb.compute_dtype or compute_dtype_4bit
    b = np.asarray(workload.batch, dtype=float)
    k = np.asarray(workload.new_tokens, dtype=float)
    prompt = np.asarray(workload.prompt_tokens, dtype=float)
    ctx = prompt + k / 2.0
    st = capped_step(counts, family, b, ctx, params, tdp_w,
                     step_bytes(counts, family, b, ctx, dequantizes(params, family, b, overlap)),
                     step_flops(counts, b, ctx), native, cd, overlap)
    step = st["step_s"]
    pre_tokens = b * np.maximum(prompt, 1.0)
    pre = capped_step(counts, family, pre_tokens, prompt / 2.0, params, tdp_w,
                      step_bytes(counts, family, 1.0, 0.0,
                                 dequantizes(params, family, pre_tokens, overlap))
                      + pre_tokens * prompt / 2 * counts.kv_bytes_per_token,
                      step_flops(counts, pre_tokens, prompt / 2), native, cd, overlap,
                      per_seq_scale=prefill_tok_scale(params, family))
    extra = params.get("h_prefill_s", 0.0)
    prefill = pre["step_s"] + extra
    n_steps = np.maximum(k - 1.0, 0.0)
    latency = prefill + n_steps * step
    energy = pre["energy_j"] + params["p_awake_w"] * extra + n_steps * st["energy_j"]
    mix = power.state_mix(step, st["device_s"], st["e_dyn_j"], params["p_awake_w"], overlap)
    return QueryResult(
        step_s=step, host_s=st["host_s"], device_s=st["device_s"],
        prefill_s=prefill, latency_s=latency,
        tok_per_s=b * k / latency, j_per_query=energy / b,
        j_per_query_hli=tdp_w * latency / b, avg_power_w=energy / latency,
        step_j=st["energy_j"], **mix, cap_stretch=st["cap_stretch"],
    )


def peak_memory_bytes(counts: ArchCounts, precision: str, batch, new_tokens, prompt_tokens,
                      double_quant: bool = False, overhead_bytes=0.0):
    """Peak device memory: resident weights, the full KV cache, dequantisation workspace."""
    p = get_precision(precision)
    weights = counts.weight_bytes(p.name if p.name != "fp4" else "nf4", double_quant)
    kv = np.asarray(batch, float) * (np.asarray(prompt_tokens, float) + new_tokens) \
        * counts.kv_bytes_per_token
    workspace = NATIVE_BYTES * counts.max_linear_weights if p.quantized else 0.0
    return weights + kv + workspace + overhead_bytes


def paper_constants(counts: ArchCounts, workload: Workload, params: Mapping, tdp_w,
                    native: str = "fp16", compute_dtype_4bit: str | None = None,
                    overlap: bool = False, context=0.0):
    """The paper's alpha, gamma, phi(h, p) derived from the physical model at batch 1.

    ``workload`` gives the precision p with its bitsandbytes settings (its batch and tokens
    are not used: the constants are per hop at batch 1 over ``context`` cached tokens);
    ``compute_dtype_4bit`` is the profile's, used where the workload names none.
    At B = 1 the physical energy per hop is split exactly as eq. 19 writes it,
    E_hop(p) = gamma + alpha p + phi(h, p):

    - ``alpha_j_per_bit``: energy to stream one bit of every quantizable weight once, J/bit per
      hop, i.e. (e_byte + p_awake / BW) x W_q / 8 (the awake power burnt while the bytes move);
    - ``gamma_j``: E_hop(native) - 16 alpha, the precision-independent part, J;
    - ``phi_j``: E_hop(p) - gamma - alpha p, the casting energy, J (0 at native).
    """
    compute_dtype_4bit = workload.bnb.compute_dtype or compute_dtype_4bit
    bw_bytes_per_s = params["mem_bw_gbs"] * 1e9
    alpha = (params["e_byte_j"] + params["p_awake_w"] / bw_bytes_per_s) \
        * counts.n_quant_weights / 8.0
    fam_n = path_family(native)
    fam_p = workload.family

    def e_hop(fam):
        return capped_step(counts, fam, 1.0, context, params, tdp_w,
                           step_bytes(counts, fam, 1.0, context), step_flops(counts, 1.0, context),
                           native, compute_dtype_4bit, overlap)["energy_j"]

    e_nat = e_hop(fam_n)
    gamma = e_nat - 16.0 * alpha
    bits = get_precision(workload.precision).bits
    phi = e_hop(fam_p) - gamma - alpha * bits
    return {"alpha_j_per_bit": alpha, "gamma_j": gamma, "phi_j": phi}
