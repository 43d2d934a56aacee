"""The software stack a prediction describes: which bitsandbytes release, and what follows.

One home for the version rules. bitsandbytes' 4-bit kernels changed with its release: up to
0.4x a 4-bit layer runs a fused GEMV at batch 1 and dequantises every weight to a 16-bit copy
then runs a GEMM at batch >= 2; from 0.50 (PR #1949) CUDA runs a fused 4-bit GEMM for batches 2
to 64 (:data:`qtsim.model.physical.FUSED_4BIT_MAX_BATCH`) and dequantises only above. A host
part states its stack's cap as ``h_fused4bit_max_batch``; :func:`stack_constants` gives the
constants of any release, so a planner can name the stack they run (``--bnb-version``).
Without one, predictions assume :data:`CURRENT_BNB`, the release ``pip install`` brings, and
say so beside every verdict.
"""

from __future__ import annotations

import re

from qtsim.errors import QtsimError
from qtsim.model.physical import FUSED_4BIT_MAX_BATCH

#: the bitsandbytes release ``pip install bitsandbytes`` brings today: the default stack
CURRENT_BNB = "0.50.2"
#: the first release with the fused 4-bit GEMM for batch 2-64 on CUDA (bitsandbytes PR #1949)
FUSED_4BIT_SINCE = (0, 50)
FUSED_4BIT_SOURCE = "bitsandbytes PR #1949 (fused 4-bit GEMM for batch 2-64 on CUDA, from 0.50)"
#: the constants a stack decides, by name
STACK_CONSTANTS = ("h_fused4bit_max_batch",)

_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?([.+-]?[0-9A-Za-z.+-]*)?\s*$")


def parse_version(text) -> tuple[int, int, int]:
    """(major, minor, patch) of a bitsandbytes version (``0.45.0.dev``, ``0.50.2``, ``v0.48``);
    a one-line :class:`QtsimError` for anything else."""
    m = _VERSION_RE.match(str(text))
    if not m:
        raise QtsimError(f"--bnb-version {text!r}: give a bitsandbytes version such as "
                         f"{CURRENT_BNB} or 0.45.0")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def fused4bit_max_batch(version) -> float:
    """Largest batch a 4-bit layer runs fused (no dequantisation) on CUDA with this release:
    :data:`FUSED_4BIT_MAX_BATCH` from 0.50, 0 before (every batch >= 2 dequantises)."""
    return FUSED_4BIT_MAX_BATCH if parse_version(version)[:2] >= FUSED_4BIT_SINCE else 0.0


def stack_constants(version) -> dict[str, tuple[float, str, str]]:
    """The host-part constants a bitsandbytes release decides: name -> (value, unit, basis)."""
    cap = fused4bit_max_batch(version)
    basis = (f"bitsandbytes {version}: fused 4-bit GEMM up to batch {cap:g} on CUDA "
             f"({FUSED_4BIT_SOURCE})" if cap else
             f"bitsandbytes {version}: no fused 4-bit GEMM (before 0.50): batch >= 2 dequantises "
             "then runs a 16-bit GEMM")
    return {"h_fused4bit_max_batch": (cap, "sequences", basis)}


def same_release(a, b) -> bool:
    """Whether two version strings name the same release (major, minor, patch)."""
    return parse_version(a) == parse_version(b)


def describe(bnb: dict | None) -> str:
    """``bitsandbytes 0.50.2 (assumed: the current release ...; host constants fitted on
    0.45.0.dev)`` from a profile's stack record (:meth:`HardwareProfile.with_stack`), or ''."""
    if not bnb:
        return ""
    why = [bnb["source"]] if bnb.get("source") else []
    if bnb.get("host_fitted_on"):
        why.append(f"host constants fitted on {bnb['host_fitted_on']}")
    return f"bitsandbytes {bnb['version']}" + (f" ({'; '.join(why)})" if why else "")
