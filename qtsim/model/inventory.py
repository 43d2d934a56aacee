"""Read the operation inventory: traced op, kernel and sync counts per decode step.

``data/reference/op_inventory.json`` is written by ``python -m qtsim.calibration.trace``
(see that module for how it is traced and what each field means). This reader imports no
torch: the planner uses it to build host and device timelines (DESIGN.md sec. 2a).

Per traced (model type, path, batch) the inventory holds one decoder layer as a list of
**blocks** (the ops up to and including one linear, in execution order, then ``tail``), and
the ``pre`` (before the first layer) and ``post`` (after the last layer, including HF
``generate``'s per-step work up to the next forward) regions. Counts are per call of one
block; per step a layer's blocks repeat ``num_hidden_layers`` times.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qtsim.errors import QtsimError, suggest
from qtsim.model.architecture import MODEL_CLASS_OF, MODEL_CLASSES

COUNT_FIELDS = ("aten_ops", "view_ops", "bnb_ops", "kernels_cuda", "syncs_cuda", "modules")
"""The per-block counts :func:`layer_counts` returns as arrays (one element per block)."""



class InventoryError(QtsimError):
    """An unknown model type or path, or an inventory file that cannot be read."""


@functools.lru_cache(maxsize=4)
def _load(path: str | None) -> dict[str, Any]:
    try:
        if path is None:
            res = importlib.resources.files("qtsim.data.reference") / "op_inventory.json"
            text = res.read_text(encoding="utf-8")
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        inv = json.loads(text)
    except (OSError, ValueError) as exc:
        raise InventoryError(f"cannot read the op inventory {path or 'op_inventory.json'}: "
                             f"{exc}") from None
    if inv.get("schema") != 1 or "entries" not in inv:
        raise InventoryError(f"op inventory has schema {inv.get('schema')!r}, expected 1")
    return inv


def load_inventory(path: str | None = None) -> dict[str, Any]:
    """The inventory dict (schema 1): ``produced_by``, ``sync_ops``, ``view_ops``,
    ``bnb_cuda_ops``, ``notes``, ``entries``, ``op_sequences``. ``path`` ``None`` reads the
    copy shipped in ``qtsim.data.reference``. Cached: do not mutate the result."""
    return _load(path)


@dataclass
class LayerCounts:
    """Counts for one (model type, path, batch).

    ``blocks``: per-block arrays (int, one element per block, in execution order) for each of
    :data:`COUNT_FIELDS`; ``linears``: the block names (``q_proj`` ... ``tail``); ``pre`` and
    ``post``: dicts of the same counts (and ``sync_at``, ``ops``) for the regions before the
    first layer and after the last; ``layers_agree``: whether every traced layer had the same
    op sequence (if not, e.g. gemma2's sliding/global alternation, ``variants`` holds each
    traced layer's per-block arrays and ``blocks`` is layer 0's); ``entry``: the raw entry.
    """

    model_type: str
    path: str
    batch: int
    outliers: bool
    linears: list[str]
    blocks: dict[str, np.ndarray]
    pre: dict[str, Any]
    post: dict[str, Any]
    layers_agree: bool
    variants: list[dict[str, np.ndarray]] = field(default_factory=list)
    entry: dict[str, Any] = field(default_factory=dict, repr=False)

    def per_layer(self, name: str) -> int:
        """Sum of count ``name`` over one layer's blocks."""
        return int(self.blocks[name].sum())

    def per_step(self, name: str, n_layers: int) -> int:
        """Count ``name`` for a whole decode step of ``n_layers`` layers (pre + layers +
        post); with disagreeing layers, traced layer variants alternate."""
        if self.variants:
            per = [int(v[name].sum()) for v in self.variants]
            layers = sum(per[i % len(per)] for i in range(n_layers))
        else:
            layers = n_layers * self.per_layer(name)
        return int(self.pre[name]) + layers + int(self.post[name])


def _arrays(blocks: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([b[k] for b in blocks], dtype=np.int64) for k in COUNT_FIELDS}


def _resolve_ops(region: dict, seqs: list) -> dict[str, Any]:
    out = dict(region)
    if isinstance(out.get("ops"), int):
        out["ops"] = list(seqs[out["ops"]])
    return out


