"""Host and device timelines of one decoding step, composed by the asynchronous rule.

DESIGN.md sec. 2a. On a CUDA GPU the host issues kernels asynchronously: kernel i starts when
the host has issued it and the device has finished kernel i-1. For the n operations between two
synchronisations, with host costs h_i and device costs d_i, the segment takes

    T = max_k ( h_1 + ... + h_k + d_k + ... + d_n )                                   (2a.1)

which lies between max(sum h, sum d) and sum h + sum d. A synchronisation (a read-back to the
host: ``.item()``, ``nonzero``, a Python ``if tensor.any():``) makes the host wait for the device,
so segments add. On a CPU host and device are one thread and every operation adds
(``overlap=False``: T = sum h + sum d).

A decoder step is periodic: ``pre`` (embedding, rotary tables, masks), L identical layers of m
blocks, ``post`` (final norm, lm_head, HF ``generate``'s logits processing and stopping test,
which synchronises once per step). A *block* is the run of operations up to and including one
linear call (q, k, v, o, gate, up, down) and a tail; grouping operations into blocks keeps the
closed form exact at block granularity. For layers without a synchronisation inside them, (2a.1)
over the whole step reduces to three candidates (the maximising k lies in ``pre``, in a layer,
or in ``post``):

    T = max( h_pre + d_pre + L D + d_post,
             h_pre + (L - 1) max(H, D) + M_1 + d_post,
             h_pre + L H + h_post + d_post )                                          (2a.2)

with H, D one layer's host and device sums and M_1 = max_k (P_k + S_k) the one-layer term of
(2a.1) (P prefix host sums, S suffix device sums). A layer whose blocks synchronise is split
into segments starting at each synchronising block; segments add (2a.1 each). Everything is
vectorised: block arrays carry the block axis last and broadcast with any grid in front.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _prefix(x) -> list:
    """Prefix sums of ``x`` along its last (block) axis, one array per block, in ``np.cumsum``'s
    order (the same floats): one cumsum for small arrays, else a loop of whole-array additions
    (a cumsum runs an inner loop per row over the short block axis)."""
    if x.size < SMALL_GRID:
        cs = np.cumsum(x, axis=-1)
        return [cs[..., k] for k in range(x.shape[-1])]
    out = [x[..., 0]]
    for k in range(1, x.shape[-1]):
        out.append(out[-1] + x[..., k])
    return out


def _suffix(x) -> list:
    """Suffix sums of ``x`` along its last (block) axis, one array per block (see :func:`_prefix`)."""
    if x.size < SMALL_GRID:
        cs = np.flip(np.cumsum(np.flip(x, axis=-1), axis=-1), axis=-1)
        return [cs[..., k] for k in range(x.shape[-1])]
    out = [x[..., -1]]
    for k in range(x.shape[-1] - 2, -1, -1):
        out.append(out[-1] + x[..., k])
    return out[::-1]


#: arrays smaller than this take the plain paths (temporaries cost less than the bookkeeping)
SMALL_GRID = 4096


def _envelope(p, a, c, batch, scale=1.0):
    """max_k (p_k + scale (a_k + batch c_k)): eq. (2a.1) for blocks whose device cost is affine
    in the batch (a + batch c, suffix sums ``a``, ``c``), stretched by ``scale`` (power capping),
    and host cost is not (prefix sums ``p``; each a list of per-block arrays). Only this last
    step runs at the grid's full shape, in two buffers of that shape (the same floats as the
    expression: only the operands of additions and products are swapped)."""
    unscaled = np.ndim(scale) == 0 and scale == 1.0
    if unscaled:
        out = (p[0] + a[0]) + batch * c[0]
    else:
        out = p[0] + scale * (a[0] + batch * c[0])
    if np.size(out) < SMALL_GRID:  # small: temporaries cost less than the bookkeeping
        return _envelope_small(out, p, a, c, batch, scale)
    shape = np.broadcast_shapes(np.shape(out), np.shape(batch), np.shape(scale),
                                *(np.shape(x) for x in (*p, *a, *c)))
    out = out if np.shape(out) == shape else np.broadcast_to(out, shape).copy()
    tmp = np.empty(shape)
    for pk, ak, ck in zip(p[1:], a[1:], c[1:], strict=True):
        if unscaled and not np.any(ck != 0.0):  # a flat line: no batch term
            np.maximum(out, pk + ak, out=out)
            continue
        np.multiply(batch, ck, out=tmp)
        if unscaled:
            np.add(tmp, pk + ak, out=tmp)
        else:
            np.add(tmp, ak, out=tmp)
            np.multiply(tmp, scale, out=tmp)
            np.add(tmp, pk, out=tmp)
        np.maximum(out, tmp, out=out)
    return out


def _envelope_small(out, p, a, c, batch, scale):
    """:func:`_envelope` term for term, from its first line ``out``, with plain expressions."""
    if np.ndim(scale) == 0 and scale == 1.0:
        for pk, ak, ck in zip(p[1:], a[1:], c[1:], strict=True):
            out = np.maximum(out, (pk + ak) + batch * ck if np.any(ck != 0.0) else pk + ak)
        return out
    for pk, ak, ck in zip(p[1:], a[1:], c[1:], strict=True):
        out = np.maximum(out, pk + scale * (ak + batch * ck))
    return out


def step_s(h_pre, d_pre, h_layer, d_layer, n_layers, h_post, d_post, *, sync=None,
           overlap: bool = True, batch=0.0, d_layer_per_seq=None, device_scale=1.0):
    """Wall time of one decoding step from its host and device timelines, s.

    Parameters
    ----------
    h_pre, d_pre, h_post, d_post : host / device time before the first layer and after the
        last one (``post`` ends with the step's synchronisation), s
    h_layer : host time of each block of one layer, block axis last, s
    d_layer, d_layer_per_seq : device time of each block of one layer is
        ``d_layer + batch * d_layer_per_seq`` (block axis last; s and s per sequence), so that
        prefix and suffix sums are taken once per model and only the envelope of eq. (2a.1)
        runs over the batch grid
    batch : sequences per step (any shape broadcasting with the rest)
    n_layers : L, layers per step (any broadcastable shape; fractional for synthetic families)
    sync : bool per block, True where a block synchronises with the device (None: none do)
    overlap : False on a CPU (host and device are the same thread: everything adds)
    device_scale : factor (>= 1, any shape broadcasting with ``batch``) stretching every device
        cost: a power-capped device runs its kernels at lower clocks
        (:func:`qtsim.model.power.cap_stretch`)

    Returns
    -------
    dict with ``step_s`` and the two timelines' totals ``host_s`` and ``device_s`` (what the
    step would take on either side alone), all s.
    """
    sums = layer_sums(h_layer, d_layer, d_layer_per_seq, sync if overlap else None)
    return compose(sums, h_pre, d_pre, n_layers, h_post, d_post, overlap=overlap, batch=batch,
                   device_scale=device_scale)


class LayerSums(NamedTuple):
    """One layer's block sums, taken once per model and reused for every batch and device
    scale (:func:`compose`): ``p``, ``a``, ``c`` the prefix host sums and suffix device sums
    (batch-independent, per sequence) over the layer's blocks, each a list of per-block arrays;
    ``segments`` the same per synchronisation segment where blocks synchronise (else empty)."""

    p: list
    a: list
    c: list
    segments: tuple = ()


def layer_sums(h_layer, d_layer, d_layer_per_seq=None, sync=None) -> LayerSums:
    """The :class:`LayerSums` of one layer's host and device block times (block axis last);
    ``sync`` as in :func:`step_s` (None: no block synchronises)."""
    h_layer = np.asarray(h_layer, float)
    d0 = np.asarray(d_layer, float)
    d1 = np.zeros_like(d0) if d_layer_per_seq is None else np.asarray(d_layer_per_seq, float)
    segs = ()
    if sync is not None and np.any(sync):
        shift = -int(np.argmax(sync))  # the layer starts at its first synchronising block
        hr, d0r, d1r = (np.roll(x, shift, axis=-1) for x in (h_layer, d0, d1))
        segs = tuple((_prefix(hr[..., lo:hi]), _suffix(d0r[..., lo:hi]), _suffix(d1r[..., lo:hi]))
                     for lo, hi in segments(np.roll(sync, shift)))
    return LayerSums(_prefix(h_layer), _suffix(d0), _suffix(d1), segs)


def compose(sums: LayerSums, h_pre, d_pre, n_layers, h_post, d_post, *, overlap: bool = True,
            batch=0.0, device_scale=1.0) -> dict:
    """:func:`step_s` from a layer's :class:`LayerSums` (the same arguments otherwise)."""
    b = np.asarray(batch, float)
    p, a, c = sums.p, sums.a, sums.c
    sc = device_scale
    big_h = p[-1]
    big_d = sc * (a[0] + b * c[0])
    d_pre, d_post = sc * d_pre, sc * d_post
    host = h_pre + n_layers * big_h + h_post
    device = d_pre + n_layers * big_d + d_post
    if not overlap:
        return {"step_s": host + device, "host_s": host, "device_s": device}
    if sums.segments:
        per_layer = 0.0
        for sp, sa, scc in sums.segments:
            per_layer = per_layer + _envelope(sp, sa, scc, b, sc)
        t = h_pre + d_pre + n_layers * per_layer + h_post + d_post
    else:
        m1 = _envelope(p, a, c, b, sc)
        t = np.maximum(np.maximum(
            h_pre + d_pre + n_layers * big_d + d_post,
            h_pre + np.maximum(n_layers - 1.0, 0.0) * np.maximum(big_h, big_d) + m1 + d_post),
            host + d_post)
    return {"step_s": t, "host_s": host, "device_s": device}


def segments(sync) -> list[tuple[int, int]]:
    """(start, stop) block ranges of the segments of a layer whose first block synchronises and
    whose other synchronising blocks (``sync`` True) start new segments."""
    bounds = list(np.flatnonzero(np.asarray(sync, bool))) + [len(sync)]
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def binding(host_s, device_s):
    """'host-bound' where the host timeline is the longer one, else 'device-bound'."""
    return np.where(np.asarray(host_s) > np.asarray(device_s), "host-bound", "device-bound")
