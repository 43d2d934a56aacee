"""How one traced aten op maps to CUDA work: a kernel, no kernel (view, allocation), a sync.

The lists are what the op inventory (:mod:`qtsim.calibration.trace.step`) counts with; they are
written into the inventory file so a reader can audit them. Rules, for a leaf aten op (one
that reaches a backend kernel; composite ops are decomposed first):

- a **view** op (:data:`VIEW_OPS`) changes only tensor metadata: a host dispatch, no kernel;
- an **allocation** or metadata op (:data:`ALLOC_OPS`) launches no kernel either;
- a **sync** op (:data:`SYNC_OPS`) makes the host wait for the device on CUDA (a read-back:
  ``item``/``_local_scalar_dense``, ``nonzero``, ``masked_select``...); boolean-mask indexing
  (``index.Tensor`` / ``index_put_`` with a bool index) syncs too (CUDA turns the mask into
  indices with ``nonzero``);
- every other leaf op counts one CUDA kernel (an approximation: cuBLAS may split a GEMM in two,
  ``isin``/``cumsum``/``sort`` may launch several; ``_local_scalar_dense`` is a device-to-host
  copy, counted as a sync and not as a kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "t", "transpose", "expand", "slice", "select",
    "unsqueeze", "squeeze", "as_strided", "detach", "detach_", "alias", "permute", "split",
    "split_with_sizes", "unbind", "chunk", "narrow", "view_as", "expand_as", "unfold",
    "diagonal", "_reshape_alias", "unsqueeze_", "squeeze_", "t_", "transpose_", "lift_fresh",
    "_nested_view_from_buffer", "movedim", "swapaxes", "flatten", "unflatten", "numpy_T",
    "real", "imag", "view_as_real", "view_as_complex", "_conj", "_neg_view", "conj",
})
"""Ops that only make a new view of existing storage (no kernel). ``lift_fresh`` (wrapping a
freshly built constant tensor) is included: on the CPU it moves nothing."""

ALLOC_OPS = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "resize_",
    "set_", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "is_same_size",
    "_has_compatible_shallow_copy_type", "record_stream", "_assert_async",
})
"""Non-view ops that launch no kernel: allocations without initialisation, metadata, and the
device-to-host read of ``_local_scalar_dense`` (counted as a sync instead)."""

SYNC_OPS = frozenset({
    "_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "argwhere",
    "masked_select", "equal", "unique", "_unique", "_unique2", "unique_consecutive",
    "unique_dim", "repeat_interleave", "bincount", "histc", "masked_scatter",
    "_assert_async", "allclose", "tolist",
})
"""Ops that read device data back to the host on CUDA. ``item``/``is_nonzero``/``argwhere``/
``allclose`` are composite and reach the dispatcher as ``_local_scalar_dense``/``nonzero``;
they are listed so the list reads as the brief's. ``repeat_interleave`` syncs only with a
tensor of repeats and no ``output_size``; it is counted as a sync whenever it appears."""

BOOL_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


@dataclass(frozen=True)
class OpKind:
    """What a leaf op costs on CUDA: ``view`` (no kernel), ``kernel`` (0/1), ``sync`` (0/1)."""

    view: int
    kernel: int
    sync: int


def base_name(func) -> str:
    """``aten::index_put_.default`` -> ``index_put_``."""
    return func.name().split("::")[-1].split(".")[0]


def _has_bool_index(args) -> bool:
    import torch

    for a in args[1:2]:
        if isinstance(a, (list, tuple)):
            return any(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in a)
    return False


def classify(func, args=()) -> OpKind:
    """The :class:`OpKind` of a leaf aten op called with ``args``."""
    name = base_name(func)
    sync = name in SYNC_OPS or (name in BOOL_INDEX_OPS and _has_bool_index(args))
    if name in VIEW_OPS:
        return OpKind(view=1, kernel=0, sync=0)
    return OpKind(view=0, kernel=0 if name in ALLOC_OPS else 1, sync=int(sync))


def leaf_name(func, args=()) -> str:
    """The recorded name: ``aten::mm``, ``aten::index.Tensor[bool]`` for a mask index."""
    full = func.name()  # "aten::mm", "aten::add.Tensor" (the overload, unless default)
    if base_name(func) in BOOL_INDEX_OPS and _has_bool_index(args):
        full += "[bool]"
    return full


def decompose_if_composite(mode, func, args, kwargs):
    """Run a CompositeImplicitAutograd aten op through its decomposition with ``mode``
    active (so the leaf ops it issues are seen); ``NotImplemented`` for leaf ops.

    torch 2.13 hands a dispatch mode composite ops (``aten::linear``, ``aten::to``,
    ``aten::reshape``, ``aten::scaled_dot_product_attention``) before decomposing them;
    which leaves they become (``to`` to nothing when no cast is needed, ``linear`` to
    ``t`` + ``mm``...) is what decides kernels.
    """
    import torch

    if func.namespace != "aten" or not torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), torch._C.DispatchKey.CompositeImplicitAutograd):
        return NotImplemented
    with mode:
        return func.decompose(*args, **kwargs)


__all__ = ["VIEW_OPS", "ALLOC_OPS", "SYNC_OPS", "OpKind", "classify", "leaf_name",
           "base_name", "decompose_if_composite"]
