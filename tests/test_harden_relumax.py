"""ReLUMax: 0 where the pre-activation exceeds M; float32 mask form, Where form, exact under ORT, fusion kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harden_helpers import (
    CONV_RELU,
    DIGITS,
    DIGITS_DATA,
    MIXED,
    fused_nodes,
    node_by_output,
    ops,
    parse,
    ranges,
    run,
)

from onnxfi.data import Dataset, load_data
from onnxfi.harden import harden
from onnxfi.model import load_model
from onnxfi.passes.relumax import ReluMax, mask_coefficients
from onnxfi.profile import profile_values

F32 = np.float32
FMAX = float(np.finfo(F32).max)

ACTS = """
g (float[N] x) => (float[N] y, float[N] z) {
  y = Relu(x)
  z = LeakyRelu(x)
}
"""


def _reference(x: np.ndarray, m: float) -> np.ndarray:
    """ReLUMax in numpy: Relu(x), 0 where x > M; NaN stays NaN (as ORT's Relu keeps it)."""
    with np.errstate(invalid="ignore"):
        return np.where(x > m, 0, np.maximum(x, 0)).astype(x.dtype)


def _probe(m: float, dtype: type = F32) -> np.ndarray:
    """Values around M and every special: +-0, subnormals, +-max, +-Inf, NaN, and random bit patterns."""
    info = np.finfo(dtype)
    mm = np.array(m, dtype=dtype)
    around = [mm]
    lo = hi = mm
    for _ in range(4):
        lo, hi = np.nextafter(lo, dtype(-np.inf)), np.nextafter(hi, dtype(np.inf))
        around += [lo, hi]
    specials = [0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, info.tiny, 1.0, -1.0,
                info.max, -info.max, np.inf, -np.inf, np.nan, m / 2, min(2 * m, float(info.max)), 3e4, -3e4]
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize]
    rng = np.random.default_rng(5)
    bits = rng.integers(0, np.iinfo(width).max, size=2000, dtype=width, endpoint=True).view(dtype)
    return np.concatenate([np.array(around, dtype=dtype), np.array(specials, dtype=dtype), bits])


def test_mask_form_op_sequence_and_names() -> None:
    model = parse(ACTS)
    p = ReluMax(ranges(x=(-5.0, 2.0)))
    assert p.profile_points(model) == ["x"]
    assert p(model).modified
    assert ops(model) == ["Clip", "HardSigmoid", "Mul", "LeakyRelu"]
    mul = node_by_output(model, "y")
    s, mask = mul.inputs
    clip, hsig = s.producer(), mask.producer()
    assert clip is not None and hsig is not None
    assert clip.op_type == "Clip" and clip.inputs[0].name == "x" and hsig.inputs[0] is s
    bounds = [float(np.asarray(v.const_value.numpy())) for v in clip.inputs[1:]]
    assert bounds == [0.0, FMAX]
    # M = 2: M+ = 2 + 2**-22, A = 2**22, A * M+ = 2**23 + 1
    assert hsig.attributes["alpha"].value == -(2.0**22) and hsig.attributes["beta"].value == 2.0**23 + 1
    assert all(n.metadata_props["onnxfi.hardening"] == "relumax" for n in (clip, hsig, mul))
    assert [o.name for o in model.graph.outputs] == ["y", "z"]
    assert p.changes[0].detail == "0 where pre-activation > M = 2"


@pytest.mark.parametrize("m", [2.0, 3.7, 4.56, 1e-3, 1e-20, 123456.7, 2.0**24, 3e30])
def test_mask_form_is_exact_under_ort(m: float) -> None:
    model = parse(ACTS)
    ReluMax(ranges(x=(-1.0, m)))(model)
    assert ops(model)[:3] == ["Clip", "HardSigmoid", "Mul"]
    mm = float(F32(m)) if float(F32(m)) >= m else float(np.nextafter(F32(m), F32(np.inf)))  # M rounded up
    x = _probe(mm)
    for level in ("none", "all"):
        y, z = run(model, {"x": x}, level)
        np.testing.assert_array_equal(y, _reference(x, mm))
        assert np.isnan(y[np.isnan(x)]).all()  # NaN passes, as through the Relu
        assert y[x == np.inf][0] == 0.0  # +Inf is above every M: 0, not Inf * 0 = NaN
    np.testing.assert_array_equal(run(parse(ACTS), {"x": x})[1], z)  # LeakyRelu untouched


