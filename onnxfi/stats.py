"""Campaign statistics: fault counts -> sample sizes, rates and confidence intervals.

Intervals are two-sided at the given ``confidence`` (e.g. 0.95): the Wilson score interval for k of n
(:func:`wilson_interval`), and for a stratified mean of values in [0, 1] (a stratified rate, or a mean of
per-experiment fractions) the Wilson interval at an effective sample size (:func:`stratified_estimate`).
:mod:`onnxfi.summary` picks the estimator a plan's design calls for; docs/statistics.md has the formulas.
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import SupportsIndex

import numpy as np
from numpy.typing import ArrayLike

from onnxfi.errors import OnnxfiError

__all__ = [
    "Rate",
    "normal_quantile",
    "leveugle_sample_size",
    "wilson_interval",
    "rate_with_ci",
    "stratified_estimate",
]


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _count(value: SupportsIndex, name: str) -> int:
    """A non-negative integer (Python or numpy), never a bool or a float."""
    if isinstance(value, bool):
        raise OnnxfiError(f"{name} must be an integer, got {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise OnnxfiError(f"{name} must be an integer, got {value!r}") from None
    if out < 0:
        raise OnnxfiError(f"{name} must be >= 0, got {out}")
    return out


def _k_n(k: SupportsIndex, n: SupportsIndex) -> tuple[int, int]:
    k, n = _count(k, "k"), _count(n, "n")
    if k > n:
        raise OnnxfiError(f"k ({k}) cannot exceed n ({n})")
    return k, n


def _real(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OnnxfiError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _open_unit(value: float, name: str) -> float:
    """A real number strictly between 0 and 1."""
    out = _real(value, name)
    if not 0.0 < out < 1.0:  # also rejects NaN
        raise OnnxfiError(f"{name} must be in (0, 1), got {value!r}")
    return out


# --------------------------------------------------------------------------------------------------
# Normal quantile and sample size
# --------------------------------------------------------------------------------------------------


def normal_quantile(p: float) -> float:
    """Quantile of the standard normal distribution (``statistics.NormalDist().inv_cdf``), 0 < p < 1."""
    return NormalDist().inv_cdf(_open_unit(p, "p"))


def _two_sided_z(confidence: float) -> float:
    """z such that P(|Z| <= z) = confidence (e.g. 1.959964 for 0.95, 2.575829 for 0.99)."""
    c = _open_unit(confidence, "confidence")
    return normal_quantile(1.0 - (1.0 - c) / 2.0)


def leveugle_sample_size(population: SupportsIndex, margin: float, confidence: float, p: float = 0.5) -> int:
    """Number of faults to inject for a statistical campaign (Leveugle et al., DATE 2009).

    n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), with N the population (all possible faults), e the
    margin of error, t the two-sided normal quantile for ``confidence`` and p the a-priori failure
    probability (0.5, the default, is the worst case). Rounded up and never more than N.

    As in the paper's worked figures, t is the cut-off read from a normal table to three decimals
    (2.576 for 99%, 1.960 for 95%); this gives n = 16,589 for N = 374,064,384 at e = 0.01, 99%
    (the exact quantile 2.5758293 would give 16,587).
    """
    n_pop = _count(population, "population")
    if n_pop < 1:
        raise OnnxfiError("population must be >= 1")
    e = _open_unit(margin, "margin")
    prior = _open_unit(p, "p")
    t = round(_two_sided_z(confidence), 3)
    n = n_pop / (1.0 + e * e * (n_pop - 1) / (t * t * prior * (1.0 - prior)))
    # The relative tolerance keeps float noise (e.g. 16587.000000000004) from adding a whole experiment.
    size = math.ceil(n * (1.0 - 1e-12))
    return max(1, min(n_pop, size))


# --------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval around a proportion ``p`` observed on ``n`` (> 0, not necessarily whole) trials."""
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1.0 - p)) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if p <= 0.0 else min(p, max(0.0, center - half))
    hi = 1.0 if p >= 1.0 else max(p, min(1.0, center + half))
    return lo, hi


