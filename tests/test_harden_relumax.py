"""ReLUMax: Relu -> Where(Greater(x, M), 0, Relu(x)); above-M pre-activations become 0, also after ORT fusions."""

from __future__ import annotations

import numpy as np
from harden_helpers import CONV_RELU, node_by_output, ops, parse, ranges, run, vr

from onnxfi.data import Dataset
from onnxfi.passes.relumax import ReluMax
from onnxfi.profile import profile_values

ACTS = """
g (float[6] x) => (float[6] y, float[6] z) {
  y = Relu(x)
  z = LeakyRelu(x)
}
"""


def test_op_sequence_and_names() -> None:
    model = parse(ACTS)
    p = ReluMax(ranges(vr("x", -5.0, 2.0)))
    assert p.profile_points(model) == ["x"]
    assert p(model).modified
    assert ops(model) == ["Relu", "Greater", "Where", "LeakyRelu"]
    where = node_by_output(model, "y")
    greater = where.inputs[0].producer()
    assert greater is not None and greater.inputs[0].name == "x"
    assert float(np.asarray(greater.inputs[1].const_value.numpy())) == 2.0
    assert [o.name for o in model.graph.outputs] == ["y", "z"]


def test_inputs_above_m_give_zero() -> None:
    model = parse(ACTS)
    ReluMax(ranges(vr("x", -5.0, 2.0)))(model)
    x = np.array([-3.0, 0.0, 1.0, 2.0, 2.5, 1e30], dtype=np.float32)
    for level in ("none", "all"):
        y, z = run(model, {"x": x}, level)
        np.testing.assert_array_equal(y, np.where(x > 2.0, 0.0, np.maximum(x, 0)).astype(np.float32))
        np.testing.assert_allclose(z, np.where(x > 0, x, 0.01 * x), rtol=1e-6)  # LeakyRelu untouched


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


def test_ort_fusion_keeps_the_zeroing() -> None:
    hardened = parse(CONV_RELU)
    ReluMax(ranges(vr("c", -2.0, 1.0)))(hardened)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 1, 4, 4)).astype(np.float32)
    x[1, 0, 2, 2] = 500.0  # drives some pre-activations far above M
    conv_only = parse(CONV_RELU.replace("y = Relu(c)", "y = Identity(c)"))
    c = run(conv_only, {"x": x}, "none")[0]
    expected = np.where(c > 1.0, 0.0, np.maximum(c, 0)).astype(np.float32)
    assert (c > 100).any() and (expected[c > 1.0] == 0).all()
    for level in ("all", "none"):
        np.testing.assert_allclose(run(hardened, {"x": x}, level)[0], expected, rtol=1e-5, atol=1e-6)


def test_reasons() -> None:
    model = parse("""
    g (float[4] x, float[4] d) => (float[4] a, float[4] b, float[4] c, float[4] e) {
      a = Relu(x)
      b = LeakyRelu(x)
      c = Relu(d)
      n = Neg(x)
      e = Relu(n)
    }""")
    p = ReluMax(ranges(vr("x", -1.0, 2.0), vr("d", -3.0, -0.5)))
    assert p.check(node_by_output(model, "a")) is None
    assert p.check(node_by_output(model, "b")) == "relumax replaces Relu only; this is LeakyRelu"
    assert p.check(node_by_output(model, "c")) == (
        "dead ReLU: the pre-activation max is -0.5 <= 0 on the calibration data"
    )
    assert p.check(node_by_output(model, "e")) == "no profiled range for the pre-activation 'n'"
    p(model)
    assert [c.node for c in p.changes] == ["Relu(a)"]
    assert {s.node: s.reason for s in p.skips}["Relu(c)"].startswith("dead ReLU")
    old = parse("g (float[4] x) => (float[4] a) { a = Relu(x) }", opset=8)
    assert ReluMax(ranges(vr("x", 0.0, 1.0))).check(node_by_output(old, "a")) == (
        "Where needs opset 9; the model has opset 8"
    )
    again = ReluMax(ranges(vr("x", -1.0, 2.0)))
    again(model)
    assert not again.changes
    relu = next(n for n in model.graph if n.op_type == "Relu" and n.inputs[0].name == "x")
    assert again.check(relu) == "part of the relumax hardening"
