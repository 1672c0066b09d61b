"""What a fault does to stored values: pure, bit-exact functions that never modify their input.

A fault is *what* happens; *where* it happens is a site and an element index (see ``sites``).
Bit numbering is documented once in :mod:`onnxfi.bits` (bit 0 = least significant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import ml_dtypes
import numpy as np

from onnxfi.bits import DTypeInfo, dtype_info_for_numpy, from_bits, to_bits
from onnxfi.errors import FaultError

__all__ = [
    "Fault",
    "BitFault",
    "BitFlip",
    "BurstFlip",
    "StuckAt",
    "SetValue",
    "RandomValue",
    "Zero",
    "BitMasks",
    "parse_fault",
    "fault_from_dict",
    "inject_element",
]


@dataclass(frozen=True)
class BitMasks:
    """A bit fault as word operations: ``new = ((old & and_mask) | or_mask) ^ xor_mask``."""

    and_mask: int
    or_mask: int
    xor_mask: int


class Fault:
    """Base class: ``apply(values)`` returns a new array of the same shape and dtype."""

    kind: ClassVar[str] = ""

    def apply(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        raise NotImplementedError

    def check(self, info: DTypeInfo) -> None:
        """Raise FaultError when this fault cannot hit an element of this type."""

    def spec(self) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec()


class BitFault(Fault):
    """A fault that acts on individual bits of the element's storage word."""

    def masks(self, info: DTypeInfo) -> BitMasks:
        raise NotImplementedError

    def target_bits(self) -> tuple[int, ...]:
        raise NotImplementedError

    def check(self, info: DTypeInfo) -> None:
        for b in self.target_bits():
            info.check_bit(b)

    def apply(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        info = dtype_info_for_numpy(values.dtype)
        self.check(info)
        m = self.masks(info)
        words = to_bits(values)
        w = info.word.type
        words = ((words & w(m.and_mask)) | w(m.or_mask)) ^ w(m.xor_mask)
        return from_bits(words, values.dtype).reshape(values.shape)


def _mask(bits: tuple[int, ...]) -> int:
    m = 0
    for b in bits:
        m |= 1 << b
    return m


def _full(info: DTypeInfo) -> int:
    return (1 << info.bits) - 1


def _bits_tuple(bits: Any) -> tuple[int, ...]:
    out = tuple(sorted({int(b) for b in bits}))
    if not out:
        raise FaultError("a bit fault needs at least one bit")
    return out


@dataclass(frozen=True)
class BitFlip(BitFault):
    """Invert each of ``bits`` (a single event upset when one bit is given)."""

    bits: tuple[int, ...]
    kind: ClassVar[str] = "flip"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _bits_tuple(self.bits))

    def target_bits(self) -> tuple[int, ...]:
        return self.bits

    def masks(self, info: DTypeInfo) -> BitMasks:
        return BitMasks(_full(info), 0, _mask(self.bits))

    def spec(self) -> str:
        return "flip:" + ",".join(map(str, self.bits))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": list(self.bits)}


@dataclass(frozen=True)
class BurstFlip(BitFault):
    """Invert ``length`` adjacent bits starting at ``start`` and going up (a multi-bit upset)."""

    start: int
    length: int
    kind: ClassVar[str] = "burst"

    def __post_init__(self) -> None:
        if self.length < 1:
            raise FaultError(f"burst length must be at least 1, got {self.length}")

    def target_bits(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.start + self.length))

    def masks(self, info: DTypeInfo) -> BitMasks:
        return BitMasks(_full(info), 0, _mask(self.target_bits()))

    def spec(self) -> str:
        return f"burst:{self.start}+{self.length}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "length": self.length}


@dataclass(frozen=True)
class StuckAt(BitFault):
    """Force each of ``bits`` to ``value`` (0 or 1), whatever it held."""

    bits: tuple[int, ...]
    value: int
    kind: ClassVar[str] = "stuck"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _bits_tuple(self.bits))
        if self.value not in (0, 1):
            raise FaultError(f"stuck-at value must be 0 or 1, got {self.value}")

    def target_bits(self) -> tuple[int, ...]:
        return self.bits

    def masks(self, info: DTypeInfo) -> BitMasks:
        m = _mask(self.bits)
        if self.value == 0:
            return BitMasks(_full(info) & ~m, 0, 0)
        return BitMasks(_full(info), m, 0)

    def spec(self) -> str:
        return f"stuck-{self.value}:" + ",".join(map(str, self.bits))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": list(self.bits), "value": self.value}


def _cast_value(value: float, dtype: np.dtype) -> np.ndarray:
    info = dtype_info_for_numpy(dtype)
    if not info.is_float:
        if not (math.isfinite(value) and value == int(value)):
            raise FaultError(f"value {value} is not an integer, cannot store it in {info.name}")
        lim = ml_dtypes.iinfo(dtype)  # numpy's iinfo does not know int4/uint4
        if not lim.min <= int(value) <= lim.max:
            raise FaultError(f"value {int(value)} is outside {info.name} ({lim.min}..{lim.max})")
        return np.array(int(value), dtype=dtype)
    with np.errstate(over="ignore"):
        return np.array(value, dtype=np.float64).astype(dtype)


@dataclass(frozen=True)
class SetValue(Fault):
    """Replace the element with ``value`` (cast to the element type; out of range is an error for ints)."""

    value: float
    kind: ClassVar[str] = "value"

    def check(self, info: DTypeInfo) -> None:
        _cast_value(self.value, info.numpy)

    def apply(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        out = np.empty_like(values)
        out[...] = _cast_value(self.value, values.dtype)
        return out

    def spec(self) -> str:
        return f"value:{self.value!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


@dataclass(frozen=True)
class Zero(SetValue):
    """Replace the element with zero (a cleared word)."""

    value: float = 0.0
    kind: ClassVar[str] = "zero"

    def spec(self) -> str:
        return "zero"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}


