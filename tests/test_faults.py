"""Fault models, bit for bit, on every fault dtype, against word arithmetic done with Python ints."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from conftest import DT, DT_BY_NAME, DTYPES, assert_same_words, from_int_words, int_words, random_words, words
from hypothesis import given
from hypothesis import strategies as st

from onnxfi.bits import dtype_info_for_numpy
from onnxfi.errors import FaultError, OnnxfiError
from onnxfi.faults import (
    BitFlip,
    BurstFlip,
    Fault,
    RandomValue,
    SetValue,
    StuckAt,
    Zero,
    fault_from_dict,
    inject_element,
    parse_fault,
)

DT_IDS = [d.name for d in DTYPES]
SHAPES = st.sampled_from([(1,), (5,), (2, 3), (3, 1, 2), (2, 2, 2, 2)])


@st.composite
def arrays(draw: st.DrawFn, dt: DT) -> np.ndarray:
    """Arrays of ``dt`` with arbitrary storage words (every NaN payload, inf, subnormal included)."""
    shape = draw(SHAPES)
    n = int(np.prod(shape))
    raw = draw(st.binary(min_size=n * dt.np.itemsize, max_size=n * dt.np.itemsize))
    return np.frombuffer(raw, dtype=dt.np).reshape(shape).copy()


def bit_sets(dt: DT) -> st.SearchStrategy[frozenset[int]]:
    return st.frozensets(st.integers(0, dt.bits - 1), min_size=1, max_size=min(dt.bits, 8))


def mask_of(bits: frozenset[int] | set[int] | range) -> int:
    m = 0
    for b in bits:
        m += 2**b
    return m


def expect(arr: np.ndarray, op: object) -> np.ndarray:
    """Apply ``op`` (a function on one Python-int word) to each element's word."""
    out = [op(w) for w in int_words(arr)]  # type: ignore[operator]
    return from_int_words(out, arr.dtype, arr.shape)


def check_apply(fault: Fault, arr: np.ndarray, expected: np.ndarray, rng: np.random.Generator | None = None) -> None:
    before = arr.copy()
    got = fault.apply(arr, rng)
    assert isinstance(got, np.ndarray)
    assert got is not arr
    assert_same_words(got, expected)
    np.testing.assert_array_equal(words(arr), words(before))  # input untouched


# ----------------------------------------------------------------------------------- bit faults


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_bitflip_every_dtype(dt: DT) -> None:
    full = 2**dt.bits - 1

    @given(arrays(dt), bit_sets(dt))
    def prop(arr: np.ndarray, bits: frozenset[int]) -> None:
        m = mask_of(bits)
        check_apply(BitFlip(tuple(bits)), arr, expect(arr, lambda w: (w ^ m) & full))

    prop()


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_stuck_at_every_dtype(dt: DT) -> None:
    full = 2**dt.bits - 1

    @given(arrays(dt), bit_sets(dt), st.sampled_from([0, 1]))
    def prop(arr: np.ndarray, bits: frozenset[int], value: int) -> None:
        m = mask_of(bits)
        if value:
            exp = expect(arr, lambda w: w | m)
        else:
            exp = expect(arr, lambda w: w & (full - m))
        check_apply(StuckAt(tuple(bits), value), arr, exp)

    prop()


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_burst_every_dtype(dt: DT) -> None:
    @given(arrays(dt), st.data())
    def prop(arr: np.ndarray, data: st.DataObject) -> None:
        start = data.draw(st.integers(0, dt.bits - 1))
        length = data.draw(st.integers(1, dt.bits - start))
        m = mask_of(range(start, start + length))
        fault = BurstFlip(start, length)
        check_apply(fault, arr, expect(arr, lambda w: w ^ m))
        assert fault.target_bits() == tuple(range(start, start + length))

    prop()


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_flip_twice_restores(dt: DT, rng: np.random.Generator) -> None:
    arr = random_words(dt, (4, 5), rng)
    bits = tuple(int(b) for b in rng.choice(dt.bits, size=3, replace=False))
    f = BitFlip(bits)
    assert_same_words(f.apply(f.apply(arr)), arr)


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_every_single_bit(dt: DT, rng: np.random.Generator) -> None:
    """Each single-bit flip changes exactly that bit of every element and nothing else."""
    arr = random_words(dt, (7,), rng)
    for b in range(dt.bits):
        got = BitFlip((b,)).apply(arr)
        diff = [a ^ c for a, c in zip(int_words(arr), int_words(got))]
        assert diff == [2**b] * 7, (dt.name, b)