def model_types(inventory: dict | None = None) -> list[str]:
    """The traced model types."""
    inv = inventory or load_inventory()
    return sorted({e["model_type"] for e in inv["entries"]})


def paths(inventory: dict | None = None) -> list[str]:
    """The traced path names with batch suffix (``fp16_b1``, ``nf4dq_bn`` ...)."""
    inv = inventory or load_inventory()
    return sorted({e["path"] for e in inv["entries"]})


def layer_counts(model_type: str, path: str, batch: int | None = None, *,
                 outliers: bool | None = None, inventory: dict | None = None) -> LayerCounts:
    """Traced counts of one decoder layer and the pre/post regions.

    Parameters
    ----------
    model_type : str
        HF ``model_type`` (``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma2``); Llama-
        layout types without a trace (``falcon3``) map to ``llama``.
    path : str
        A path with batch suffix (``nf4_b1``, ``int8_bn``), or without (``fp16``, ``int8``,
        ``int8_t0``, ``nf4``, ``nf4dq``, ``fp4``), then ``batch`` picks: 1 -> ``_b1``, more
        -> ``_bn`` (default 1).
    batch : int, optional
        Sequences decoded together; must agree with a suffix if both are given.
    outliers : bool, optional
        For ``int8`` (threshold 6): ``True`` (default) the trace with injected activation
        outliers (LLM.int8()'s fp16 outlier path runs), ``False`` the one without. Other paths
        have one trace (``outliers`` false); asking them for ``True`` is an error.

    Raises
    ------
    InventoryError
        Unknown model type or path, or a batch that contradicts the suffix.
    """
    inv = inventory or load_inventory()
    known_types = {e["model_type"] for e in inv["entries"]}
    mt = model_type.lower()
    mt = mt if mt in known_types else MODEL_CLASS_OF.get(mt, mt)
    if mt not in known_types:
        raise InventoryError(f"no traced op inventory for model type {model_type!r}"
                             + suggest(model_type, sorted(known_types)))
    p = path.lower()
    if p.endswith(("_b1", "_bn")):
        if batch is not None and (batch == 1) != p.endswith("_b1"):
            raise InventoryError(f"path {path!r} does not run at batch {batch}")
    else:
        if batch is not None and batch < 1:
            raise InventoryError(f"batch must be >= 1, got {batch}")
        p = f"{p}_{'b1' if (batch or 1) == 1 else 'bn'}"
    cands = [e for e in inv["entries"] if e["model_type"] == mt and e["path"] == p]
    if not cands:
        raise InventoryError(f"no traced op inventory for path {path!r}"
                             + suggest(p, sorted({e["path"] for e in inv["entries"]})))
    want = outliers if outliers is not None else any(e["outliers"] for e in cands)
    chosen = [e for e in cands if e["outliers"] == want]
    if not chosen:
        raise InventoryError(f"path {path!r} has no trace with outliers={want}")
    e = chosen[0]
    seqs = inv.get("op_sequences", [])
    variants = [_arrays(layer) for layer in e.get("layer_variants", [])]
    return LayerCounts(
        model_type=mt, path=p, batch=int(e["batch"]), outliers=bool(e["outliers"]),
        linears=[b["linear"] for b in e["layer"]], blocks=_arrays(e["layer"]),
        pre=_resolve_ops(e["pre"], seqs), post=_resolve_ops(e["post"], seqs),
        layers_agree=bool(e["layers_agree"]), variants=variants, entry=e,
    )


def block_ops(counts: LayerCounts, inventory: dict | None = None) -> list[list[str]]:
    """The op-name sequence of each block of ``counts``' layer (for auditing)."""
    seqs = (inventory or load_inventory()).get("op_sequences", [])
    return [list(seqs[b["ops"]]) if isinstance(b["ops"], int) else list(b["ops"])
            for b in counts.entry["layer"]]


__all__ = ["COUNT_FIELDS", "InventoryError", "LayerCounts", "load_inventory", "layer_counts",
           "block_ops", "model_types", "paths"]