def test_mask_coefficients() -> None:
    assert mask_coefficients(2.0) == (2.0**22, 2.0**23 + 1)
    for m in (0.3, 1.0, 7.25, 1e-30, 1e30, 2.0**-100):
        a, beta = mask_coefficients(m)  # type: ignore[misc]
        m32 = F32(m) if float(F32(m)) >= m else np.nextafter(F32(m), F32(np.inf))
        above = np.nextafter(m32, F32(np.inf))
        assert a == 1 / (float(above) - float(m32)) and np.log2(a) == int(np.log2(a))
        assert beta == a * float(above) and float(F32(beta)) == beta and float(F32(a)) == a
    assert mask_coefficients(1e-38) is None  # the gap above M is 2**-149: A = 2**149 is no float32
    assert mask_coefficients(FMAX) is None  # nothing above it
    assert mask_coefficients(0.0) is None


def test_where_form_for_other_float_types_and_extreme_m() -> None:
    half = parse(ACTS.replace("float[N]", "float16[N]"))
    ReluMax(ranges(x=(-5.0, 2.0)))(half)
    assert ops(half) == ["Relu", "Greater", "Where", "LeakyRelu"]
    where = node_by_output(half, "y")
    greater = where.inputs[0].producer()
    relu = next(n for n in half.graph if n.op_type == "Relu")
    assert greater is not None and greater.inputs[0] is relu.outputs[0] and where.inputs[2] is relu.outputs[0]
    assert relu.metadata_props["onnxfi.hardening"] == "relumax"
    for dtype, model in ((np.float16, half), (np.float64, parse(ACTS.replace("float[N]", "double[N]")))):
        if dtype == np.float64:
            ReluMax(ranges(x=(-5.0, 2.0)))(model)
            assert ops(model) == ["Relu", "Greater", "Where", "LeakyRelu"]
        x = _probe(2.0, dtype)
        for level in ("none", "all"):
            np.testing.assert_array_equal(run(model, {"x": x}, level)[0], _reference(x, 2.0))
    tiny = parse(ACTS)
    ReluMax(ranges(x=(-1.0, 1e-38)))(tiny)  # no exact float32 mask for this M
    assert ops(tiny) == ["Relu", "Greater", "Where", "LeakyRelu"]
    greater = node_by_output(tiny, "y").inputs[0].producer()
    assert greater is not None
    m32 = float(np.asarray(greater.inputs[1].const_value.numpy()))
    assert m32 >= 1e-38 and float(np.nextafter(F32(m32), F32(0))) < 1e-38  # M rounded up, never down
    x = _probe(m32)
    np.testing.assert_array_equal(run(tiny, {"x": x})[0], _reference(x, m32))