def test_mrfi_int8_sign_flip() -> None:
    got = BitFlip((7,)).apply(np.array([1, 2, 3], dtype=np.int8))
    assert got.dtype == np.int8
    assert got.tolist() == [-127, -126, -125]


def test_float32_hand_examples() -> None:
    one = np.array([1.0], dtype=np.float32)
    assert BitFlip((30,)).apply(one)[0] == np.inf
    assert BitFlip((23,)).apply(one)[0] == np.float32(0.5)
    assert BitFlip((31,)).apply(one)[0] == np.float32(-1.0)
    assert BitFlip((22,)).apply(one)[0] == np.float32(1.5)
    assert BitFlip((0,)).apply(one)[0] == np.nextafter(np.float32(1.0), np.float32(2.0))
    assert words(StuckAt((31,), 1).apply(np.array([0.0], np.float32)))[0] == 0x80000000
    assert BurstFlip(23, 2).apply(one)[0] == np.float32(0.125)  # 0x3F800000 ^ 0x01800000 = 0x3E000000
    nan = BitFlip((30,)).apply(np.array([3.0], np.float32))  # 0x40400000 ^ 0x40000000 -> 0x00400000
    assert words(nan)[0] == 0x00400000


def test_narrow_and_wide_float_hand_examples() -> None:
    assert BitFlip((14,)).apply(np.array([1.0], np.float16))[0] == np.inf  # 0x3C00 ^ 0x4000 = 0x7C00
    assert BitFlip((10,)).apply(np.array([1.0], np.float16))[0] == np.float16(0.5)
    bf = np.array([1.0], dtype=ml_dtypes.bfloat16)  # 0x3F80
    assert words(bf)[0] == 0x3F80
    assert float(BitFlip((14,)).apply(bf)[0]) == math.inf
    assert float(BitFlip((7,)).apply(bf)[0]) == 0.5
    assert BitFlip((62,)).apply(np.array([1.0], np.float64))[0] == np.inf
    assert BitFlip((52,)).apply(np.array([1.0], np.float64))[0] == 0.5


def test_integer_hand_examples() -> None:
    assert BitFlip((63,)).apply(np.array([0], np.int64))[0] == np.iinfo(np.int64).min
    assert BitFlip((63,)).apply(np.array([0], np.uint64))[0] == np.uint64(2**63)
    assert StuckAt((7,), 0).apply(np.array([255], np.uint8))[0] == 127
    assert StuckAt((0, 1, 2, 3), 1).apply(np.array([-16], np.int8))[0] == -1
    assert BurstFlip(0, 16).apply(np.array([0], np.int16))[0] == -1
    assert BitFlip((31,)).apply(np.array([5], np.uint32))[0] == 2**31 + 5


def test_bit_faults_keep_shape_order() -> None:
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    got = BitFlip((4,)).apply(arr)
    assert got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr ^ 16)
    # a non-contiguous view keeps its logical order
    view = arr[:, ::2, ::-1]
    np.testing.assert_array_equal(BitFlip((4,)).apply(view), view ^ 16)


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_bits_outside_dtype_rejected(dt: DT) -> None:
    arr = np.zeros(3, dtype=dt.np)
    for fault in (
        BitFlip((dt.bits,)),
        BitFlip((0, dt.bits + 5)),
        BitFlip((-1,)),
        StuckAt((dt.bits,), 1),
        BurstFlip(dt.bits - 1, 2),
        BurstFlip(dt.bits, 1),
    ):
        with pytest.raises(FaultError, match="outside"):
            fault.apply(arr)
    BitFlip((dt.bits - 1,)).apply(arr)  # the top bit is fine


def test_fault_error_is_user_error() -> None:
    assert issubclass(FaultError, OnnxfiError)
    with pytest.raises(FaultError):
        BurstFlip(3, 0)
    with pytest.raises(FaultError):
        StuckAt((1,), 2)
    with pytest.raises(FaultError):
        BitFlip(())


def test_unsupported_dtype_rejected() -> None:
    with pytest.raises(FaultError):
        BitFlip((0,)).apply(np.array([True, False]))
    with pytest.raises(FaultError):
        BitFlip((0,)).apply(np.array([1 + 2j], dtype=np.complex64))


# --------------------------------------------------------------------------------- value faults


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_zero_every_dtype(dt: DT, rng: np.random.Generator) -> None:
    arr = random_words(dt, (3, 4), rng)
    check_apply(Zero(), arr, np.zeros((3, 4), dtype=dt.np))


