"""Tests for onnxfi.stats: Leveugle sample sizes, Wilson and Clopper-Pearson intervals, rates."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
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
# Incomplete beta
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a", [0.05, 0.5, 1.0, 3.0, 17.5, 400.0, 20000.0])
@pytest.mark.parametrize("b", [0.05, 1.0, 2.5, 90.0, 20000.0])
def test_incomplete_beta_matches_scipy(a: float, b: float) -> None:
    for x in (1e-12, 1e-6, 0.01, 0.2, 0.5, a / (a + b), 0.8, 0.999, 1 - 1e-9):
        assert s.regularized_incomplete_beta(x, a, b) == pytest.approx(special.betainc(a, b, x), abs=1e-10)
    assert s.regularized_incomplete_beta(0.0, a, b) == 0.0
    assert s.regularized_incomplete_beta(1.0, a, b) == 1.0


def test_incomplete_beta_closed_forms() -> None:
    # I_x(1, 1) = x ; I_x(a, 1) = x^a ; I_x(1, b) = 1 - (1 - x)^b
    for x in (0.1, 0.37, 0.9):
        assert s.regularized_incomplete_beta(x, 1, 1) == pytest.approx(x, abs=1e-14)
        assert s.regularized_incomplete_beta(x, 3.5, 1) == pytest.approx(x**3.5, abs=1e-14)
        assert s.regularized_incomplete_beta(x, 1, 7) == pytest.approx(1 - (1 - x) ** 7, abs=1e-14)


@given(st.floats(0.05, 2000.0), st.floats(0.05, 2000.0), st.floats(1e-6, 1 - 1e-6))
def test_beta_quantile_inverts_cdf(a: float, b: float, q: float) -> None:
    x = s.beta_quantile(q, a, b)
    assert 0.0 <= x <= 1.0
    # x is the quantile to within a few units in the last place (near 0 or 1 the CDF can be so steep
    # that a single ulp of x moves it by more than any fixed tolerance)
    below = max(0.0, x - 4 * math.ulp(x))
    above = min(1.0, x + 4 * math.ulp(x))
    assert (
        s.regularized_incomplete_beta(below, a, b) - 1e-10
        <= q
        <= s.regularized_incomplete_beta(above, a, b) + 1e-10
    )


@pytest.mark.parametrize(
    ("a", "b"), [(0.1, 0.1), (0.1, 25.9), (25.9, 0.1), (3.0, 1e5), (1e5, 3.0), (0.5, 0.5)]
)
@pytest.mark.parametrize("q", [1e-8, 0.005, 0.25, 0.5, 0.75, 0.995])
def test_beta_quantile_matches_scipy(a: float, b: float, q: float) -> None:
    expected = sps.beta.ppf(q, a, b)
    assert s.beta_quantile(q, a, b) == pytest.approx(expected, rel=1e-8, abs=1e-14)


def test_beta_quantile_edges_and_errors() -> None:
    assert s.beta_quantile(0.0, 2, 3) == 0.0
    assert s.beta_quantile(1.0, 2, 3) == 1.0
    with pytest.raises(OnnxfiError):
        s.beta_quantile(1.5, 2, 3)
    with pytest.raises(OnnxfiError):
        s.beta_quantile(0.5, 0, 3)
    with pytest.raises(OnnxfiError):
        s.regularized_incomplete_beta(0.5, 1, -1)


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
def test_clopper_pearson_matches_scipy_beta_ppf(k: int, n: int, confidence: float) -> None:
    alpha = 1 - confidence
    lo, hi = s.clopper_pearson_interval(k, n, confidence)
    expected_lo = 0.0 if k == 0 else sps.beta.ppf(alpha / 2, k, n - k + 1)
    expected_hi = 1.0 if k == n else sps.beta.ppf(1 - alpha / 2, k + 1, n - k)
    assert lo == pytest.approx(expected_lo, abs=1e-8)
    assert hi == pytest.approx(expected_hi, abs=1e-8)


@pytest.mark.parametrize("confidence", GRID_CONF)
@pytest.mark.parametrize(("k", "n"), _grid())
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = s.wilson_interval(k, n, confidence)
    assert lo == pytest.approx(ci.low, abs=1e-8)
    assert hi == pytest.approx(ci.high, abs=1e-8)


def test_clopper_pearson_published_and_closed_form_values() -> None:
    # 5/10 at 95%: the textbook exact interval (0.1871, 0.8129)
    lo, hi = s.clopper_pearson_interval(5, 10, 0.95)
    assert (round(lo, 4), round(hi, 4)) == (0.1871, 0.8129)
    # k = 0: hi = 1 - (alpha/2)^(1/n); k = n: lo = (alpha/2)^(1/n)  ("rule of three" territory)
    for n in (1, 10, 300, 10**6):
        lo, hi = s.clopper_pearson_interval(0, n, 0.95)
        assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / n), abs=1e-12)
        lo, hi = s.clopper_pearson_interval(n, n, 0.95)
        assert lo == pytest.approx(0.025 ** (1 / n), abs=1e-12) and hi == 1.0


def test_wilson_hand_value() -> None:
    # k=2, n=10, z=1.96: centre (0.2 + z^2/20) / (1 + z^2/10), half z sqrt(.016 + z^2/400) / (1 + z^2/10)
    z2 = Z95**2
    centre = (0.2 + z2 / 20) / (1 + z2 / 10)
    half = Z95 * math.sqrt(0.016 + z2 / 400) / (1 + z2 / 10)
    lo, hi = s.wilson_interval(2, 10, 0.95)
    assert lo == pytest.approx(centre - half, abs=1e-14)
    assert hi == pytest.approx(centre + half, abs=1e-14)
    assert (round(lo, 4), round(hi, 4)) == (0.0567, 0.5098)


@pytest.mark.parametrize("func", [s.wilson_interval, s.clopper_pearson_interval])
def test_interval_edges(func: IntervalFn) -> None:
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
    cp = [_coverage(s.clopper_pearson_interval, n, float(p), 0.95) for p in ps]
    wilson = [_coverage(s.wilson_interval, n, float(p), 0.95) for p in ps]
    assert min(cp) >= 0.95 - 1e-9  # exact interval: never below nominal
    assert 0.935 <= float(np.mean(wilson)) <= 0.965  # Wilson: close to nominal on average
    assert float(np.mean(cp)) > float(np.mean(wilson))  # and Clopper-Pearson is the conservative one


@settings(max_examples=200)
@given(st.integers(0, 5000), st.integers(0, 5000), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_interval_properties(a: int, b: int, confidence: float) -> None:
    k, n = min(a, b), max(a, b)
    for method in ("wilson", "clopper-pearson"):
        lo, hi = s.interval(k, n, confidence, method)
        assert 0.0 <= lo <= hi <= 1.0
        if n:
            assert lo <= k / n <= hi
        wider_lo, wider_hi = s.interval(k, n, 0.999, method)
        assert wider_lo <= lo + 1e-12 and wider_hi >= hi - 1e-12


# --------------------------------------------------------------------------------------------------
# margin_reached, Rate, stratified
# --------------------------------------------------------------------------------------------------


def test_margin_reached() -> None:
    assert not s.margin_reached(0, 0, 0.01, 0.99)
    assert s.margin_reached(0, 0, 0.5, 0.99)  # (1 - 0) / 2 <= 0.5
    lo, hi = s.wilson_interval(50, 16588, 0.99)
    assert s.margin_reached(50, 16588, (hi - lo) / 2, 0.99)
    assert not s.margin_reached(50, 16588, (hi - lo) / 2 * 0.999, 0.99)
    # worst case p = 0.5 needs about the Leveugle sample size for e = 0.01 at 99%
    assert s.margin_reached(8294, 16588, 0.01, 0.99)
    assert not s.margin_reached(8000, 16000, 0.01, 0.99)
    lo, hi = s.clopper_pearson_interval(3, 100, 0.95)
    assert s.margin_reached(3, 100, (hi - lo) / 2, 0.95, method="clopper-pearson")
    assert not s.margin_reached(3, 100, (hi - lo) / 2 - 1e-9, 0.95, method="clopper-pearson")
    for bad in (0.0, -0.1, math.nan):
        with pytest.raises(OnnxfiError):
            s.margin_reached(3, 100, bad, 0.95)
    with pytest.raises(OnnxfiError, match="unknown interval method"):
        s.margin_reached(3, 100, 0.1, 0.95, method="wald")


def test_rate_with_ci() -> None:
    r = s.rate_with_ci(3, 100, 0.95)
    assert (r.k, r.n, r.rate, r.method, r.confidence) == (3, 100, 0.03, "wilson", 0.95)
    assert (r.lo, r.hi) == s.wilson_interval(3, 100, 0.95)
    assert r.half_width == pytest.approx((r.hi - r.lo) / 2)
    cp = s.rate_with_ci(np.int64(3), np.int64(100), 0.95, method="clopper-pearson")
    assert (cp.lo, cp.hi) == s.clopper_pearson_interval(3, 100, 0.95)
    assert type(cp.k) is int
    d = cp.to_dict()
    assert d == {
        "k": 3,
        "n": 100,
        "rate": 0.03,
        "lo": cp.lo,
        "hi": cp.hi,
        "method": "clopper-pearson",
        "confidence": 0.95,
    }
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.k = 4  # type: ignore[misc]
    empty = s.rate_with_ci(0, 0, 0.95)
    assert math.isnan(empty.rate) and (empty.lo, empty.hi) == (0.0, 1.0)
    with pytest.raises(OnnxfiError):
        s.rate_with_ci(1, 2, 0.95, method="exact")


def test_stratified_rate_hand_example() -> None:
    # two strata: 10/100 of 1000 faults and 40/100 of 3000 faults
    r = s.stratified_rate([(10, 100, 1000), (40, 100, 3000)], 0.95)
    w1, w2 = 0.25, 0.75
    rate = w1 * 0.1 + w2 * 0.4
    var = w1**2 * 0.1 * 0.9 / 100 * (900 / 999) + w2**2 * 0.4 * 0.6 / 100 * (2900 / 2999)
    assert r.rate == pytest.approx(rate, abs=1e-15)
    assert r.lo == pytest.approx(rate - Z95 * math.sqrt(var), abs=1e-12)
    assert r.hi == pytest.approx(rate + Z95 * math.sqrt(var), abs=1e-12)
    assert (r.k, r.n, r.method, r.confidence) == (50, 200, "stratified-normal", 0.95)
    nofpc = s.stratified_rate([(10, 100, 1000), (40, 100, 3000)], 0.95, finite_population=False)
    var2 = w1**2 * 0.1 * 0.9 / 100 + w2**2 * 0.4 * 0.6 / 100
    assert nofpc.hi == pytest.approx(rate + Z95 * math.sqrt(var2), abs=1e-12)


def test_stratified_rate_single_stratum_is_wald_and_enumerated_is_exact() -> None:
    r = s.stratified_rate([(30, 100, 10**15)], 0.99)
    half = Z99 * math.sqrt(0.3 * 0.7 / 100)
    assert (r.rate, r.lo, r.hi) == pytest.approx((0.3, 0.3 - half, 0.3 + half), abs=1e-9)
    exact = s.stratified_rate([(3, 10, 10), (0, 0, 0), (5, 5, 5)], 0.95)
    assert exact.rate == pytest.approx((3 + 5) / 15)
    assert exact.lo == exact.hi == exact.rate  # every fault was injected: no sampling error
    clipped = s.stratified_rate([(0, 2, 10**6), (2, 2, 10**6)], 0.95)
    assert clipped.lo >= 0.0 and clipped.hi <= 1.0


@pytest.mark.parametrize(
    "strata",
    [
        [],
        [(1, 0, 10)],
        [(0, 0, 10)],
        [(0, 3, 0)],
        [(0, 0, 0)],
        [(1, 20, 10)],
        [(1, 2)],
        [(1.0, 2, 10)],
    ],
)
def test_stratified_rate_rejects_bad_strata(strata: list[tuple[int, ...]]) -> None:
    with pytest.raises(OnnxfiError):
        s.stratified_rate(strata, 0.95)  # type: ignore[arg-type]
