"""Zero-cost protection: exact rewrites, and every single-bit flip of every rewritten weight stays tame.

The flip checks use plain numpy XOR on the uint32 words (bit 31 sign, 30..23 exponent, 22..0 mantissa),
independent of the pass's own bit code.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from harden_helpers import DIGITS, parse
from hypothesis import given
from hypothesis import strategies as st

from onnxfi.model import load_model
from onnxfi.passes.protect import (
    DOWN_EXPONENTS,
    LEVELS,
    Protect,
    max_relative_change,
    protect_array,
)
from onnxfi.passes.ranger import Ranger
from onnxfi.profile import ValueRange
from onnxfi.sites import enumerate_sites

FLIPS = (np.uint32(1) << np.arange(32, dtype=np.uint32))  # one mask per bit 0..31
EXP_BITS = slice(23, 30)  # bits 29..23


def flipped(values: np.ndarray) -> np.ndarray:
    """[n, 32] float32: every value with each single bit flipped."""
    words = values.astype(np.float32).view(np.uint32)
    return (words[:, None] ^ FLIPS[None, :]).view(np.float32)


def exponent(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float32).view(np.uint32) >> 23) & 0xFF


def f32(word: int) -> np.float32:
    return np.array([word], dtype=np.uint32).view(np.float32)[0]


def assert_tame(old: np.ndarray, new: np.ndarray) -> None:
    """No flip of a rewritten weight gives Inf/NaN; none of bits 29..23 lifts a sub-1 weight to |w| >= 1."""
    f = flipped(new)
    assert np.isfinite(f).all()
    below = exponent(old) < 127
    with np.errstate(invalid="ignore"):
        assert (np.abs(f[below][:, EXP_BITS]) < 1).all()


def assert_fragile(old: np.ndarray) -> None:
    """Each original is one flip from Inf/NaN (exponent 127) or from |w| >= 1 (below 127)."""
    f = flipped(old)
    at127 = exponent(old) == 127
    assert (~np.isfinite(f[at127])).any(axis=1).all()
    with np.errstate(invalid="ignore"):
        assert (np.abs(f[~at127][:, EXP_BITS]) >= 1).any(axis=1).all()


def test_exact_rewrites() -> None:
    one = np.float32(1.0)
    values = np.array([
        1.0,                 # e 127, significand 1.0 <= L: -> largest float below 1
        -1.0,                # the sign stays
        1.005,               # e 127, 1.005 > L(level 0) = 1.001: left alone at level 0
        0.25 * 1.995,        # e 125, significand >= U: 125 only moves down -> left alone
        0.0625 * 1.9995,     # e 123, significand >= U: -> 2**-3 exactly (e 124, mantissa 0)
        0.0625 * 1.0005,     # e 123, significand <= L: -> e 122, mantissa all ones
        0.75,                # e 126: not a fragile class
        0.0, np.inf, np.nan,
    ], dtype=np.float32)
    new, mask = protect_array(values, 0)
    assert mask.tolist() == [True, True, False, False, True, True, False, False, False, False]
    assert new[0] == f32(0x3F7FFFFF) and new[0] == np.nextafter(one, np.float32(0))
    assert new[1] == -f32(0x3F7FFFFF)
    assert new[4] == np.float32(0.125)
    assert new.view(np.uint32)[5] == (122 << 23) | 0x7FFFFF
    np.testing.assert_array_equal(new[~mask], values[~mask])
    assert values[0] == 1.0  # input not modified


def test_levels_widen_the_window() -> None:
    values = np.array([1.005, 1.03, 1.08], dtype=np.float32)
    assert [protect_array(values, level)[1].sum() for level in (0, 1, 2, 3)] == [0, 1, 2, 3]
    assert max_relative_change(0) < max_relative_change(3) < 0.1


fragile_value = st.builds(
    lambda e, m, s: np.array([(s << 31) | (e << 23) | m], dtype=np.uint32).view(np.float32)[0],
    st.sampled_from(sorted(DOWN_EXPONENTS)),
    st.one_of(st.integers(0, 1 << 20), st.integers((1 << 23) - (1 << 20), (1 << 23) - 1), st.integers(0, (1 << 23) - 1)),
    st.integers(0, 1),
)


@given(st.lists(fragile_value, min_size=1, max_size=64), st.sampled_from(sorted(LEVELS)))
def test_every_flip_of_a_rewritten_value_is_tame(values: list[np.float32], level: int) -> None:
    old = np.array(values, dtype=np.float32)
    new, mask = protect_array(old, level)
    if not mask.any():
        return
    assert_tame(old[mask], new[mask])
    assert_fragile(old[mask])  # unprotected, the same flips blow each of them up
    rel = np.abs(new[mask].astype(np.float64) - old[mask]) / np.abs(old[mask].astype(np.float64))
    assert rel.max() <= max_relative_change(level)


@pytest.mark.parametrize("level", [1, 3])
def test_digits_cnn_weights(level: int) -> None:
    original = load_model(DIGITS).model
    hardened = load_model(DIGITS).model
    p = Protect(level)
    assert p(hardened).modified
    before = {s.name: enumerate_sites(original).weight_array(s) for s in enumerate_sites(original).select("weights")}
    after_index = enumerate_sites(hardened)
    after = {s.name: after_index.weight_array(s) for s in after_index.select("weights")}
    old_all, new_all, worst = [], [], 0.0
    for name in before:
        changed = np.flatnonzero(before[name].reshape(-1) != after[name].reshape(-1))
        assert changed.tolist() == (p.rewrites[name].indices.tolist() if name in p.rewrites else [])
        if changed.size:
            o = before[name].reshape(-1)[changed]
            n = after[name].reshape(-1)[changed]
            old_all.append(o)
            new_all.append(n)
            worst = max(worst, float((np.abs(n.astype(np.float64) - o) / np.abs(o.astype(np.float64))).max()))
    old, new = np.concatenate(old_all), np.concatenate(new_all)
    assert old.size == sum(r.indices.size for r in p.rewrites.values()) > 50
    assert_tame(old, new)
    assert_fragile(old)
    f = flipped(old)
    assert (~np.isfinite(f)).any()  # some originals sat at exponent 127...
    with np.errstate(invalid="ignore"):
        assert (np.abs(f[exponent(old) < 127][:, EXP_BITS]) >= 1).any()  # ...and others flip to |w| >= 1
    assert p.worst_relative_change == pytest.approx(worst, rel=1e-12)
    assert worst <= max_relative_change(level)
    assert p.skips and all(s.reason.startswith(f"no element to rewrite at level {level}") for s in p.skips)


def test_reasons_and_constant_nodes() -> None:
    model = parse("""
    g (float[2] x, float16[2] h, float[1,1,2,2] img) => (float[2] y, float16[2] z, float[1,1,4,4] u, float[2] e)
      <float[2] a = {1.0, 1.0005}, float16[2] b = {15360, 15360}, float[2] c = {0.7, 0.3}, float[4] sc = {1.0, 1.0, 2.0, 2.0}> {
      k = Constant <value = float[2] {1.0, 0.75}> ()
      t = Mul(x, a)
      y = Mul(t, k)
      q = Mul(h, b)
      z = Mul(q, b)
      e = Mul(x, c)
      u = Resize <mode = "nearest"> (img, , sc)
    }""")
    p = Protect(1)
    p(model)
    changed = {c.node for c in p.changes}
    assert changed == {"a", "k"}  # the Constant node's tensor is rewritten too
    reasons = {s.node: s.reason for s in p.skips}
    assert reasons["b"] == "float16 weight: protect rewrites float32 only"
    assert reasons["c"] == "no element to rewrite at level 1 (no fragile exponent with significand <= 1.01, or >= 1.99 for exponents 123..63)"
    assert reasons["sc"] == "structural tensor (feeds shapes, axes or indices), not a weight value"
    index = enumerate_sites(model)
    k = index.weight_array(index.get("k"))
    assert k.tolist() == [np.nextafter(np.float32(1), np.float32(0)), 0.75]
    assert p.rewrites["a"].indices.tolist() == [0, 1]


def test_hardening_constants_are_skipped() -> None:
    model = parse("g (float[3] x) => (float[3] y) { y = Relu(x) }")
    Ranger({"y": ValueRange("y", 0.0, 1.0, 3)})(model)  # hi = 1.0 sits at exponent 127
    p = Protect(1)
    p(model)
    assert not p.changes
    assert {s.reason for s in p.skips} == {"constant of the ranger hardening"}
    assert model.graph.initializers[next(n for n in model.graph.initializers if "hi" in n)].const_value.numpy() == 1.0
    assert isinstance(model, ir.Model)
