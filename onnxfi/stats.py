"""Campaign statistics: turn fault counts into sample sizes, rates and confidence intervals.

Pure Python (``math`` and ``statistics`` only). Intervals are two-sided at the given ``confidence``
(e.g. 0.95): the Wilson score interval for one rate, and a normal interval for a population-weighted
rate over strata (:func:`stratified_rate`). :mod:`onnxfi.summary` turns campaign rows into these.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import SupportsIndex

from onnxfi.errors import OnnxfiError

__all__ = [
    "Rate",
    "normal_quantile",
    "leveugle_sample_size",
    "wilson_interval",
    "margin_reached",
    "rate_with_ci",
    "stratified_rate",
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


def margin_reached(k: SupportsIndex, n: SupportsIndex, margin: float, confidence: float) -> bool:
    """Whether the Wilson interval's half-width ``(hi - lo) / 2`` is at most ``margin`` (for early stopping)."""
    if not _real(margin, "margin") > 0.0:
        raise OnnxfiError(f"margin must be > 0, got {margin!r}")
    lo, hi = wilson_interval(k, n, confidence)
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


def rate_with_ci(k: SupportsIndex, n: SupportsIndex, confidence: float) -> Rate:
    """k/n with its Wilson interval; the rate is NaN when n = 0."""
    lo, hi = wilson_interval(k, n, confidence)
    k, n = _k_n(k, n)
    rate = k / n if n else float("nan")
    return Rate(k=k, n=n, rate=rate, lo=lo, hi=hi, method="wilson", confidence=float(confidence))


def stratified_rate(
    strata: Sequence[tuple[int, int, int]], confidence: float, finite_population: bool = True
) -> Rate:
    """Population-weighted rate over strata ``(k_h, n_h, N_h)``: k_h failures in n_h samples of N_h faults.

    rate = sum_h W_h p_h with W_h = N_h / sum N and p_h = k_h / n_h. The interval is the normal
    approximation rate +- z * sqrt(V), clipped to [0, 1], with
    V = sum_h W_h^2 q_h (1 - q_h) / n_h * (N_h - n_h) / (N_h - 1), the variance of stratified sampling
    without replacement (the finite-population factor is dropped when ``finite_population`` is False,
    i.e. for sampling with replacement, and is 0 for a fully enumerated stratum or N_h = 1).

    q_h = (k_h + 0.5) / (n_h + 1) rather than p_h: a campaign spreads its faults over many (site, bit)
    strata, so most hold a handful of samples with an observed rate of 0 or 1, and the plain estimator
    would call those strata certain and the interval would shrink to nothing. The smoothed q_h keeps
    their uncertainty; the point estimate still uses p_h.

    Strata with N_h = 0 are skipped (they need n_h = 0); a stratum with N_h > 0 and no samples is an
    error. The returned ``Rate`` carries the pooled k and n and ``method="stratified-normal"``.
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
        rate += w * k / n
        q = (k + 0.5) / (n + 1)
        fpc = 1.0
        if finite_population:
            fpc = (pop - n) / (pop - 1) if pop > 1 else 0.0
        var += w * w * q * (1.0 - q) / n * fpc
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
