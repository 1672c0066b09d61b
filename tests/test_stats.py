"""Tests for onnxfi.stats: Leveugle sample sizes, Wilson intervals, k/n rates and the stratified estimate."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from onnxfi import stats as s
from onnxfi.errors import OnnxfiError

# Two-sided standard normal quantiles from published tables (more digits than the tables print,
# taken from the well-known constants).
Z95 = 1.959963984540054
Z99 = 2.5758293035489004

IntervalFn = Callable[[int, int, float], tuple[float, float]]


def test_normal_quantile() -> None:
    assert s.normal_quantile(0.5) == 0.0
    assert s.normal_quantile(0.975) == pytest.approx(Z95, abs=1e-12)
    assert s.normal_quantile(0.995) == pytest.approx(Z99, abs=1e-12)
    assert s.normal_quantile(0.025) == pytest.approx(-Z95, abs=1e-12)
    for bad in (0.0, 1.0, -0.1, math.nan, True, "0.5"):
        with pytest.raises(OnnxfiError):
            s.normal_quantile(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Leveugle
# --------------------------------------------------------------------------------------------------


def _leveugle(population: int, e: float, t: float, p: float = 0.5) -> int:
    return min(population, math.ceil(population / (1 + e**2 * (population - 1) / (t**2 * p * (1 - p)))))


def test_leveugle_large_population() -> None:
    # t is the 3-decimal table value: N -> infinity gives n -> 2.576^2 / 4 / 1e-4 = 16589.4 -> 16590
    assert s.leveugle_sample_size(10**12, 0.01, 0.99) == 16590
    assert s.leveugle_sample_size(10**12, 0.01, 0.99) == _leveugle(10**12, 0.01, round(Z99, 3))
    # the reference figure (N = 374,064,384 faults, 99%, e = 1%)
    assert s.leveugle_sample_size(374_064_384, 0.01, 0.99) == 16_589
    assert s.leveugle_sample_size(10**12, 0.05, 0.95) == 385  # the classic survey number


@pytest.mark.parametrize(
    ("population", "margin", "confidence", "p", "t"),
    [
        (1000, 0.05, 0.95, 0.5, Z95),
        (6_553_600, 0.01, 0.99, 0.5, Z99),
        (50_000, 0.01, 0.95, 0.5, Z95),
        (50_000, 0.02, 0.99, 0.1, Z99),
        (2**32, 0.001, 0.999, 0.5, 3.2905267314918945),
    ],
)
def test_leveugle_matches_formula(
    population: int, margin: float, confidence: float, p: float, t: float
) -> None:
    assert s.leveugle_sample_size(population, margin, confidence, p) == _leveugle(population, margin, round(t, 3), p)


def test_leveugle_known_value_small_population() -> None:
    # 1000 / (1 + 0.0025 * 999 / (1.96^2 / 4)) = 277.7 -> 278
    assert s.leveugle_sample_size(1000, 0.05, 0.95) == 278


def test_leveugle_caps_at_population() -> None:
    assert s.leveugle_sample_size(10, 0.01, 0.99) == 10
    assert s.leveugle_sample_size(1, 0.5, 0.5) == 1
    assert s.leveugle_sample_size(np.int64(500), 0.001, 0.99) == 500


@pytest.mark.parametrize(
    "kwargs",
    [
        {"population": 0, "margin": 0.01, "confidence": 0.99},
        {"population": -5, "margin": 0.01, "confidence": 0.99},
        {"population": 10.5, "margin": 0.01, "confidence": 0.99},
        {"population": 100, "margin": 0.0, "confidence": 0.99},
        {"population": 100, "margin": 1.0, "confidence": 0.99},
        {"population": 100, "margin": 0.01, "confidence": 1.0},
        {"population": 100, "margin": 0.01, "confidence": 0.0},
        {"population": 100, "margin": 0.01, "confidence": 0.99, "p": 0.0},
        {"population": 100, "margin": math.nan, "confidence": 0.99},
    ],
)
def test_leveugle_rejects_bad_input(kwargs: dict[str, float]) -> None:
    with pytest.raises(OnnxfiError):
        s.leveugle_sample_size(**kwargs)  # type: ignore[arg-type]


@given(st.integers(1, 10**9), st.floats(0.001, 0.2), st.sampled_from([0.9, 0.95, 0.99]))
def test_leveugle_properties(population: int, margin: float, confidence: float) -> None:
    n = s.leveugle_sample_size(population, margin, confidence)
    assert 1 <= n <= population
    assert s.leveugle_sample_size(population + 1000, margin, confidence) >= n
    assert s.leveugle_sample_size(population, margin / 2, confidence) >= n


# --------------------------------------------------------------------------------------------------
# Intervals against SciPy
# --------------------------------------------------------------------------------------------------

GRID_N = [1, 2, 3, 7, 10, 30, 100, 1000, 16588, 100_000]
GRID_CONF = [0.5, 0.8, 0.9, 0.95, 0.99, 0.999]


def _grid() -> list[tuple[int, int]]:
    out = []
    for n in GRID_N:
        for k in sorted({0, 1, 2, n // 10, n // 3, n // 2, n - 1, n}):
            if 0 <= k <= n:
                out.append((k, n))
    return out


@pytest.mark.parametrize("confidence", GRID_CONF)
@pytest.mark.parametrize(("k", "n"), _grid())
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = s.wilson_interval(k, n, confidence)
    assert lo == pytest.approx(ci.low, abs=1e-8)
    assert hi == pytest.approx(ci.high, abs=1e-8)


def test_wilson_published_values() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (score interval):
    # 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605; 0/20 -> 0.0000-0.1611; 1/29 -> 0.0061-0.1718
    for k, n, lo, hi in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
                         (1, 29, 0.0061, 0.1718)):
        got = s.wilson_interval(k, n, 0.95)
        assert (round(got[0], 4), round(got[1], 4)) == (lo, hi), (k, n)


def test_wilson_hand_value() -> None:
    # k=2, n=10, z=1.96: centre (0.2 + z^2/20) / (1 + z^2/10), half z sqrt(.016 + z^2/400) / (1 + z^2/10)
    z2 = Z95**2
    centre = (0.2 + z2 / 20) / (1 + z2 / 10)
    half = Z95 * math.sqrt(0.016 + z2 / 400) / (1 + z2 / 10)
    lo, hi = s.wilson_interval(2, 10, 0.95)
    assert lo == pytest.approx(centre - half, abs=1e-14)
    assert hi == pytest.approx(centre + half, abs=1e-14)
    assert (round(lo, 4), round(hi, 4)) == (0.0567, 0.5098)


def test_interval_edges() -> None:
    func = s.wilson_interval
    assert func(0, 0, 0.95) == (0.0, 1.0)
    lo0, hi0 = func(0, 20, 0.95)
    assert lo0 == 0.0 and 0.0 < hi0 < 1.0
    lon, hin = func(20, 20, 0.95)
    assert hin == 1.0 and 0.0 < lon < 1.0
    for bad in ((3, 2, 0.95), (-1, 2, 0.95), (1, 2.0, 0.95), (1, 2, 1.0), (1, 2, 0.0), (True, 2, 0.95)):
        with pytest.raises(OnnxfiError):
            func(*bad)


def _coverage(func: IntervalFn, n: int, p: float, confidence: float) -> float:
    intervals = [func(k, n, confidence) for k in range(n + 1)]
    return sum(
        math.comb(n, k) * p**k * (1 - p) ** (n - k) for k, (lo, hi) in enumerate(intervals) if lo <= p <= hi
    )


@pytest.mark.parametrize("n", [10, 37, 100])
def test_coverage(n: int) -> None:
    ps = np.linspace(0.01, 0.99, 99)
    wilson = [_coverage(s.wilson_interval, n, float(p), 0.95) for p in ps]
    assert 0.935 <= float(np.mean(wilson)) <= 0.965  # Wilson: close to nominal on average


@settings(max_examples=200)
@given(st.integers(0, 5000), st.integers(0, 5000), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_interval_properties(a: int, b: int, confidence: float) -> None:
    k, n = min(a, b), max(a, b)
    lo, hi = s.wilson_interval(k, n, confidence)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= k / n <= hi
    wider_lo, wider_hi = s.wilson_interval(k, n, 0.999)
    assert wider_lo <= lo + 1e-12 and wider_hi >= hi - 1e-12


# --------------------------------------------------------------------------------------------------
# Rate, rate_with_ci
# --------------------------------------------------------------------------------------------------


def test_rate_with_ci() -> None:
    r = s.rate_with_ci(30, 100, 0.95)
    assert (r.k, r.n, r.rate, r.method, r.confidence) == (30, 100, 0.3, "wilson", 0.95)
    assert (r.lo, r.hi) == pytest.approx(s.wilson_interval(30, 100, 0.95), abs=1e-15)  # more than 3 events each way
    assert r.half_width == pytest.approx((r.hi - r.lo) / 2)
    np_counts = s.rate_with_ci(np.int64(30), np.int64(100), 0.95)
    assert type(np_counts.k) is int and np_counts == r
    d = r.to_dict()
    assert d == {"k": 30, "n": 100, "rate": 0.3, "lo": r.lo, "hi": r.hi, "method": "wilson", "confidence": 0.95}
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.k = 4  # type: ignore[misc]
    empty = s.rate_with_ci(0, 0, 0.95)
    assert math.isnan(empty.rate) and (empty.lo, empty.hi) == (0.0, 1.0)
    with pytest.raises(OnnxfiError):
        s.rate_with_ci(3, 2, 0.95)


@pytest.mark.parametrize(("k", "n", "confidence"), [(1, 50, 0.95), (2, 400, 0.95), (3, 1000, 0.99), (1, 5, 0.9)])
def test_rate_with_ci_holds_few_events_to_the_poisson_limit(k: int, n: int, confidence: float) -> None:
    """With at most 3 events the lower limit is min(Wilson's, the exact Poisson limit Gamma(k).ppf(alpha/2) / n);
    symmetrically for at most 3 non-events."""
    tail = (1 - confidence) / 2
    r = s.rate_with_ci(k, n, confidence)
    w_lo, w_hi = s.wilson_interval(k, n, confidence)
    assert r.lo == pytest.approx(min(w_lo, sps.gamma.ppf(tail, k) / n), rel=1e-9)
    assert r.hi == w_hi
    mirror = s.rate_with_ci(n - k, n, confidence)
    assert mirror.hi == pytest.approx(1 - r.lo, abs=1e-12) and mirror.lo == pytest.approx(1 - r.hi, abs=1e-12)


@pytest.mark.parametrize("n", [20, 50, 200, 1000])
def test_rate_with_ci_covers_rare_rates(n: int) -> None:
    """Exact coverage for tiny p (0.01/n to 5/n): Wilson dips to ~0.84 just below its k = 1 lower limit;
    the Poisson limit for few events keeps it above 0.92."""

    def coverage(interval: Callable[[int], tuple[float, float]], p: float) -> float:
        return float(sum(sps.binom.pmf(k, n, p) for k in range(min(n, 40) + 1) if interval(k)[0] <= p <= interval(k)[1]))

    ps = np.geomspace(0.01 / n, 5 / n, 120)
    ours = [s.rate_with_ci(k, n, 0.95) for k in range(min(n, 40) + 1)]
    plain = min(coverage(lambda k: s.wilson_interval(k, n, 0.95), float(p)) for p in ps)
    guarded = min(coverage(lambda k: (ours[k].lo, ours[k].hi), float(p)) for p in ps)
    assert plain < 0.85 and guarded >= 0.92, (plain, guarded)


# --------------------------------------------------------------------------------------------------
# stratified_estimate
# --------------------------------------------------------------------------------------------------


def _reference(n: list[float], tot: list[float], tot2: list[float], pop: list[float], confidence: float,
               ) -> tuple[float, float, float]:
    """The documented formulas, written out independently (no unsampled strata, <= 3-event rule not hit)."""
    z = sps.norm.ppf(1 - (1 - confidence) / 2)
    N = sum(pop)
    rate = sum(p / N * t / k for p, t, k in zip(pop, tot, n))
    var = mbar = 0.0
    for k, t, t2, p in zip(n, tot, tot2, pop):
        w = p / N
        m = (t + 0.5) / (k + 1)
        var += w * w * ((t2 + 0.5) / (k + 1) - m * m) / k * (p - k) / (p - 1)
        mbar += w * m

    def wilson(n_eff: float) -> tuple[float, float]:
        c = (rate + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
        h = z * math.sqrt(rate * (1 - rate) / n_eff + z * z / (4 * n_eff * n_eff)) / (1 + z * z / n_eff)
        return c - h, c + h

    return rate, wilson(rate * (1 - mbar) / var)[0], wilson(mbar * (1 - rate) / var)[1]


def test_stratified_estimate_known_values() -> None:
    # two strata: 10/100 of 1000 faults and 40/100 of 3000: rate = 1/4 * 0.1 + 3/4 * 0.4 = 0.325
    r = s.stratified_estimate([100, 100], [10, 40], [10, 40], [1000, 3000], 0.95)
    rate, lo, hi = _reference([100, 100], [10, 40], [10, 40], [1000, 3000], 0.95)
    assert r.rate == pytest.approx(0.325, abs=1e-15) == rate
    assert (r.lo, r.hi) == pytest.approx((lo, hi), abs=1e-12)
    assert (r.k, r.n, r.method, r.confidence) == (50, 200, "wilson-neff", 0.95)
    # near what a normal interval with the same variance gives, and wider than 0.325 -+ 1.96 * plain SE
    assert 0.24 < r.lo < 0.26 and 0.39 < r.hi < 0.41
    # a mean of fractions: values 0.2 x 5, 0.5 x 8 in one stratum, 0.05 x 30 in the other
    tot, tot2 = [0.2 * 5 + 0.5 * 8, 0.05 * 30], [0.04 * 5 + 0.25 * 8, 0.0025 * 30]
    f = s.stratified_estimate([50, 60], tot, tot2, [5000, 20000], 0.99)
    rate, lo, hi = _reference([50, 60], tot, tot2, [5000, 20000], 0.99)
    assert (f.rate, f.lo, f.hi) == pytest.approx((rate, lo, hi), abs=1e-12)
    assert f.method == "wilson-neff" and f.k == round(sum(tot))


def test_stratified_estimate_of_one_stratum_is_close_to_wilson() -> None:
    r = s.stratified_estimate([400], [120], [120], [10**9], 0.95)
    lo, hi = s.wilson_interval(120, 400, 0.95)
    assert r.rate == 0.3
    assert (r.lo, r.hi) == pytest.approx((lo, hi), abs=2e-3)


def test_stratified_estimate_smoothing_keeps_uncertainty_of_all_or_nothing_strata() -> None:
    # 0/2 and 2/2 of a million each: rate 0.5, yet an interval (q = 1/6 and 5/6 per stratum, not 0 and 1)
    split = s.stratified_estimate([2, 2], [0, 2], [0, 2], [10**6, 10**6], 0.95)
    assert split.rate == 0.5 and 0.1 < split.lo < 0.3 and 0.7 < split.hi < 0.9
    assert split.hi - 0.5 == pytest.approx(0.5 - split.lo, abs=1e-12)  # symmetric data, symmetric interval
    # nothing seen in 10 of a million: the upper limit is Wilson's for 0 of n_hi = m (1 - p) / V, m = 0.5 / 11,
    # V = m (1 - m) / 10 * fpc: close to Wilson's 0 of 10
    none = s.stratified_estimate([10], [0], [0], [10**6], 0.95)
    z2 = Z95**2
    m = 0.5 / 11
    n_hi = m / (m * (1 - m) / 10 * (10**6 - 10) / (10**6 - 1))
    assert (none.rate, none.lo) == (0.0, 0.0) and none.hi == pytest.approx(z2 / (n_hi + z2), rel=1e-9)
    assert none.hi == pytest.approx(s.wilson_interval(0, 10, 0.95)[1], rel=0.05)


def test_stratified_estimate_census_and_unsampled_strata() -> None:
    exact = s.stratified_estimate([10, 0, 5], [3, 0, 5], [3, 0, 5], [10, 0, 5], 0.95)
    assert exact.rate == pytest.approx(8 / 15) and exact.lo == exact.hi == exact.rate
    assert exact.method == "census"
    # half the space unsampled: the point stands for the sampled half, the interval allows anything for the rest
    part = s.stratified_estimate([100, 0], [30, 0], [30, 0], [1000, 1000], 0.95)
    whole = s.stratified_estimate([100], [30], [30], [1000], 0.95)
    assert part.rate == whole.rate == 0.3
    assert part.lo == pytest.approx(whole.lo / 2) and part.hi == pytest.approx(whole.hi / 2 + 0.5)
    assert part.method == "wilson-neff-bounded"
    nothing = s.stratified_estimate([0, 0], [0, 0], [0, 0], [10, 20], 0.95)
    assert math.isnan(nothing.rate) and (nothing.lo, nothing.hi, nothing.method) == (0.0, 1.0, "none")


@pytest.mark.parametrize(
    ("n", "tot", "tot2", "pop"),
    [
        ([], [], [], []),
        ([1], [0], [0], [0]),
        ([5], [1], [1], [3]),
        ([5], [6], [6], [10]),
        ([5], [-1], [0], [10]),
        ([5], [1], [2], [10]),
        ([5, 1], [1], [1], [10]),
        ([[5]], [[1]], [[1]], [[10]]),
        ([5], [float("nan")], [1], [10]),
    ],
)
def test_stratified_estimate_rejects_bad_strata(n: list[float], tot: list[float], tot2: list[float],
                                                pop: list[float]) -> None:
    with pytest.raises(OnnxfiError):
        s.stratified_estimate(n, tot, tot2, pop, 0.95)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 50), st.floats(0, 1)), min_size=1, max_size=8),
       st.sampled_from([0.8, 0.95, 0.99]))
def test_stratified_estimate_properties(strata: list[tuple[int, int, float]], confidence: float) -> None:
    pop = [p for p, _, _ in strata]
    n = [min(p, k) for p, k, _ in strata]
    tot = [math.floor(f * k) for (_, _, f), k in zip(strata, n)]
    r = s.stratified_estimate(n, tot, tot, pop, confidence)
    if sum(n) == 0:
        assert math.isnan(r.rate)
    else:
        assert 0.0 <= r.lo <= r.rate <= r.hi <= 1.0
        wider = s.stratified_estimate(n, tot, tot, pop, 0.999)
        assert wider.lo <= r.lo + 1e-12 and wider.hi >= r.hi - 1e-12