def test_m_is_the_profiled_preactivation_max() -> None:
    model = parse(ACTS)
    x = np.array([-1.0, 0.25, 3.5, -0.5, 1.0, 2.0], dtype=np.float32)
    prof = profile_values(model, Dataset({"x": x}, None, "t"), ReluMax({}).profile_points(model))
    assert prof["x"].max == 3.5 and prof["x"].min == -1.0
    p = ReluMax(prof.ranges)
    p(model)
    assert p.changes[0].detail == "0 where pre-activation > M = 3.5"
    y, _ = run(model, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # calibration inputs pass unchanged


def _conv_input() -> np.ndarray:
    x = np.random.default_rng(2).normal(size=(3, 1, 4, 4)).astype(np.float32)
    x[1, 0, 2, 2] = 500.0  # drives some pre-activations far above M
    x[2, 0, 1, 1] = np.inf  # and some to +-Inf
    return x


@pytest.mark.parametrize("m, form, activation", [(1.0, ["Clip", "HardSigmoid", "Mul"], "Clip"),
                                                 (FMAX, ["Relu", "Greater", "Where"], "Relu")])
def test_ort_keeps_the_conv_fusion_and_the_zeroing(
    m: float, form: list[str], activation: str, tmp_path: Path
) -> None:
    hardened = parse(CONV_RELU)
    ReluMax(ranges(c=(-2.0, m)))(hardened)  # M = FLT_MAX: no float32 mask, the Where form
    assert ops(hardened) == ["Conv", *form]
    # the activation fuses into the Conv, the hardening after it stays
    assert fused_nodes(hardened, tmp_path, nchwc=False) == [("FusedConv", activation)] + [
        (op, "") for op in form[1:]
    ]
    blocked = fused_nodes(hardened, tmp_path)
    assert blocked[0] in (("FusedConv", activation), ("nchwc.Conv", activation))
    assert [op for op, _ in blocked if not op.startswith("nchwc.")][-2:] == form[1:]
    x = _conv_input()
    exposed = parse(CONV_RELU.replace("y = Relu(c)", "y = Identity(c)"))
    for level in ("all", "none"):
        c = run(exposed, {"x": x}, level)[0]
        assert (c > 100).any() and np.isinf(c).any()
        np.testing.assert_array_equal(run(hardened, {"x": x}, level)[0], _reference(c, m))


def test_digits_cnn_keeps_the_fusions_and_the_blocked_layout(tmp_path: Path) -> None:
    """Every Conv keeps its (now Clip) activation fused and no reorder is inserted; clean outputs are unchanged."""
    loaded = load_model(DIGITS)
    data = load_data(DIGITS_DATA, loaded.inputs())
    hardened = harden(loaded.model, ["relumax"], data).model
    assert ops(hardened).count("HardSigmoid") == 3
    for nchwc in (False, True):
        nodes = fused_nodes(hardened, tmp_path, nchwc)
        kinds = [op for op, _ in nodes]
        assert [act for op, act in nodes if op in ("FusedConv", "nchwc.Conv")] == ["Clip"] * 3
        assert "nchwc.ReorderInput" not in kinds  # the blocked layout runs through HardSigmoid and Mul
        assert kinds.count("HardSigmoid") == 3 and kinds.count("Mul") == 3
    x = data.feeds["input"]
    np.testing.assert_array_equal(run(hardened, {"input": x})[0], run(loaded.model, {"input": x})[0])


def test_reasons() -> None:
    model = parse(MIXED)
    p = ReluMax(ranges(x=(-1.0, 2.0), d=(-3.0, -0.5)))
    assert {out: p.check(node_by_output(model, out)) for out in "abceit"} == {
        "a": None,
        "b": "relumax replaces Relu only; this is LeakyRelu",
        "c": "dead ReLU: the pre-activation max is -0.5 <= 0 on the calibration data",
        "e": "no profiled range for the pre-activation 'n'",
        "i": "value is INT32, not a float type",
        "t": "relumax replaces Relu only; this is Tanh",
    }
    p(model)
    assert [c.node for c in p.changes] == ["Relu(a)"]
    assert {s.node: s.reason for s in p.skips}["Relu(c)"].startswith("dead ReLU")
    old = parse("g (float[4] x) => (float[4] a) { a = Relu(x) }", opset=8)
    assert ReluMax(ranges(x=(0.0, 1.0))).check(node_by_output(old, "a")) is None  # the mask form needs no Where
    old_half = parse("g (float16[4] x) => (float16[4] a) { a = Relu(x) }", opset=8)
    assert ReluMax(ranges(x=(0.0, 1.0))).check(node_by_output(old_half, "a")) == (
        "Where needs opset 9; the model has opset 8"
    )
    again = ReluMax(ranges(x=(-1.0, 2.0)))
    again(model)
    assert not again.changes
    clip = next(n for n in model.graph if n.op_type == "Clip")
    assert again.check(clip) == "part of the relumax hardening"
    assert again.check(next(n for n in model.graph if n.op_type == "HardSigmoid")) == "part of the relumax hardening"
