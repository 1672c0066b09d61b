"""The dtype table and bit numbering of onnxfi.bits (bit 0 = least significant bit of the word)."""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest
from conftest import DT, DTYPES, int_words, random_words, words
from onnx import TensorProto

from onnxfi.bits import FAULT_DTYPES, dtype_info, dtype_info_for_numpy, from_bits, is_fault_dtype, to_bits
from onnxfi.errors import FaultError
from onnxfi.faults import BitFlip

DT_IDS = [d.name for d in DTYPES]

EXPONENT = {  # (highest, lowest) exponent bit
    "float32": (30, 23),
    "float16": (14, 10),
    "bfloat16": (14, 7),
    "float64": (62, 52),
}


def test_table_covers_exactly_the_fault_dtypes() -> None:
    # int4/uint4 (packed two per byte) are tested on their own in test_packed4.py
    assert {int(k) for k in FAULT_DTYPES} == {d.onnx for d in DTYPES} | {TensorProto.INT4, TensorProto.UINT4}
    for bad in (ir.DataType.BOOL, ir.DataType.STRING, ir.DataType.COMPLEX64, ir.DataType.FLOAT8E4M3FN,
                ir.DataType.FLOAT4E2M1, ir.DataType.UNDEFINED):
        assert not is_fault_dtype(bad)
        with pytest.raises(FaultError):
            dtype_info(bad)
    assert not is_fault_dtype(None)
    with pytest.raises(FaultError):
        dtype_info_for_numpy(np.dtype(np.bool_))


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_dtype_info_matches_onnx(dt: DT) -> None:
    info = dtype_info(ir.DataType(dt.onnx))
    assert info.name == dt.name
    assert info.bits == dt.bits == 8 * info.numpy.itemsize
    assert info.numpy == dt.np == oh.tensor_dtype_to_np_dtype(dt.onnx)
    assert info.word == dt.word and info.word.kind == "u"
    assert info.is_float == dt.is_float
    assert dtype_info_for_numpy(dt.np) is info
    if dt.is_float:
        hi, lo = EXPONENT[dt.name]
        assert info.exponent_bits == tuple(range(hi, lo - 1, -1))
        assert info.sign_bit == dt.bits - 1
    else:
        assert info.exponent_bits == ()
        assert info.sign_bit == (dt.bits - 1 if dt.signed else None)


@pytest.mark.parametrize("name", list(EXPONENT))
def test_exponent_and_sign_bits_mean_what_they_say(name: str) -> None:
    """All exponent bits set on +0.0 gives +inf; the sign bit of 1.0 gives -1.0; bit 0 is the last mantissa bit."""
    info = next(i for i in FAULT_DTYPES.values() if i.name == name)
    zero = np.zeros(1, dtype=info.numpy)
    assert float(BitFlip(info.exponent_bits).apply(zero)[0]) == np.inf
    one = np.ones(1, dtype=info.numpy)
    assert info.sign_bit is not None
    assert float(BitFlip((info.sign_bit,)).apply(one)[0]) == -1.0
    lowest_exp = info.exponent_bits[-1]
    assert float(BitFlip((lowest_exp - 1,)).apply(one)[0]) == 1.5  # top mantissa bit
    nxt = BitFlip((0,)).apply(one)
    assert int_words(nxt)[0] - int_words(one)[0] == 1
    assert float(nxt[0]) > 1.0


@pytest.mark.parametrize("dt", DTYPES, ids=DT_IDS)
def test_to_bits_from_bits_round_trip(dt: DT, rng: np.random.Generator) -> None:
    arr = random_words(dt, (3, 5), rng)
    before = arr.copy()
    w = to_bits(arr)
    assert w.dtype == dt.word and w.shape == arr.shape
    np.testing.assert_array_equal(w, words(arr))
    w[0, 0] ^= 1  # a copy: the source is untouched
    np.testing.assert_array_equal(words(arr), words(before))
    back = from_bits(words(arr), dt.np)
    assert back.dtype == dt.np
    np.testing.assert_array_equal(words(back), words(arr))


def test_int8_bit7_is_the_sign() -> None:
    info = dtype_info(ir.DataType.INT8)
    assert info.sign_bit == 7
    assert BitFlip((7,)).apply(np.array([0], np.int8))[0] == -128


def test_check_bit_range() -> None:
    info = dtype_info(ir.DataType(TensorProto.FLOAT16))
    info.check_bit(0)
    info.check_bit(15)
    for bad in (-1, 16, 100):
        with pytest.raises(FaultError, match="float16"):
            info.check_bit(bad)
