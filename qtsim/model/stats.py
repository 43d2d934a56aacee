"""Shared units and uncertainty bands of the simulator, thresholds, surfaces and reports.

One home for the 68% band (:data:`BAND`), the percentile helpers that summarise Monte-Carlo
draws (:func:`nan_percentiles`, :func:`band`) and the GiB unit memory figures are reported in.
"""

from __future__ import annotations

import numpy as np

from qtsim.errors import QtsimError

GIB = 2**30  # bytes per GiB
BAND = (16.0, 84.0)  # percentiles of the draws: a 68% band, one sigma for a normal
#: fewest Monte-Carlo draws behind a band: with fewer, the 16th and 84th percentiles are the
#: extreme draws themselves (one draw gives a "band" that may exclude its own central value
#: and a 0% or 100% share for every verdict)
MIN_DRAWS = 10


def check_draws(n: int, option: str = "--draws", allow_zero: bool = True) -> int:
    """``n`` if it is 0 (no bands, where ``allow_zero``) or at least :data:`MIN_DRAWS`; else a
    one-line :class:`~qtsim.errors.QtsimError`."""
    if (n == 0 and allow_zero) or n >= MIN_DRAWS:
        return n
    zero = "0 (no bands) or " if allow_zero else ""
    raise QtsimError(f"{option} {n}: give {zero}at least {MIN_DRAWS} draws (with fewer the 68% "
                     "band is the extreme draws themselves and every share of draws is 0% or 100%)")


def gib_texts(*gib: float, decimals: int = 1) -> list[str]:
    """GiB figures printed with as many decimals as it takes to tell unequal ones apart (from
    ``decimals`` up to 4, then in bytes): "needs 14.9 GiB, has 14.9 GiB" never hides the
    difference that decides whether a model fits."""
    vals = [float(x) for x in gib]
    for d in range(decimals, 5):
        texts = [f"{x:.{d}f} GiB" for x in vals]
        if all(texts[i] != texts[j] or vals[i] == vals[j]
               for i in range(len(vals)) for j in range(i)):
            return texts
    return [f"{x * GIB:,.0f} bytes" for x in vals]


def nan_percentiles(x, qs=BAND):
    """Percentiles along axis 0 ignoring NaN and inf (numpy's linear method), vectorised.

    ``np.nanpercentile`` loops over columns in Python once any NaN is present; this sorts once.
    Columns with no finite value give NaN.
    """
    x = np.asarray(x, float)
    x = np.where(np.isfinite(x), x, np.nan)
    s = np.sort(x, axis=0)  # NaN last
    n = np.sum(~np.isnan(x), axis=0)
    top = np.maximum(n - 1, 0)
    out = []
    for q in qs:
        pos = q / 100.0 * top
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, top)
        v_lo = np.take_along_axis(s, lo[None], 0)[0]
        v_hi = np.take_along_axis(s, hi[None], 0)[0]
        out.append(np.where(n > 0, v_lo + (pos - lo) * (v_hi - v_lo), np.nan))
    return out


def band(x):
    """(median, low, high) of Monte-Carlo draws (1-D), ignoring NaN and inf; NaN if none finite."""
    lo, med, hi = nan_percentiles(np.asarray(x, float).ravel(), (BAND[0], 50.0, BAND[1]))
    return med, lo, hi