# ---- the arrays the timeline model consumes --------------------------------------------------
N_BLOCKS = 8


def _entry(entries, model_type: str, family: str, side: str, outliers: bool):
    want = (f"{family}_{side}", family)
    for e in entries:
        if (e["model_type"] == model_type and e["path"] in want
                and (float(e["batch"]) <= 1) == (side == "b1")
                and bool(e.get("outliers", False)) == outliers):
            return e
    return None


@functools.lru_cache(maxsize=64)
def path_blocks(family: str, side: str) -> dict:
    """Counts for path ``family`` (fp16, bf16, int8, int8_t0, nf4, nf4dq, fp4) at ``side``.

    Returns ``ops`` and ``kernels`` (classes x blocks: aten operations the host dispatches and
    kernels CUDA launches), ``linear_ops`` (classes x blocks: the part of ``ops`` dispatched
    inside the block's linear module), ``sync`` (blocks: True where the block synchronises on CUDA),
    ``pre_ops``/``pre_kernels``/``post_ops``/``post_kernels`` (classes). LLM.int8() at threshold
    6 takes the traced entry with activation outliers where there is one (real models have them).
    A class the inventory lacks takes Llama's counts.
    """
    entries = load_inventory()["entries"]
    rows = []
    for mt in MODEL_CLASSES:
        e = None
        for cls in (mt, "llama"):
            e = (_entry(entries, cls, family, side, True) if family == "int8" else None) \
                or _entry(entries, cls, family, side, False)
            if e is None and family == "fp4":
                e = _entry(entries, cls, "nf4", side, False)
            if e is not None:
                break
        if e is None:
            raise InventoryError(f"the operation inventory has no trace of kernel path {family}_{side}")
        rows.append(e)
    for e in rows:
        if len(e["layer"]) != N_BLOCKS:
            raise InventoryError(f"inventory entry {e['model_type']}/{e['path']}: a layer must have "
                             f"{N_BLOCKS} blocks, has {len(e['layer'])}")
    arr = np.array
    out = {
        "ops": arr([[b["aten_ops"] for b in e["layer"]] for e in rows], float),
        # aten ops inside the linear module's own forward (0 in inventories traced before
        # the field existed, and in the tail block)
        "linear_ops": arr([[b.get("linear_ops", 0) for b in e["layer"]] for e in rows], float),
        "kernels": arr([[b["kernels_cuda"] for b in e["layer"]] for e in rows], float),
        "sync": arr([b["syncs_cuda"] > 0 for b in rows[0]["layer"]], bool),
        "pre_ops": arr([e["pre"]["aten_ops"] for e in rows], float),
        "pre_kernels": arr([e["pre"]["kernels_cuda"] for e in rows], float),
        "post_ops": arr([e["post"]["aten_ops"] for e in rows], float),
        "post_kernels": arr([e["post"]["kernels_cuda"] for e in rows], float),
    }
    out.update(unfused_extra(load_inventory()["bnb_cuda_ops"], family))
    for v in out.values():
        v.setflags(write=False)
    return out


def unfused_extra(cuda_ops: dict, family: str) -> dict:
    """Extra CUDA kernels and host operations per linear call when a 4-bit path at batch >= 2
    dequantises then runs a 16-bit GEMM (bitsandbytes < 0.50, or a batch above the fused
    kernel's range) instead of the fused 4-bit GEMM the traced stack takes.

    From the CUDA backend's own counts (``bnb_cuda_ops``: ``gemm_4bit[fallback]`` against
    ``gemm_4bit[M=4]``, nested variants for double quantisation); 0 for other paths.
    """
    if family not in ("nf4", "nf4dq", "fp4"):
        return {"unfused_kernels": np.float64(0.0), "unfused_ops": np.float64(0.0)}
    nest = ", nested" if family == "nf4dq" else ""
    slow, fast = cuda_ops[f"gemm_4bit[fallback{nest}]"], cuda_ops[f"gemm_4bit[M=4{nest}]"]
    return {"unfused_kernels": np.float64(slow["kernels"] - fast["kernels"]),
            "unfused_ops": np.float64(slow["aten_ops"] - fast["aten_ops"])}
