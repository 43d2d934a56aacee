"""Per-block operation counts of one decode step, as the timeline model consumes them.

Reads the traced operation inventory (``data/reference/op_inventory.json``, written by
``python -m qtsim.calibration.trace``; see :mod:`qtsim.inventory`) and arranges, for one kernel
path and batch side, arrays indexed by :data:`qtsim.architecture.MODEL_CLASSES` x the 8 blocks
of a layer (7 linear calls and a tail). Loaded once per process (cached).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from qtsim.architecture import MODEL_CLASSES
from qtsim.errors import QtsimError

N_BLOCKS = 8


def _entry(entries, model_type: str, family: str, side: str, outliers: bool):
    want = (f"{family}_{side}", family)
    for e in entries:
        if (e["model_type"] == model_type and e["path"] in want
                and (float(e["batch"]) <= 1) == (side == "b1")
                and bool(e.get("outliers", False)) == outliers):
            return e
    return None


@lru_cache(maxsize=64)
def path_blocks(family: str, side: str) -> dict:
    """Counts for path ``family`` (fp16, bf16, int8, int8_t0, nf4, nf4dq, fp4) at ``side``.

    Returns ``ops`` and ``kernels`` (classes x blocks: aten operations the host dispatches and
    kernels CUDA launches), ``sync`` (blocks: True where the block synchronises on CUDA),
    ``pre_ops``/``pre_kernels``/``post_ops``/``post_kernels`` (classes). LLM.int8() at threshold
    6 takes the traced entry with activation outliers where there is one (real models have them).
    A class the inventory lacks takes Llama's counts.
    """
    from qtsim.inventory import load_inventory

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
            raise QtsimError(f"the operation inventory has no trace of kernel path {family}_{side}")
        rows.append(e)
    for e in rows:
        if len(e["layer"]) != N_BLOCKS:
            raise QtsimError(f"inventory entry {e['model_type']}/{e['path']}: a layer must have "
                             f"{N_BLOCKS} blocks, has {len(e['layer'])}")
    arr = np.array
    out = {
        "ops": arr([[b["aten_ops"] for b in e["layer"]] for e in rows], float),
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