FLOAT_WORDS = {  # IEEE / bfloat16 encodings of 5.0 and -3.0, written out by hand
    "float32": {5: 0x40A00000, -3: 0xC0400000},
    "float16": {5: 0x4500, -3: 0xC200},
    "bfloat16": {5: 0x40A0, -3: 0xC040},
    "float64": {5: 0x4014000000000000, -3: 0xC008000000000000},
}


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_set_value_every_dtype(dt: DT, rng: np.random.Generator) -> None:
    arr = random_words(dt, (2, 5), rng)
    for value in (5, -3) if dt.signed else (5, 200):
        w = FLOAT_WORDS[dt.name][value] if dt.is_float else value % 2**dt.bits
        check_apply(SetValue(float(value)), arr, from_int_words([w] * 10, dt.np, (2, 5)))


@pytest.mark.parametrize("dt", [d for d in DTYPES if not d.is_float], ids=lambda d: d.name)
def test_set_value_integer_limits(dt: DT) -> None:
    lo, hi = (-(2 ** (dt.bits - 1)), 2 ** (dt.bits - 1) - 1) if dt.signed else (0, 2**dt.bits - 1)
    arr = np.zeros(2, dtype=dt.np)
    if dt.bits < 64:  # the 64-bit limits are not exact as a float
        assert SetValue(float(hi)).apply(arr).tolist() == [hi] * 2
        assert SetValue(float(lo)).apply(arr).tolist() == [lo] * 2
    too_big = float(hi + 1) if dt.bits < 64 else 2.0**dt.bits if not dt.signed else 2.0**63
    too_small = float(lo - 1) if dt.bits < 64 or not dt.signed else -(2.0**63) - 2.0**11
    for bad in (too_big, too_small, 1.5, -0.5, math.nan, math.inf, -math.inf):
        with pytest.raises(FaultError):
            SetValue(bad).apply(arr)
        with pytest.raises(FaultError):
            SetValue(bad).check(dtype_info_for_numpy(dt.np))


def test_set_value_int8_out_of_range_examples() -> None:
    arr = np.array([1, 2, 3], dtype=np.int8)
    for bad in (128.0, -129.0, 1000.0):
        with pytest.raises(FaultError, match="outside int8"):
            SetValue(bad).apply(arr)
    with pytest.raises(FaultError):
        SetValue(-1.0).apply(arr.astype(np.uint8))


def test_set_value_float_rounding_and_overflow() -> None:
    assert words(SetValue(1e6).apply(np.zeros(1, np.float16)))[0] == 0x7C00  # overflows to +inf
    assert words(SetValue(-1e39).apply(np.zeros(1, np.float32)))[0] == 0xFF800000
    assert words(SetValue(0.1).apply(np.zeros(1, np.float32)))[0] == 0x3DCCCCCD  # round to nearest
    assert words(SetValue(0.1).apply(np.zeros(1, np.float64)))[0] == 0x3FB999999999999A
    nan = SetValue(math.nan).apply(np.zeros(2, np.float32))
    assert np.isnan(nan).all()


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_random_value_reproducible_and_in_range(dt: DT) -> None:
    arr = np.zeros((50, 40), dtype=dt.np)
    lo, hi = (-3.0, 7.5) if dt.signed else (2.0, 9.0)
    f = RandomValue(lo, hi)
    a = f.apply(arr, np.random.default_rng(7))
    b = f.apply(arr, np.random.default_rng(7))
    c = f.apply(arr, np.random.default_rng(8))
    assert a.dtype == dt.np and a.shape == arr.shape
    assert_same_words(a, b)
    assert not np.array_equal(words(a), words(c))
    v = a.astype(np.float64)
    if dt.is_float:
        assert (v >= lo).all() and (v < hi).all()
        assert len(np.unique(v)) > 20
    else:
        assert (v >= math.ceil(lo)).all() and (v <= math.floor(hi)).all()
        assert set(np.unique(v).tolist()) == set(range(math.ceil(lo), math.floor(hi) + 1))
    np.testing.assert_array_equal(arr, np.zeros((50, 40), dtype=dt.np))


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32"])
def test_random_value_half_open_for_narrow_floats(name: str) -> None:
    """Rounding to a narrow float must not produce ``high`` (or fall below ``low``)."""
    dt = DT_BY_NAME[name]
    for lo, hi in ((0.0, 1.0), (0.1, 0.2), (-1.0, -0.999)):
        v = RandomValue(lo, hi).apply(np.zeros(20000, dt.np), np.random.default_rng(3)).astype(np.float64)
        assert (v >= lo).all() and (v < hi).all(), (name, lo, hi, v.min(), v.max())


