"""Tests for onnxfi.stats: Leveugle sample sizes, Wilson intervals, raw and population-weighted rates."""

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
    for bad in (0.0, -0.1, math.nan):
        with pytest.raises(OnnxfiError):
            s.margin_reached(3, 100, bad, 0.95)


def test_rate_with_ci() -> None:
    r = s.rate_with_ci(3, 100, 0.95)
    assert (r.k, r.n, r.rate, r.method, r.confidence) == (3, 100, 0.03, "wilson", 0.95)
    assert (r.lo, r.hi) == s.wilson_interval(3, 100, 0.95)
    assert r.half_width == pytest.approx((r.hi - r.lo) / 2)
    np_counts = s.rate_with_ci(np.int64(3), np.int64(100), 0.95)
    assert type(np_counts.k) is int and np_counts == r
    d = r.to_dict()
    assert d == {"k": 3, "n": 100, "rate": 0.03, "lo": r.lo, "hi": r.hi, "method": "wilson", "confidence": 0.95}
    json.dumps(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.k = 4  # type: ignore[misc]
    empty = s.rate_with_ci(0, 0, 0.95)
    assert math.isnan(empty.rate) and (empty.lo, empty.hi) == (0.0, 1.0)
    with pytest.raises(OnnxfiError):
        s.rate_with_ci(3, 2, 0.95)


def test_stratified_rate_known_values() -> None:
    # Two strata: 10/100 of 1000 faults and 40/100 of 3000. W = (1/4, 3/4), rate = 0.325. The variance
    # smooths each stratum's rate to q = (k + 0.5) / (n + 1) (10.5/101, 40.5/101) and applies the
    # finite-population factor (N - n) / (N - 1): V = 1/16 q1 (1 - q1) / 100 * 900/999
    # + 9/16 q2 (1 - q2) / 100 * 2900/2999 = 0.001358957710974774 (exact rational arithmetic),
    # so the 95% interval is 0.325 -+ 1.959964 * 0.0368640 = [0.2527478022, 0.3972521978].
    r = s.stratified_rate([(10, 100, 1000), (40, 100, 3000)], 0.95)
    assert r.rate == pytest.approx(0.325, abs=1e-15)
    assert (r.lo, r.hi) == pytest.approx((0.2527478022, 0.3972521978), abs=1e-10)
    assert (r.k, r.n, r.method, r.confidence) == (50, 200, "stratified-normal", 0.95)
    # without the finite-population factor: V = 0.0014093287422801686
    nofpc = s.stratified_rate([(10, 100, 1000), (40, 100, 3000)], 0.95, finite_population=False)
    assert (nofpc.lo, nofpc.hi) == pytest.approx((0.2514209382, 0.3985790618), abs=1e-10)


def test_stratified_rate_smoothing_keeps_uncertainty_of_all_or_nothing_strata() -> None:
    # 0/10 of a million: the plain estimator would give [0, 0]; q = 0.5/11 gives hi = z sqrt(q (1-q) / 10 * fpc)
    none = s.stratified_rate([(0, 10, 10**6)], 0.95)
    assert (none.rate, none.lo) == (0.0, 0.0)
    assert none.hi == pytest.approx(0.1291020395, abs=1e-10)
    # 0/2 and 2/2 of a million each: rate 0.5, V = 2 * 1/4 * (1/6)(5/6) / 2 * fpc = 0.0347221875
    split = s.stratified_rate([(0, 2, 10**6), (2, 2, 10**6)], 0.95)
    assert (split.rate, split.lo, split.hi) == pytest.approx((0.5, 0.1347824574, 0.8652175426), abs=1e-10)
    # one stratum, 30/100 of 10^15 at 99%: q = 30.5/101, [0.1817393712, 0.4182606288]
    one = s.stratified_rate([(30, 100, 10**15)], 0.99)
    assert (one.rate, one.lo, one.hi) == pytest.approx((0.3, 0.1817393712, 0.4182606288), abs=1e-10)


def test_stratified_rate_enumerated_strata_are_exact() -> None:
    exact = s.stratified_rate([(3, 10, 10), (0, 0, 0), (5, 5, 5)], 0.95)
    assert exact.rate == pytest.approx((3 + 5) / 15)
    assert exact.lo == exact.hi == exact.rate  # every fault was injected: no sampling error


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
