"""Campaign statistics: turn fault counts into sample sizes, rates and confidence intervals.

Pure Python (``math`` and ``statistics`` only). Intervals are two-sided at the given ``confidence``
(e.g. 0.95). The exact Clopper-Pearson interval inverts a regularized incomplete beta function
implemented here (continued fraction, as in Numerical Recipes), so no SciPy is needed.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Literal, SupportsIndex

from onnxfi.errors import OnnxfiError

__all__ = [
    "Method",
    "Rate",
    "normal_quantile",
    "leveugle_sample_size",
    "regularized_incomplete_beta",
    "beta_quantile",
    "wilson_interval",
    "clopper_pearson_interval",
    "interval",
    "margin_reached",
    "rate_with_ci",
    "stratified_rate",
]

Method = Literal["wilson", "clopper-pearson"]
_METHODS: tuple[str, ...] = ("wilson", "clopper-pearson")


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


def _method(method: str) -> Method:
    if method == "wilson":
        return "wilson"
    if method == "clopper-pearson":
        return "clopper-pearson"
    raise OnnxfiError(f"unknown interval method {method!r}; choose one of {', '.join(_METHODS)}")


# --------------------------------------------------------------------------------------------------
# Normal quantile and sample size
# --------------------------------------------------------------------------------------------------


def normal_quantile(p: float) -> float:
    """Quantile of the standard normal distribution (``statistics.NormalDist().inv_cdf``), 0 < p < 1."""
    return NormalDist().inv_cdf(_open_unit(p, "p"))


def _two_sided_z(confidence: float) -> float:
    """z such that P(|Z| <= z) = confidence (e.g. 1.959964 for 0.95, 2.575829 for 0.99)."""
    c = _open_unit(confidence, "confidence")
    return NormalDist().inv_cdf(1.0 - (1.0 - c) / 2.0)


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
# Beta distribution
# --------------------------------------------------------------------------------------------------

_TINY = 1e-300
_CF_EPS = 1e-15


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz; Numerical Recipes ``betacf``)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    if abs(d) < _TINY:
        d = _TINY
    d = 1.0 / d
    h = d
    # Converges in O(sqrt(max(a, b))) steps when x is below the mean, as the caller guarantees.
    max_iter = 1000 + 20 * int(math.sqrt(max(a, b)))
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        if abs(d) < _TINY:
            d = _TINY
        c = 1.0 + aa / c
        if abs(c) < _TINY:
            c = _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the CDF of the Beta(a, b) distribution at x (a, b > 0); 0 below 0 and 1 above 1."""
    if not (a > 0.0 and b > 0.0):
        raise OnnxfiError(f"beta parameters must be > 0, got a={a}, b={b}")
    if math.isnan(x):
        raise OnnxfiError("x must not be NaN")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def beta_quantile(q: float, a: float, b: float) -> float:
    """Inverse of :func:`regularized_incomplete_beta` in x: the q-quantile of Beta(a, b).

    Newton's method safeguarded by bisection on a bracket that always holds the root, run until the
    step or the bracket is below ~1e-15 relative (far tighter than the 1e-10 campaigns need). A root
    above 1/2 is found as 1 - (the (1 - q)-quantile of Beta(b, a)), so its distance from 1 keeps full
    relative precision.
    """
    if not (a > 0.0 and b > 0.0):
        raise OnnxfiError(f"beta parameters must be > 0, got a={a}, b={b}")
    if math.isnan(q) or q < 0.0 or q > 1.0:
        raise OnnxfiError(f"q must be in [0, 1], got {q}")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    if q > regularized_incomplete_beta(0.5, a, b):
        return 1.0 - _lower_quantile(1.0 - q, b, a)
    return _lower_quantile(q, a, b)