def test_random_value_needs_generator_and_range() -> None:
    with pytest.raises(FaultError):
        RandomValue(0.0, 1.0).apply(np.zeros(2, np.float32))
    with pytest.raises(FaultError):
        RandomValue(1.0, 1.0)
    with pytest.raises(FaultError):
        RandomValue(0.2, 0.8).apply(np.zeros(2, np.int8), np.random.default_rng(0))  # no integer inside
    with pytest.raises(FaultError):
        RandomValue(300.0, 400.0).apply(np.zeros(2, np.uint8), np.random.default_rng(0))


# ------------------------------------------------------------------------------ inject_element


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_inject_element_changes_one_element(dt: DT) -> None:
    @given(arrays(dt), st.data())
    def prop(arr: np.ndarray, data: st.DataObject) -> None:
        idx = data.draw(st.integers(0, arr.size - 1))
        bit = data.draw(st.integers(0, dt.bits - 1))
        before = arr.copy()
        got = inject_element(arr, idx, BitFlip((bit,)))
        exp = int_words(arr)
        exp[idx] ^= 2**bit
        assert_same_words(got, from_int_words(exp, dt.np, arr.shape))
        np.testing.assert_array_equal(words(arr), words(before))

    prop()


def test_inject_element_value_faults(rng: np.random.Generator) -> None:
    arr = rng.standard_normal((3, 4)).astype(np.float32)
    got = inject_element(arr, 5, Zero())
    exp = arr.copy()
    exp.reshape(-1)[5] = 0
    assert_same_words(got, exp)
    got = inject_element(arr, 11, RandomValue(10.0, 20.0), np.random.default_rng(1))
    changed = np.flatnonzero(words(got).reshape(-1) != words(arr).reshape(-1)).tolist()
    assert changed == [11] and 10 <= got.reshape(-1)[11] < 20


# ------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("spec", "bits", "expected"),
    [
        ("flip", (30,), BitFlip((30,))),
        ("flip", (3, 1), BitFlip((1, 3))),
        ("flip:3,5", (), BitFlip((3, 5))),
        ("flip:5", (30,), BitFlip((5,))),
        ("FLIP", (2,), BitFlip((2,))),
        ("burst:3", (23,), BurstFlip(23, 3)),
        ("burst", (23,), BurstFlip(23, 2)),
        ("burst:4", (9, 7), BurstFlip(7, 4)),
        ("burst:23+4", (), BurstFlip(23, 4)),
        ("stuck-0", (30,), StuckAt((30,), 0)),
        ("stuck-1", (30, 2), StuckAt((2, 30), 1)),
        ("stuck-1:30", (), StuckAt((30,), 1)),
        ("stuck0:1,2", (), StuckAt((1, 2), 0)),
        ("value:1e9", (), SetValue(1e9)),
        ("value:-2.5", (), SetValue(-2.5)),
        ("zero", (), Zero()),
        ("random:-1,1", (), RandomValue(-1.0, 1.0)),
        (" random:0.5,2 ", (), RandomValue(0.5, 2.0)),
    ],
)
def test_parse_fault_forms(spec: str, bits: tuple[int, ...], expected: Fault) -> None:
    got = parse_fault(spec, bits)
    assert type(got) is type(expected)
    assert got == expected
    # the canonical spec and dict forms round-trip
    assert parse_fault(got.spec()) == got
    assert fault_from_dict(got.to_dict()) == got


@pytest.mark.parametrize(
    ("spec", "bits"),
    [
        ("flip", ()),
        ("flip:a", ()),
        ("flip:1,,2", ()),
        ("stuck-1", ()),
        ("stuck-2", (1,)),
        ("burst:3", ()),
        ("burst:x", (1,)),
        ("burst:0", (1,)),
        ("burst:3+0", ()),
        ("burst:a+b", ()),
        ("value", ()),
        ("value:abc", ()),
        ("random", ()),
        ("random:1", ()),
        ("random:2,1", ()),
        ("random:a,b", ()),
        ("bogus", (1,)),
        ("", (1,)),
    ],
)
def test_parse_fault_rejects(spec: str, bits: tuple[int, ...]) -> None:
    with pytest.raises(FaultError):
        parse_fault(spec, bits)


def test_fault_from_dict_unknown_kind() -> None:
    with pytest.raises(FaultError):
        fault_from_dict({"kind": "melt"})


def test_fault_specs_are_stable() -> None:
    assert BitFlip((5, 3)).spec() == "flip:3,5"
    assert BurstFlip(23, 4).spec() == "burst:23+4"
    assert StuckAt((30,), 1).spec() == "stuck-1:30"
    assert Zero().spec() == "zero"
    assert str(BitFlip((1,))) == "flip:1"
