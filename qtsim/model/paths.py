"""The kernel-path vocabulary: the names of the code paths the model prices and a calibration
measures, and how a precision with its bitsandbytes settings maps onto them.

A *family* is what a user precision runs (:func:`path_family`): ``fp16``, ``bf16`` (16-bit),
``int8`` (LLM.int8(), ``llm_int8_threshold`` 6: outlier columns in fp16), ``int8_t0``
(threshold 0: no outlier decomposition), ``nf4``, ``nf4dq`` (NF4 with double quantisation),
``fp4`` and ``fp4dq``. A *path* is a family, or one *side* of it: ``_b1`` (batch 1, the GEMV
kernels) or ``_bn`` (batch >= 2). Calibration measures the 4-bit families per side
(:data:`PATHS`); a profile may split any family. A profile's coefficients are named per path
(:func:`param_name`, e.g. ``t_call_nf4_b1_s``), and a path it lacks falls back to a sibling
(:data:`FALLBACK`: fp4 -> nf4, nf4dq -> nf4, fp4dq -> nf4dq, bf16 <-> fp16, int8_t0 -> int8;
:func:`resolve_path`).
"""

from __future__ import annotations

from collections.abc import Mapping

from qtsim.errors import ProfileError, QtsimError
from qtsim.model.precision import get_precision

#: the 16-bit families; ``NATIVE`` is the reference one (the paper's GPUs' native dtype)
SIXTEEN_BIT = ("fp16", "bf16")
NATIVE = "fp16"
#: user precisions with a 4-bit bitsandbytes layer (and ``bnb_4bit_*`` settings)
FOUR_BIT_PRECISIONS = ("nf4", "fp4")
#: the 4-bit path families (bitsandbytes' NF4 / FP4, with or without double quantisation)
FOUR_BIT = ("nf4", "nf4dq", "fp4", "fp4dq")
#: llm_int8_threshold values with a kernel path of their own: threshold -> path family
INT8_THRESHOLDS = {0.0: "int8_t0", 6.0: "int8"}
DEFAULT_INT8_THRESHOLD = 6.0
FAMILIES = (*SIXTEEN_BIT, "int8", "int8_t0", *FOUR_BIT)
#: quantized families, longest name first (``int8_t0`` before ``int8``: safe in a regex)
QUANT_FAMILIES = tuple(sorted((f for f in FAMILIES if f not in SIXTEEN_BIT), key=len,
                              reverse=True))
SIDES = ("b1", "bn")
#: the paths a calibration measures: 4-bit families per side, the others whole
PATHS = tuple(p for f in FAMILIES
              for p in ((f"{f}_{s}" for s in SIDES) if f in FOUR_BIT else (f,)))
FALLBACK = {"fp4": "nf4", "nf4dq": "nf4", "fp4dq": "nf4dq", "bf16": "fp16", "fp16": "bf16",
            "int8_t0": "int8"}
#: a path's coefficients: per call (s), per weight and step (s/weight), per weight and token
PATH_COEFFS = ("t_call", "t_weight", "t_tokweight")


def param_name(path: str, coeff: str) -> str:
    """Profile key of one kernel-path coefficient, e.g. ``t_call_nf4_b1_s``."""
    return f"{coeff}_{path}_s"


def path_param_names(path: str) -> tuple[str, str, str]:
    """The three coefficient keys of ``path`` (:data:`PATH_COEFFS`)."""
    return tuple(param_name(path, c) for c in PATH_COEFFS)


def side(batch) -> str:
    """The side of a family a (scalar) batch runs: ``b1`` at batch 1, ``bn`` above."""
    return "b1" if batch <= 1 else "bn"


def split_side(path: str) -> tuple[str, str | None]:
    """(family, side or None): ``nf4dq_bn`` -> (``nf4dq``, ``bn``), ``int8_t0`` -> (``int8_t0``,
    None)."""
    if path.endswith(tuple(f"_{s}" for s in SIDES)):
        return path[:-3], path[-2:]
    return path, None


def split_path(path: str, batch) -> str:
    """The path split at batch 1, whatever it was: ``fp16`` at batch 4 -> ``fp16_bn``."""
    return f"{split_side(path)[0]}_{side(batch)}"


def path_at(family: str, batch) -> str:
    """The path a calibration measures for ``family`` at ``batch`` (:data:`PATHS`): the 4-bit
    families' side, the others whole (``nf4`` at 1 -> ``nf4_b1``, ``int8`` -> ``int8``)."""
    if family not in FAMILIES:
        raise QtsimError(f"unknown kernel-path family {family!r} (known: {', '.join(FAMILIES)})")
    return f"{family}_{side(batch)}" if family in FOUR_BIT else family


def path_family(precision: str, double_quant: bool = False,
                int8_threshold: float = DEFAULT_INT8_THRESHOLD) -> str:
    """Path family of a user precision: fp16, bf16, int8, int8_t0, nf4, nf4dq, fp4 or fp4dq."""
    p = get_precision(precision).name
    if p in FOUR_BIT_PRECISIONS and double_quant:
        return p + "dq"
    if p == "int8" and int8_threshold == 0:
        return INT8_THRESHOLDS[0.0]
    return p


def family_precision(family: str) -> tuple[str, bool]:
    """(user precision, double quantisation) a path family stores its weights in."""
    return ({"nf4dq": "nf4", "fp4dq": "fp4", "int8_t0": "int8"}.get(family, family),
            family in ("nf4dq", "fp4dq"))


def int8_threshold(family: str) -> float | None:
    """The ``llm_int8_threshold`` of an int8 family (None for the others)."""
    return {f: t for t, f in INT8_THRESHOLDS.items()}.get(family)


def family_settings(family: str) -> tuple[str, bool, float]:
    """(precision, double quantisation, llm_int8_threshold) that run ``family``: the inverse of
    :func:`path_family` (the threshold is the default where the family does not set it)."""
    precision, dq = family_precision(family)
    thr = int8_threshold(family)
    return precision, dq, DEFAULT_INT8_THRESHOLD if thr is None else thr


def fallbacks(path: str) -> list[str]:
    """``path`` then its stand-ins, nearest first: the unsplit family, then sibling families."""
    fam, sep, suffix = path.partition("_")
    if fam == "int8" and suffix.startswith("t0"):
        fam, suffix = "int8_t0", suffix[3:]
    suffix = suffix if suffix in SIDES else ""
    out, cur = [], fam
    while cur and cur not in out:
        out.append(cur)
        cur = FALLBACK.get(cur)
    names = []
    for f in out:
        if suffix:
            names.append(f"{f}_{suffix}")
        names.append(f)
    return names


def resolve_path(params: Mapping, path: str) -> str:
    """The path whose coefficients ``params`` holds for ``path`` (itself, or its fallback)."""
    for cand in fallbacks(path):
        if all(n in params for n in path_param_names(cand)):
            return cand
    raise ProfileError(f"profile has no coefficients for kernel path {path!r} "
                       f"(needs {', '.join(path_param_names(path))})")