def _lower_quantile(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b) for a root known to lie in (0, 1/2]."""
    log_b = _log_beta(a, b)
    lo, hi = 0.0, 0.5
    x = min(0.25, a / (a + b))
    for _ in range(400):
        f = regularized_incomplete_beta(x, a, b) - q
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        x_new = 0.5 * (lo + hi)
        log_pdf = (a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - log_b
        if log_pdf < 700.0:
            pdf = math.exp(log_pdf)
            if pdf > 0.0:
                step = x - f / pdf
                if lo < step < hi:
                    x_new = step
        if abs(x_new - x) <= 1e-15 * x or hi - lo <= 1e-15 * hi:
            return x_new
        x = x_new
    return x


# --------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------


def wilson_interval(k: SupportsIndex, n: SupportsIndex, confidence: float) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; ``(0.0, 1.0)`` when n = 0.

    lo is exactly 0 when k = 0 and hi exactly 1 when k = n.
    """
    k, n = _k_n(k, n)
    z = _two_sided_z(confidence)
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def clopper_pearson_interval(k: SupportsIndex, n: SupportsIndex, confidence: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval from Beta quantiles; ``(0.0, 1.0)`` when n = 0.

    lo = B^-1(alpha/2; k, n - k + 1) (0 when k = 0), hi = B^-1(1 - alpha/2; k + 1, n - k) (1 when k = n),
    alpha = 1 - confidence. hi is computed as 1 - B^-1(alpha/2; n - k, k + 1), the same number, to keep
    its distance from 1 accurate.
    """
    k, n = _k_n(k, n)
    alpha = 1.0 - _open_unit(confidence, "confidence")
    if n == 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else beta_quantile(alpha / 2.0, k, n - k + 1)
    hi = 1.0 if k == n else 1.0 - beta_quantile(alpha / 2.0, n - k, k + 1)
    return lo, hi


def interval(
    k: SupportsIndex, n: SupportsIndex, confidence: float, method: str = "wilson"
) -> tuple[float, float]:
    """The interval of the named method: ``"wilson"`` or ``"clopper-pearson"``."""
    if _method(method) == "wilson":
        return wilson_interval(k, n, confidence)
    return clopper_pearson_interval(k, n, confidence)


def margin_reached(
    k: SupportsIndex, n: SupportsIndex, margin: float, confidence: float, method: str = "wilson"
) -> bool:
    """Whether the interval's half-width ``(hi - lo) / 2`` is at most ``margin`` (for early stopping)."""
    if not _real(margin, "margin") > 0.0:
        raise OnnxfiError(f"margin must be > 0, got {margin!r}")
    lo, hi = interval(k, n, confidence, method)
    return (hi - lo) / 2.0 <= margin


# --------------------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """An estimated rate (e.g. SDC rate) with its two-sided confidence interval."""

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


def rate_with_ci(k: SupportsIndex, n: SupportsIndex, confidence: float, method: str = "wilson") -> Rate:
    """k/n with a ``"wilson"`` or ``"clopper-pearson"`` interval; the rate is NaN when n = 0."""
    m = _method(method)
    lo, hi = interval(k, n, confidence, m)
    k, n = _k_n(k, n)
    rate = k / n if n else float("nan")
    return Rate(k=k, n=n, rate=rate, lo=lo, hi=hi, method=m, confidence=float(confidence))


def stratified_rate(
    strata: Sequence[tuple[int, int, int]], confidence: float, finite_population: bool = True
) -> Rate:
    """Population-weighted rate over strata ``(k_h, n_h, N_h)``: k_h failures in n_h samples of N_h faults.

    rate = sum_h W_h p_h with W_h = N_h / sum N and p_h = k_h / n_h. The interval is the normal
    approximation rate +- z * sqrt(V), clipped to [0, 1], with
    V = sum_h W_h^2 p_h (1 - p_h) / n_h * (N_h - n_h) / (N_h - 1), the variance of stratified sampling
    without replacement (the finite-population factor is dropped when ``finite_population`` is False,
    i.e. for sampling with replacement, and is 0 for a fully enumerated stratum).

    Caveat of the normal approximation: when every p_h is 0 or 1 the interval has zero width. For small
    counts prefer :func:`rate_with_ci` on the pooled counts. Strata with N_h = 0 are skipped (they need
    n_h = 0); a stratum with N_h > 0 and no samples is an error. The returned ``Rate`` carries the pooled
    k and n and ``method="stratified-normal"``.
    """
    z = _two_sided_z(confidence)
    if len(strata) == 0:
        raise OnnxfiError("stratified_rate needs at least one stratum")
    rows: list[tuple[int, int, int]] = []
    for i, stratum in enumerate(strata):
        if len(stratum) != 3:
            raise OnnxfiError(f"stratum {i}: expected (k, n, population), got {stratum!r}")
        k, n = _k_n(stratum[0], stratum[1])
        pop = _count(stratum[2], f"stratum {i} population")
        if pop == 0:
            if n:
                raise OnnxfiError(f"stratum {i}: {n} samples from an empty population")
            continue
        if n == 0:
            raise OnnxfiError(f"stratum {i}: population {pop} but no samples; its rate cannot be estimated")
        if finite_population and n > pop:
            raise OnnxfiError(f"stratum {i}: {n} samples without replacement from a population of {pop}")
        rows.append((k, n, pop))
    total = sum(pop for _, _, pop in rows)
    if total == 0:
        raise OnnxfiError("stratified_rate: every stratum has an empty population")
    rate = 0.0
    var = 0.0
    for k, n, pop in rows:
        w = pop / total
        p = k / n
        fpc = 1.0
        if finite_population:
            fpc = (pop - n) / (pop - 1) if pop > 1 else 0.0
        rate += w * p
        var += w * w * p * (1.0 - p) / n * fpc
    rate = min(1.0, max(0.0, rate))
    half = z * math.sqrt(var)
    return Rate(
        k=sum(k for k, _, _ in rows),
        n=sum(n for _, n, _ in rows),
        rate=rate,
        lo=max(0.0, rate - half),
        hi=min(1.0, rate + half),
        method="stratified-normal",
        confidence=float(confidence),
    )