@dataclass(frozen=True)
class RandomValue(Fault):
    """Replace each element with a value drawn uniformly from [low, high) by the given Generator.

    Integer types draw integers in [ceil(low), floor(high)]. The draw is the only randomness; pass
    a seeded ``numpy.random.Generator`` to make it replayable.
    """

    low: float
    high: float
    kind: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise FaultError(f"random range needs low < high, got [{self.low}, {self.high})")

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        info = dtype_info_for_numpy(dtype)
        if info.is_float:
            # rounding to a narrow type (float16, bfloat16) can land on ``high`` or just below ``low``:
            # clamp to the representable values inside [low, high)
            with np.errstate(over="ignore"):
                first, last = np.array(self.low).astype(dtype), np.array(self.high).astype(dtype)
            if float(first) < self.low:
                first = np.nextafter(first, np.array(np.inf, dtype=dtype))
            if float(last) >= self.high:
                last = np.nextafter(last, np.array(-np.inf, dtype=dtype))
            if not float(first) <= float(last):
                raise FaultError(f"no {info.name} value lies in [{self.low}, {self.high})")
            with np.errstate(over="ignore"):
                vals = rng.uniform(self.low, self.high, size=shape).astype(dtype)
            return np.asarray(np.minimum(np.maximum(vals, first), last), dtype=dtype)
        lim = ml_dtypes.iinfo(dtype)  # numpy's iinfo does not know int4/uint4
        lo, hi = max(math.ceil(self.low), int(lim.min)), min(math.floor(self.high), int(lim.max))
        if lo > hi:
            raise FaultError(f"no {info.name} value lies in [{self.low}, {self.high})")
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)

    def check(self, info: DTypeInfo) -> None:
        self.draw(np.random.default_rng(0), (1,), info.numpy)

    def apply(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        if rng is None:
            raise FaultError("a random-value fault needs a seeded Generator")
        return self.draw(rng, values.shape, values.dtype)

    def spec(self) -> str:
        return f"random:{self.low!r},{self.high!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}


def _parse_float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise FaultError(f"{what} must be a number, got {text!r}") from None


def parse_fault(spec: str, bits: tuple[int, ...] = ()) -> Fault:
    """Parse a CLI fault spec. Bit faults take their bits from ``bits`` unless the spec names them.

    Forms: ``flip``, ``flip:3,5``, ``burst:K`` (K bits from the lowest of ``bits``), ``burst:23+4``,
    ``stuck-0``, ``stuck-1:30``, ``value:V``, ``random:LO,HI``, ``zero``.
    """
    name, _, arg = spec.strip().partition(":")
    name = name.lower()

    def bit_list() -> tuple[int, ...]:
        if arg:
            try:
                return tuple(int(b) for b in arg.split(","))
            except ValueError:
                raise FaultError(f"bad bit list in fault {spec!r}") from None
        if not bits:
            raise FaultError(f"fault {spec!r} needs --bit")
        return bits

    if name == "flip":
        return BitFlip(bit_list())
    if name in ("stuck-0", "stuck-1", "stuck0", "stuck1"):
        return StuckAt(bit_list(), int(name[-1]))
    if name == "burst":
        if "+" in arg:
            start, _, size = arg.partition("+")
            try:
                return BurstFlip(int(start), int(size))
            except ValueError:
                raise FaultError(f"bad burst {spec!r}: use burst:START+LENGTH") from None
        if not bits:
            raise FaultError(f"fault {spec!r} needs --bit (the lowest bit of the burst)")
        try:
            count = int(arg) if arg else 2
        except ValueError:
            raise FaultError(f"bad burst length in {spec!r}") from None
        return BurstFlip(min(bits), count)
    if name == "value":
        if not arg:
            raise FaultError("fault 'value' needs a number: value:V")
        return SetValue(_parse_float(arg, "value"))
    if name == "zero":
        return Zero()
    if name == "random":
        lo, sep, hi = arg.partition(",")
        if not sep:
            raise FaultError("fault 'random' needs a range: random:LO,HI")
        return RandomValue(_parse_float(lo, "low"), _parse_float(hi, "high"))
    raise FaultError(
        f"unknown fault {spec!r}; use flip, burst:K, stuck-0, stuck-1, value:V, random:LO,HI or zero"
    )


def fault_from_dict(d: dict[str, Any]) -> Fault:
    """A fault from its plan/JSON form; a field of the wrong type or value is a :class:`FaultError`."""
    try:
        return _fault_from_dict(d)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        if isinstance(e, FaultError):
            raise
        raise FaultError(f"not a fault: {d!r:.200} ({type(e).__name__}: {e})") from None


def _fault_from_dict(d: dict[str, Any]) -> Fault:
    kind = d.get("kind")
    if kind == "flip":
        return BitFlip(tuple(d["bits"]))
    if kind == "burst":
        return BurstFlip(int(d["start"]), int(d["length"]))
    if kind == "stuck":
        return StuckAt(tuple(d["bits"]), int(d["value"]))
    if kind == "value":
        return SetValue(float(d["value"]))
    if kind == "zero":
        return Zero()
    if kind == "random":
        return RandomValue(float(d["low"]), float(d["high"]))
    raise FaultError(f"unknown fault kind {kind!r}")


def inject_element(
    array: np.ndarray, flat_index: int, fault: Fault, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A copy of ``array`` with the element at ``flat_index`` (C order) replaced by the fault's result."""
    out = np.array(array, copy=True)
    flat = out.reshape(-1)
    flat[flat_index : flat_index + 1] = fault.apply(flat[flat_index : flat_index + 1], rng)
    return out
