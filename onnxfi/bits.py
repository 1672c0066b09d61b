"""Bit-level views of numeric tensors: which dtypes can take faults and how their bits are numbered.

Bit numbering, used everywhere in onnxfi: bit 0 is the least significant bit of the element's
storage word. For float32, bit 31 is the sign, bits 30..23 the exponent (30 its most significant
bit) and bits 22..0 the mantissa. float16: 15 sign, 14..10 exponent. bfloat16: 15 sign, 14..7
exponent. float64: 63 sign, 62..52 exponent. Integers: bit 7 of int8 is the two's-complement sign.

int4 and uint4 elements have bits 0..3 (bit 3 of int4 is the sign). ONNX stores them two to a byte,
the even element in the low nibble: element i bit b is bit (i % 2) * 4 + b of byte i // 2. In general
(little-endian raw data, every type) element i bit b is bit i * bits + b of the tensor's bytes, which
:meth:`DTypeInfo.storage_bit` gives as (byte, bit of that byte).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from onnxfi.errors import FaultError

__all__ = [
    "DTypeInfo",
    "dtype_info",
    "dtype_info_for_numpy",
    "is_fault_dtype",
    "is_float_dtype",
    "to_bits",
    "element_value",
    "from_bits",
    "FAULT_DTYPES",
]


@dataclass(frozen=True)
class DTypeInfo:
    """How one ONNX element type is stored: its numpy dtype, the unsigned word that holds its bits."""

    onnx: ir.DataType
    name: str
    numpy: np.dtype
    word: np.dtype
    bits: int
    is_float: bool
    exponent_bits: tuple[int, ...]  # bit positions of the exponent field, most significant first
    sign_bit: int | None

    def check_bit(self, bit: int) -> None:
        if not 0 <= bit < self.bits:
            raise FaultError(f"bit {bit} is outside {self.name} (bits 0..{self.bits - 1})")

    @property
    def per_byte(self) -> int:
        """Elements stored in one byte: 2 for int4/uint4 (packed), 1 for wider types."""
        return max(1, 8 // self.bits)

    def storage_bit(self, flat_index: int, bit: int) -> tuple[int, int]:
        """Where bit ``bit`` of element ``flat_index`` lies in the serialized tensor (ONNX raw data,
        little-endian, sub-byte types packed low bits first): (byte index, bit of that byte)."""
        self.check_bit(bit)
        pos = flat_index * self.bits + bit
        return pos // 8, pos % 8


def _float(onnx_t: ir.DataType, name: str, np_t: Any, word: type, bits: int, exp: int) -> DTypeInfo:
    mant = bits - 1 - exp
    return DTypeInfo(
        onnx_t, name, np.dtype(np_t), np.dtype(word), bits, True,
        tuple(range(bits - 2, mant - 1, -1)), bits - 1,
    )


def _int(onnx_t: ir.DataType, name: str, np_t: Any, word: type, bits: int, signed: bool) -> DTypeInfo:
    return DTypeInfo(onnx_t, name, np.dtype(np_t), np.dtype(word), bits, False, (), bits - 1 if signed else None)


FAULT_DTYPES: dict[ir.DataType, DTypeInfo] = {
    d.onnx: d
    for d in (
        _float(ir.DataType.FLOAT, "float32", np.float32, np.uint32, 32, 8),
        _float(ir.DataType.FLOAT16, "float16", np.float16, np.uint16, 16, 5),
        _float(ir.DataType.BFLOAT16, "bfloat16", ml_dtypes.bfloat16, np.uint16, 16, 8),
        _float(ir.DataType.DOUBLE, "float64", np.float64, np.uint64, 64, 11),
        _int(ir.DataType.INT8, "int8", np.int8, np.uint8, 8, True),
        _int(ir.DataType.UINT8, "uint8", np.uint8, np.uint8, 8, False),
        _int(ir.DataType.INT16, "int16", np.int16, np.uint16, 16, True),
        _int(ir.DataType.UINT16, "uint16", np.uint16, np.uint16, 16, False),
        _int(ir.DataType.INT32, "int32", np.int32, np.uint32, 32, True),
        _int(ir.DataType.UINT32, "uint32", np.uint32, np.uint32, 32, False),
        _int(ir.DataType.INT64, "int64", np.int64, np.uint64, 64, True),
        _int(ir.DataType.UINT64, "uint64", np.uint64, np.uint64, 64, False),
        # ml_dtypes holds one 4-bit value per byte, in the low nibble (the high nibble zero): the word is that byte
        _int(ir.DataType.INT4, "int4", ml_dtypes.int4, np.uint8, 4, True),
        _int(ir.DataType.UINT4, "uint4", ml_dtypes.uint4, np.uint8, 4, False),
    )
}
_BY_NUMPY = {d.numpy: d for d in FAULT_DTYPES.values()}


def is_float_dtype(dtype: Any) -> bool:
    """Whether a numpy dtype (or an array's) holds floating-point values: numpy's floats and ml_dtypes'
    bfloat16 and float8 types (whose ``kind`` is ``"V"``, so ``kind == "f"`` misses them)."""
    dt = dtype.dtype if isinstance(dtype, np.ndarray) else np.dtype(dtype)
    if dt.kind == "f":
        return True
    if dt.kind in "biucOSUMm":  # numpy's non-float kinds (complex included: ml_dtypes.finfo accepts it)
        return False
    try:
        ml_dtypes.finfo(dt)
    except (TypeError, ValueError):
        return False
    return True


def is_fault_dtype(dtype: ir.DataType | None) -> bool:
    return dtype in FAULT_DTYPES


def dtype_info(dtype: ir.DataType) -> DTypeInfo:
    try:
        return FAULT_DTYPES[dtype]
    except KeyError:
        raise FaultError(f"element type {dtype.name} cannot take bit faults") from None


def dtype_info_for_numpy(dtype: np.dtype) -> DTypeInfo:
    try:
        return _BY_NUMPY[np.dtype(dtype)]
    except KeyError:
        raise FaultError(f"numpy dtype {dtype} cannot take bit faults") from None


def element_value(v: Any) -> float:
    """One element (a numpy scalar or 0-d array of any fault dtype) as a Python float; a signalling NaN stays NaN."""
    a = np.asarray(v)
    if not is_float_dtype(a.dtype):
        return float(int(a))
    with np.errstate(invalid="ignore"):
        return float(a.astype(np.float64))


def to_bits(values: np.ndarray) -> np.ndarray:
    """A copy of ``values`` reinterpreted as unsigned words of the same width."""
    info = dtype_info_for_numpy(values.dtype)
    return np.require(values, requirements="C").view(info.word).copy()  # keeps 0-d arrays 0-d


def from_bits(words: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Unsigned words reinterpreted as ``dtype`` (a copy)."""
    info = dtype_info_for_numpy(dtype)
    return np.require(words, dtype=info.word, requirements="C").view(info.numpy).copy()