def _gamma_p(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x), by its power series (a > 0, x >= 0 small, as used here)."""
    if x <= 0.0:
        return 0.0
    term = total = 1.0 / a
    i = 0
    while term > total * 1e-15 and i < 10_000:
        i += 1
        term *= x / (a + i)
        total += term
    return min(1.0, math.exp(a * math.log(x) - x - math.lgamma(a)) * total)


@functools.lru_cache(maxsize=4096)
def _poisson_lower(events: float, tail: float) -> float:
    """Exact lower confidence limit of a Poisson mean after ``events`` (> 0, may be fractional) events:
    the ``tail`` quantile of Gamma(events, 1). Cached: a summary asks for the same few (events, tail) pairs
    hundreds of times (100 bisection steps each)."""
    lo, hi = 0.0, events + 10.0 * math.sqrt(events) + 10.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        if _gamma_p(events, mid) < tail:
            lo = mid
        else:
            hi = mid
    return lo


# Wilson's lower limit is too high when only a few events are seen (Brown, Cai and DasGupta 2001): at most
# this many (effective) events, the lower limit is also held below the exact Poisson limit.
_FEW_EVENTS = 3.0 + 1e-9  # three, give or take float rounding of p n


def _score_interval(p: float, n_lo: float, n_hi: float, z: float) -> tuple[float, float]:
    """Wilson's lower limit at ``n_lo`` and upper limit at ``n_hi`` trials, each held to the exact Poisson limit
    when it rests on at most three (effective) events: p n_lo for the lower, (1 - p) n_hi for the upper."""
    tail = 0.5 * math.erfc(z / math.sqrt(2.0))
    lo = 0.0
    if p > 0.0 and n_lo > 0.0:
        lo = _wilson(p, n_lo, z)[0]
        if p * n_lo <= _FEW_EVENTS:
            lo = min(lo, _poisson_lower(p * n_lo, tail) / n_lo)
    hi = 1.0
    if p < 1.0 and n_hi > 0.0:
        hi = _wilson(p, n_hi, z)[1]
        if (1.0 - p) * n_hi <= _FEW_EVENTS:
            hi = max(hi, 1.0 - _poisson_lower((1.0 - p) * n_hi, tail) / n_hi)
    return lo, hi


def wilson_interval(k: SupportsIndex, n: SupportsIndex, confidence: float) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; ``(0.0, 1.0)`` when n = 0.

    lo is exactly 0 when k = 0 and hi exactly 1 when k = n.
    """
    k, n = _k_n(k, n)
    z = _two_sided_z(confidence)
    if n == 0:
        return 0.0, 1.0
    return _wilson(k / n, n, z)


