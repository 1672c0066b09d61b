"""Zero-cost parameter protection (Gutierrez-Zaballa et al.): nudge fp32 weights out of fragile exponents.

Bit numbering as in :mod:`onnxfi.bits` (fp32: 31 sign, 30..23 exponent e, 22..0 mantissa; the value is
``1.m * 2**(e-127)``, ``1.m`` the significand). A weight is fragile when one exponent-bit flip makes it
large: at e = 127 (|w| in [1, 2)) a flip of bit 30 gives e = 255, Inf or NaN; at e = 125, 123, 119, 111,
95 or 63 (127 with one of bits 29..23 cleared) a flip of that bit gives e = 127, |w| >= 1. The rewrite
moves such a weight to the neighbouring exponent when its significand is close to that neighbour:

* e in {127, 125, 123, 119, 111, 95, 63} and significand <= L: e - 1 with an all-ones mantissa
  (the largest float below ``2**(e-127)``, just under the old value);
* e in {123, 119, 111, 95, 63} and significand >= U: e + 1 with a zero mantissa (``2**(e-126)``,
  just above the old value). Not for 127 (e + 1 = 128 sets bit 30) nor 125 (126 is one flip from 127).

Levels 0..3 use (U, L) = (1.999, 1.001), (1.99, 1.01), (1.95, 1.05), (1.9, 1.1): every rewritten weight
changes by at most ``max((L - 1 + 2**-24) / L, (2 - U) / U)`` relative (0.1%, 0.99%, 4.8%, 9.1%).
After the rewrite the new exponents (126, 124, 62/64, 94/96, 110/112, 118/120, 122/124) all have bit 30
clear and are at least two flips away from 127, so no single flip of a rewritten weight gives Inf or NaN,
and none of bits 29..23 of a weight rewritten from below 127 brings it to |w| >= 1. Weights in those
classes whose significand lies between L and U stay as they are (counted in the report); so do sign,
zero, subnormal and non-finite values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.errors import OnnxfiError
from onnxfi.passes._hardening import Change, HardeningPass, NodeBuilder, Settings, hardening_method
from onnxfi.sites import Site, SiteIndex, enumerate_sites

__all__ = [
    "Protect",
    "Weight",
    "LEVELS",
    "DOWN_EXPONENTS",
    "UP_EXPONENTS",
    "protect_array",
    "max_relative_change",
    "relative_change",
]

LEVELS: dict[int, tuple[float, float]] = {0: (1.999, 1.001), 1: (1.99, 1.01), 2: (1.95, 1.05), 3: (1.9, 1.1)}
DOWN_EXPONENTS = frozenset({127, 125, 123, 119, 111, 95, 63})  # significand <= L -> e - 1, mantissa all ones
UP_EXPONENTS = frozenset({123, 119, 111, 95, 63})  # significand >= U -> e + 1, mantissa 0

_MANT_BITS = 23
_MANT_MASK = (1 << _MANT_BITS) - 1
_SIGN_MASK = 1 << 31
_ONE_FLIP_BELOW_127 = frozenset(127 - (1 << k) for k in range(7))  # 126, 125, 123, 119, 111, 95, 63


def _level(level: int) -> tuple[float, float]:
    if level not in LEVELS:
        raise OnnxfiError(f"protection level must be one of {sorted(LEVELS)}, got {level}")
    return LEVELS[level]


def max_relative_change(level: int) -> float:
    """The largest relative change the rewrite can make to one weight at ``level``."""
    upper, lower = _level(level)
    return max((lower - 1 + 2.0**-24) / lower, (2 - upper) / upper)


def protect_array(values: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
    """(rewritten copy, mask of rewritten elements) of a float32 array; the input is not modified."""
    upper, lower = _level(level)
    if values.dtype != np.float32:
        raise TypeError(f"protect_array takes float32, got {values.dtype}")
    words = np.ascontiguousarray(values).view(np.uint32).reshape(-1)
    exp = (words >> _MANT_BITS) & 0xFF
    significand = 1.0 + (words & _MANT_MASK).astype(np.float64) / float(1 << _MANT_BITS)
    down = np.isin(exp, list(DOWN_EXPONENTS)) & (significand <= lower)
    up = np.isin(exp, list(UP_EXPONENTS)) & (significand >= upper)
    sign = words & np.uint32(_SIGN_MASK)
    new = words.copy()
    new[down] = sign[down] | ((exp[down] - np.uint32(1)) << np.uint32(_MANT_BITS)) | np.uint32(_MANT_MASK)
    new[up] = sign[up] | ((exp[up] + np.uint32(1)) << np.uint32(_MANT_BITS))
    out = new.view(np.float32).reshape(values.shape).copy()
    return out, (down | up).reshape(values.shape)


def relative_change(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """|new - old| / |old| in float64 (0 where old is 0)."""
    o = old.astype(np.float64)
    n = new.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(n - o) / np.abs(o)
    return np.where(o == 0, 0.0, rel)


def _fragile_left(values: np.ndarray, rewritten: np.ndarray) -> tuple[int, int]:
    """(elements left at e = 127, elements left in the other fragile classes)."""
    words = np.ascontiguousarray(values).view(np.uint32).reshape(-1)
    exp = (words >> _MANT_BITS) & 0xFF
    left = ~rewritten.reshape(-1)
    at127 = int(np.count_nonzero(left & (exp == 127)))
    others = int(np.count_nonzero(left & np.isin(exp, list(_ONE_FLIP_BELOW_127))))
    return at127, others


@dataclass(frozen=True)
class Rewrite:
    """The elements of one weight that ``Protect`` changed (flat C-order indices)."""

    indices: np.ndarray
    old: np.ndarray
    new: np.ndarray

    @property
    def worst_relative_change(self) -> float:
        return float(relative_change(self.old, self.new).max()) if self.indices.size else 0.0


@dataclass(frozen=True)
class Weight:
    """A weight ``Protect`` looks at: its site, the index that reads and writes it, and the hardening methods
    that own it (set when only hardening nodes use it)."""

    site: Site
    index: SiteIndex
    hardening: str | None = None


class Protect(HardeningPass[Weight, Weight]):
    """Rewrite the fragile float32 weights of every graph (initializers and Constant nodes) at ``level``.

    After ``call``: ``rewrites`` (site name -> :class:`Rewrite`) and ``worst_relative_change``.
    """

    method = "protect"
    summary = "zero-cost protection: nudge fp32 weights out of exponent classes where one flip blows up"
    options = ("level",)

    def __init__(self, level: int = 1) -> None:
        super().__init__()
        self.upper, self.lower = _level(level)
        self.level = level
        self.rewrites: dict[str, Rewrite] = {}
        self.worst_relative_change = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Protect:
        return cls(settings.level)

    def report_settings(self) -> dict[str, Any]:
        return {"level": self.level, "bound": max_relative_change(self.level)}

    def report_results(self) -> dict[str, Any]:
        return {
            "worst_relative_change": self.worst_relative_change,
            "rewritten": int(sum(r.indices.size for r in self.rewrites.values())),
        }

    def reset(self) -> None:
        super().reset()
        self.rewrites = {}
        self.worst_relative_change = 0.0

    def candidates(self, model: ir.Model) -> list[Weight]:
        """Every weight of every graph, structural tensors included (``plan`` says why they stay)."""
        index = enumerate_sites(model)
        hardening_nodes: dict[str, str] = {}
        for node in model.graph.all_nodes():
            method = hardening_method(node)
            if method and node.name:
                hardening_nodes[node.name] = method
        out = []
        for site in index.select("weights", include_structure=True):
            owners = {hardening_nodes.get(n) for n in site.nodes}
            hardening = ", ".join(sorted(map(str, owners))) if site.nodes and None not in owners else None
            out.append(Weight(site, index, hardening))
        return out

    def label(self, candidate: Weight) -> str:
        return candidate.site.name

    def plan(self, candidate: Weight) -> Weight | str:
        site = candidate.site
        if candidate.hardening:
            return f"constant of the {candidate.hardening} hardening"
        if site.kind != "weight":
            return "not a weight"
        if site.dtype != ir.DataType.FLOAT:
            return f"{site.dtype_name} weight: protect rewrites float32 only"
        if site.structural:
            return "structural tensor (feeds shapes, axes or indices), not a weight value"
        _, mask = protect_array(np.asarray(candidate.index.weight_array(site), dtype=np.float32), self.level)
        if not mask.any():
            return (f"no element to rewrite at level {self.level} (no fragile exponent with significand "
                    f"<= {self.lower}, or >= {self.upper} for exponents 123..63)")
        return candidate

    def rewrite(self, builder: NodeBuilder, plan: Weight) -> Change:
        site, index = plan.site, plan.index
        values = index.weight_array(site)
        new, mask = protect_array(values, self.level)
        flat = np.flatnonzero(mask.reshape(-1))
        rw = Rewrite(flat, values.reshape(-1)[flat].copy(), new.reshape(-1)[flat].copy())
        index.set_weight_array(site, new)
        self.rewrites[site.name] = rw
        worst = rw.worst_relative_change
        self.worst_relative_change = max(self.worst_relative_change, worst)
        at127, others = _fragile_left(new, mask)
        return Change(
            site.name, site.tensor_name or site.name,
            f"{flat.size} of {values.size} elements rewritten, worst relative change {worst:.3g}; "
            f"fragile left: {at127} at exponent 127, {others} at exponents one flip below 127",
        )
