"""Statistics of the trust probe (pure numpy/scipy): binomial intervals, the per-hop reliability
of eq. 7, the per-hop extra error eps of a precision, and Theorem 4.5's batch invariance.

The paper's eq. 7 writes the accuracy of a K-hop chain as a product over hops,
P(y) = prod_k P(h_k | h_<k). If every hop succeeds with the same probability r (the *per-hop
reliability*), accuracy at depth k is ``r**k`` (:func:`fit_hop_reliability`). qtsim's
compounding model (:mod:`qtsim.model.trust`) puts the precision's extra error on every hop:
T_p(k) = T_ref(k) (1 - eps_p)^k, i.e. r_p = r_ref (1 - eps_p) (:func:`fit_eps`).

Intervals are 95% by default: Clopper-Pearson for a binomial proportion
(:func:`binomial_ci`), profile likelihood for the fitted reliability and eps (the set of values
whose likelihood-ratio statistic stays below the chi-square(1) quantile). Goodness of fit of
the constant-reliability model is the deviance G^2 against the saturated model (one accuracy
per k), chi-square with K - 1 degrees of freedom: a small p-value says accuracy does *not*
fall as r^k (per-hop reliability changes with depth, or errors do not compound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qtsim.model.trust import t_si_compound

LEVEL = 0.95
_TINY = 1e-12


def binomial_ci(successes, n, level: float = LEVEL):
    """Clopper-Pearson (exact) interval of a binomial proportion: (low, high), arrays welcome."""
    from scipy import stats

    s = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    a = 1.0 - level
    lo = np.where(s > 0, stats.beta.ppf(a / 2, np.maximum(s, _TINY), n - s + 1), 0.0)
    hi = np.where(s < n, stats.beta.ppf(1 - a / 2, s + 1, np.maximum(n - s, _TINY)), 1.0)
    return lo, hi


def _nll(r, hops, s, n) -> float:
    """Negative binomial log-likelihood of accuracy r**k at each depth k."""
    p = np.clip(np.power(r, hops), _TINY, 1 - 1e-15)
    fail = n - s
    return float(-(s * np.log(p)).sum() - (fail * np.log1p(-p)).sum())


def _nll_saturated(s, n) -> float:
    p = s / n
    with np.errstate(divide="ignore", invalid="ignore"):
        ll = np.where(s > 0, s * np.log(np.where(p > 0, p, 1)), 0.0) + \
            np.where(n - s > 0, (n - s) * np.log(np.where(p < 1, 1 - p, 1)), 0.0)
    return float(-ll.sum())


def _profile_bounds(nll, best_x, best, lo, hi, level):
    """Where 2 (nll(x) - best) crosses the chi-square(1) quantile on each side of ``best_x``
    inside [lo, hi] (the end itself when it never does)."""
    from scipy import optimize, stats

    crit = stats.chi2.ppf(level, 1) / 2.0

    def g(x):
        return nll(x) - best - crit

    left = lo if g(lo) <= 0 or best_x <= lo else optimize.brentq(g, lo, best_x, xtol=1e-10)
    right = hi if g(hi) <= 0 or best_x >= hi else optimize.brentq(g, best_x, hi, xtol=1e-10)
    return float(left), float(right)


@dataclass(frozen=True)
class HopFit:
    """Per-hop reliability r of acc(k) = r**k with its interval and goodness of fit."""

    reliability: float
    low: float
    high: float
    deviance: float  # G^2 against one accuracy per depth
    dof: int
    p_value: float  # of the constant-reliability model (small: it does not fit)
    level: float = LEVEL

    def to_dict(self) -> dict:
        return asdict(self)


def fit_hop_reliability(hops, successes, n, level: float = LEVEL) -> HopFit:
    """Maximum-likelihood r in acc(k) = r**k from ``successes`` of ``n`` at each depth ``hops``.

    The fit is constrained to 0 < r <= 1; its interval is the profile-likelihood one.
    """
    from scipy import optimize, stats

    k, s, n = (np.asarray(v, dtype=float) for v in (hops, successes, n))
    if not (len(k) == len(s) == len(n)) or len(k) == 0 or (n <= 0).any() or (s > n).any():
        raise ValueError("need matching, non-empty hops, successes <= n and n > 0")
    lo_r = 1e-9

    def nll(r):
        return _nll(r, k, s, n)

    if (s == n).all():
        best_r = 1.0
    else:
        res = optimize.minimize_scalar(nll, bounds=(lo_r, 1.0), method="bounded",
                                       options={"xatol": 1e-12})
        best_r = float(res.x)
        if nll(1.0) < res.fun:  # bounded search stops short of the edge
            best_r = 1.0
    best = nll(best_r)
    low, high = _profile_bounds(nll, best_r, best, lo_r, 1.0, level)
    dev = max(0.0, 2.0 * (best - _nll_saturated(s, n)))
    dof = max(len(k) - 1, 0)
    p = float(stats.chi2.sf(dev, dof)) if dof > 0 else float("nan")
    return HopFit(best_r, low, high, dev, dof, p, level)


@dataclass(frozen=True)
class EpsFit:
    """Per-hop extra error eps of a precision against a reference: r_p = r_ref (1 - eps)."""

    eps: float
    low: float
    high: float
    reference: str
    level: float = LEVEL

    def to_dict(self) -> dict:
        return asdict(self)


def fit_eps(hops, s_ref, n_ref, s_p, n_p, reference: str = "fp16",
            level: float = LEVEL) -> EpsFit:
    """eps in r_p = r_ref (1 - eps), both sides r**k, fitted jointly; profile-likelihood interval.

    eps < 0 means the precision was more reliable per hop than the reference.
    """
    from scipy import optimize

    k = np.asarray(hops, dtype=float)
    sr, nr, sp, npr = (np.asarray(v, dtype=float) for v in (s_ref, n_ref, s_p, n_p))

    def joint(eps):
        # the best reference reliability r for this eps, with r (1 - eps) kept in (0, 1]
        r_max = 1.0 if eps >= 0 else 1.0 / (1.0 - eps)
        r_max = min(1.0, r_max)

        def f(r):
            return _nll(r, k, sr, nr) + _nll(r * (1.0 - eps), k, sp, npr)

        res = optimize.minimize_scalar(f, bounds=(1e-6, r_max), method="bounded",
                                       options={"xatol": 1e-12})
        return float(min(res.fun, f(r_max)))

    lo_e, hi_e = -0.5, 0.999
    res = optimize.minimize_scalar(joint, bounds=(lo_e, hi_e), method="bounded",
                                   options={"xatol": 1e-10})
    best_e, best = float(res.x), float(res.fun)
    for edge in (0.0,):  # the optimum sits at 0 when neither side ever fails
        if joint(edge) < best:
            best_e, best = edge, joint(edge)
    low, high = _profile_bounds(joint, best_e, best, lo_e, hi_e, level)
    return EpsFit(best_e, low, high, reference, level)


def compounding_curve(t_ref_at_k, eps: float, hops):
    """Eq. 7 with a constant per-hop extra error: T_ref(k) (1 - eps)^k at each depth k."""
    return np.asarray(t_ref_at_k, dtype=float) * np.array(
        [t_si_compound(eps, k) for k in np.asarray(hops, dtype=float)])


def hop_position_reliability(hops_right_hist, level: float = LEVEL) -> dict:
    """P(hop i right | hops before it right), pooled over every depth k >= i.

    ``hops_right_hist[j]``: for the problems of depth k = j + 1, how many had exactly 0..k hops
    right before their first error. Returns positions 1..K with survivors, successes, the rate
    and its interval: eq. 7's factors, one per hop position.
    """
    kmax = len(hops_right_hist)
    surv = np.zeros(kmax)
    succ = np.zeros(kmax)
    for hist in hops_right_hist:
        h = np.asarray(hist, dtype=float)
        k = len(h) - 1
        at_least = h[::-1].cumsum()[::-1]  # at_least[i] = #(hops_right >= i)
        surv[:k] += at_least[:k]
        succ[:k] += at_least[1:k + 1]
    rate = np.divide(succ, surv, out=np.full(kmax, np.nan), where=surv > 0)
    lo, hi = binomial_ci(succ, np.maximum(surv, 1), level)
    return {"position": list(range(1, kmax + 1)), "survivors": surv.astype(int).tolist(),
            "successes": succ.astype(int).tolist(), "reliability": rate.tolist(),
            "low": np.where(surv > 0, lo, np.nan).tolist(),
            "high": np.where(surv > 0, hi, np.nan).tolist()}


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point."""
    return bool(a[0] <= b[1] and b[0] <= a[1])


def ratio_ci(s_p, n_p, s_ref, n_ref, level: float = LEVEL):
    """T_SI = acc_p / acc_ref with Katz's log interval: (ratio, low, high), arrays welcome
    (nan where either side has no success)."""
    from scipy import stats

    sp, npr, sr, nr = (np.asarray(v, dtype=float) for v in (s_p, n_p, s_ref, n_ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (sp / npr) / (sr / nr)
        se = np.sqrt(1 / sp - 1 / npr + 1 / sr - 1 / nr)
        z = stats.norm.ppf(0.5 + level / 2)
        lo, hi = ratio * np.exp(-z * se), ratio * np.exp(z * se)
    bad = (sp <= 0) | (sr <= 0)
    return (np.where(bad, np.nan, ratio), np.where(bad, np.nan, lo), np.where(bad, np.nan, hi))