# --------------------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """An estimated rate (e.g. SDC rate) with its two-sided confidence interval.

    ``k`` and ``n`` are the pooled sample counts (for a mean of fractions, ``k`` is the sum of the values,
    rounded); ``rate`` need not be k/n when the estimator weights strata. ``method`` names the interval
    (see :func:`stratified_estimate`).
    """

    k: int
    n: int
    rate: float
    lo: float
    hi: float
    method: str
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0

    def to_dict(self) -> dict[str, int | float | str]:
        """Plain JSON-ready fields (``rate`` is NaN when n = 0)."""
        return asdict(self)


def rate_with_ci(k: SupportsIndex, n: SupportsIndex, confidence: float) -> Rate:
    """k/n with its Wilson interval (``method="wilson"``); the rate is NaN and the interval [0, 1] when n = 0.

    With at most three events (or non-events), the lower (upper) limit is held to the exact Poisson limit
    (the alpha/2 quantile of Gamma(k, 1), divided by n), where the plain Wilson limit is known to be too tight
    (Brown, Cai and DasGupta 2001). :func:`wilson_interval` is the plain interval.
    """
    k, n = _k_n(k, n)
    z = _two_sided_z(confidence)
    if n == 0:
        return Rate(k=0, n=0, rate=float("nan"), lo=0.0, hi=1.0, method="wilson", confidence=float(confidence))
    lo, hi = _score_interval(k / n, n, n, z)
    return Rate(k=k, n=n, rate=k / n, lo=lo, hi=hi, method="wilson", confidence=float(confidence))


def _array(values: ArrayLike, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise OnnxfiError(f"{name} must be one value per stratum")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise OnnxfiError(f"{name} must be finite and >= 0")
    return a


def stratified_estimate(
    n: ArrayLike, total: ArrayLike, total_sq: ArrayLike, population: ArrayLike, confidence: float,
) -> Rate:
    """Population mean of a value in [0, 1] (a 0/1 flag, or a fraction) from a stratified sample.

    Stratum h holds ``population[h]`` = N_h units, of which ``n[h]`` = n_h were drawn at random without
    replacement; ``total[h]`` and ``total_sq[h]`` are the sum and the sum of squares of their values (for a
    0/1 flag both are the count k_h). With W_h = N_h / N over the sampled strata:

    - estimate: p = sum_h W_h ybar_h, ybar_h = total_h / n_h;
    - variance: V = sum_h W_h^2 s_h^2 / n_h * (N_h - n_h) / (N_h - 1), where s_h^2 is the variance of the
      stratum's values with half a pseudo-observation at 0 and half at 1 added: m_h = (total_h + 0.5) / (n_h + 1),
      s_h^2 = (total_sq_h + 0.5) / (n_h + 1) - m_h^2 (for a flag: q_h (1 - q_h) with q_h = (k_h + 0.5) / (n_h + 1)).
      A stratum with two samples, both 0, keeps an honest uncertainty instead of a variance of 0;
    - interval: the Wilson score interval around p at the effective sample size
      n_eff = m (1 - m) / V, m = sum_h W_h m_h (Korn and Graubard's effective n, 1998): for one stratum of
      a 0/1 flag, n_eff = n_h / fpc and the interval is Wilson's. ``method="wilson-neff"``.

    Every stratum fully enumerated (V = 0): the rate is exact, ``method="census"``. Strata with N_h > 0 and no
    sample (n_h = 0) cannot be estimated: p stands for the sampled part and the interval is widened to what any
    value of the unsampled part allows, lo * (1 - W_u) and hi * (1 - W_u) + W_u with W_u their population
    share; the method gains ``-bounded``. Nothing sampled: NaN in [0, 1], ``method="none"``.
    """
    z = _two_sided_z(confidence)
    nh, th, t2, pop = (_array(a, name) for a, name in ((n, "n"), (total, "total"), (total_sq, "total_sq"),
                                                        (population, "population")))
    if not len(nh) == len(th) == len(t2) == len(pop):
        raise OnnxfiError("stratified_estimate: n, total, total_sq and population differ in length")
    if np.any(nh > pop) or np.any(th > nh * (1 + 1e-9)) or np.any(t2 > th * (1 + 1e-9) + 1e-12):
        raise OnnxfiError("stratified_estimate: need n <= population and 0 <= values <= 1 in every stratum")
    full = float(pop.sum())
    if full <= 0:
        raise OnnxfiError("stratified_estimate: every stratum has an empty population")
    k, count = int(round(float(th.sum()))), int(round(float(nh.sum())))
    sampled = nh > 0
    unsampled_share = float(pop[~sampled].sum()) / full
    if not sampled.any():
        return Rate(k, count, float("nan"), 0.0, 1.0, "none", float(confidence))
    nh, th, t2, pop = nh[sampled], th[sampled], t2[sampled], pop[sampled]
    w = pop / pop.sum()
    rate = min(1.0, max(0.0, float(np.sum(w * th / nh))))
    m = (th + 0.5) / (nh + 1.0)
    s2 = np.maximum(0.0, (t2 + 0.5) / (nh + 1.0) - m * m)
    fpc = np.where(pop > 1, (pop - nh) / np.maximum(pop - 1, 1), 0.0)
    var = float(np.sum(w * w * s2 / nh * fpc))
    if var <= 0.0:
        lo = hi = rate
        method = "census"
    else:
        mbar = float(np.sum(w * m))
        lo, hi = _score_interval(rate, rate * (1.0 - mbar) / var, mbar * (1.0 - rate) / var, z)
        method = "wilson-neff"
    if unsampled_share > 0:
        lo, hi = lo * (1.0 - unsampled_share), hi * (1.0 - unsampled_share) + unsampled_share
        method += "-bounded"
    return Rate(k, count, rate, lo, hi, method, float(confidence))
