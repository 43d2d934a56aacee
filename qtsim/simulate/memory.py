"""How much memory a run will need, estimated before it starts, and a one-line refusal when the
machine does not have it (rather than an internal MemoryError minutes later).

The estimates are per-point costs measured on this code (``tests/test_never_mislead_2.py``
pins them against a real run): Monte-Carlo draws of ``qtsim trap`` cost
:data:`TRAP_BYTES_PER_DRAW` each (B* and N* search their grids for every draw), a surface
cell of ``qtsim simulate`` :data:`SURFACE_BYTES_PER_VALUE` per stored quantity.
"""

from __future__ import annotations

import os

from qtsim.errors import QtsimError
from qtsim.simulate.thresholds import B_GRID, N_GRID

#: temporaries per grid point and draw in the B* and N* searches (measured: 17.4 KB per draw
#: over the 360 grid points, i.e. about 6 float64 arrays, since issue 21 searches each draw on
#: a coarse grid and refines it where it crosses (128 KB, 44 arrays, before); 8 keeps a margin)
ARRAYS_PER_THRESHOLD_POINT = 8
TRAP_BYTES_PER_DRAW = (B_GRID + N_GRID) * 8 * ARRAYS_PER_THRESHOLD_POINT
TRAP_BASE_BYTES = 48 * 2**20  # interpreter, numpy, profile and model (measured about 41 MB)
#: a stored surface value is float64, and xarray and the writer hold it about twice
SURFACE_BYTES_PER_VALUE = 16
#: quantities per grid point without draws, and the bands and shares draws add
SURFACE_QUANTITIES, SURFACE_BAND_QUANTITIES = 36, 45
#: at most this many batch sizes on a --batch LO:HI:N axis (before any memory estimate: the
#: axis itself is built in memory)
MAX_BATCHES = 10_000_000


def available_bytes() -> float:
    """Memory this process can still take without swapping: ``MemAvailable`` (Linux), else
    physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def _gib(x: float) -> str:
    return f"{x / 2**30:.3g} GiB"


def check_memory(need_bytes: float, what: str, advice: str, have_bytes: float | None = None) -> None:
    """Refuse in one line when ``need_bytes`` exceeds the memory available now."""
    have = available_bytes() if have_bytes is None else have_bytes
    if need_bytes > have:
        raise QtsimError(f"{what} needs about {_gib(need_bytes)} of memory and this machine has "
                         f"{_gib(have)} available: {advice}")


def trap_bytes(n_draws: int) -> float:
    """Estimated peak memory of one ``qtsim trap`` with ``n_draws`` Monte-Carlo draws, bytes."""
    return TRAP_BASE_BYTES + n_draws * TRAP_BYTES_PER_DRAW


def check_trap_draws(n_draws: int, have_bytes: float | None = None) -> None:
    """Refuse ``--draws`` that cannot fit in memory, naming the largest that would."""
    have = available_bytes() if have_bytes is None else have_bytes
    most = int(max(have - TRAP_BASE_BYTES, 0) // TRAP_BYTES_PER_DRAW)
    check_memory(trap_bytes(n_draws), f"--draws {n_draws}",
                 f"use --draws {most} or fewer (each draw searches B* and N* over "
                 f"{B_GRID + N_GRID} grid points)", have)


def surface_bytes(n_points: int, n_draws: int = 0) -> float:
    """Estimated memory of a surface of ``n_points`` (gpu x precision x model x batch)."""
    per_point = SURFACE_QUANTITIES + (SURFACE_BAND_QUANTITIES if n_draws else 0)
    return float(n_points) * per_point * SURFACE_BYTES_PER_VALUE


def check_surface(n_points: int, n_draws: int = 0, have_bytes: float | None = None) -> None:
    """Refuse a grid whose surface cannot fit in memory."""
    check_memory(surface_bytes(n_points, n_draws),
                 f"a grid of {n_points:,} points (GPU x precision x model x batch)",
                 "use fewer batches, model sizes or draws", have_bytes)
