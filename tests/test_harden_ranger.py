"""Ranger: Clip after each activation chain, bounds from the profile, numbers under ORT vs numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from harden_helpers import CONV_RELU, MIXED, fill, node_by_output, ops, parse, ranges, run, session

from onnxfi.data import Dataset
from onnxfi.passes.ranger import Ranger
from onnxfi.passes.relumax import ReluMax
from onnxfi.profile import profile_values

CHAIN = fill("""
chain (float[N,1,4,4] x) => (float[N,3] y) <float[2,1,3,3] w = {@W}, float[3,8] g = {@G}> {
  c = Conv <pads = [1,1,1,1]> (x, w)
  r = Relu(c)
  p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (r)
  f = Flatten(p)
  y = Gemm <transB = 1> (f, g)
}
""", W=np.linspace(-0.5, 0.6, 18).round(2), G=np.linspace(-1, 1, 24).round(2))

ELEMENTWISE = """
act (float[5] x) => (float[5] y, float[5] s, float[5] t) {
  y = Relu(x)
  s = Sigmoid(x)
  t = LeakyRelu <alpha = 0.1> (x)
}
"""


def test_clip_goes_after_the_last_node_of_the_relu_chain() -> None:
    model = parse(CHAIN)
    p = Ranger(ranges(f=(0.3, 1.25)))  # profiled min 0.3, but a ReLU chain clips at 0
    assert p.profile_points(model) == ["f"]
    assert p(model).modified
    assert ops(model) == ["Conv", "Relu", "MaxPool", "Flatten", "Clip", "Gemm"]
    clip = model.graph.node(4)
    lo, hi = (float(np.asarray(v.const_value.numpy())) for v in clip.inputs[1:])
    assert (lo, hi) == (0.0, 1.25)
    # the Gemm still reads a value named "f", now the clipped one
    assert clip.outputs[0].name == "f"
    assert node_by_output(model, "y").inputs[0] is clip.outputs[0]
    assert [c.detail for c in p.changes] == ["Clip [0, 1.25] after Relu -> MaxPool -> Flatten"]


def test_numbers_match_numpy_clip_per_activation() -> None:
    model = parse(ELEMENTWISE)
    p = Ranger(ranges(y=(-3.0, 2.0), s=(0.2, 0.7), t=(-0.15, 1.5)))
    p(model)
    x = np.array([-4.0, -1.0, 0.5, 1.8, 50.0], dtype=np.float32)
    for level in ("none", "all"):
        y, s, t = run(model, {"x": x}, level)
        np.testing.assert_array_equal(y, np.clip(np.maximum(x, 0), 0.0, 2.0))  # lo = 0 for ReLU
        sig = 1 / (1 + np.exp(-x.astype(np.float64)))
        np.testing.assert_allclose(s, np.clip(sig, 0.2, 0.7), rtol=1e-6)  # lo = profiled min otherwise
        leaky = np.where(x > 0, x, 0.1 * x)
        np.testing.assert_allclose(t, np.clip(leaky, -0.15, 1.5), rtol=1e-6)
    assert [o.name for o in model.graph.outputs] == ["y", "s", "t"]


def test_percentile_bound_comes_from_the_profile() -> None:
    model = parse(ELEMENTWISE)
    rng = np.random.default_rng(0)
    x = rng.normal(size=5).astype(np.float32)
    data = Dataset({"x": x}, None, "test")  # the model takes one fixed [5] input
    prof = profile_values(model, data, ["y"], percentiles=[90.0])
    p = Ranger(prof.ranges, percentile=90.0)
    p(model)
    expected_hi = float(np.percentile(np.maximum(x, 0), 90))
    assert p.changes[0].detail.startswith("Clip [0, ")
    clip = node_by_output(model, "y")
    assert float(np.asarray(clip.inputs[2].const_value.numpy())) == pytest.approx(expected_hi, rel=1e-6)


def test_ort_fusion_keeps_the_clip(tmp_path: Path) -> None:
    model = parse(CONV_RELU)
    Ranger(ranges(y=(0.0, 1.5)))(model)
    optimized = tmp_path / "opt.onnx"
    session(model, "all", optimized)
    fused = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    assert "Relu" not in fused and "Clip" not in fused  # ORT folded Relu and Clip into the Conv...
    x = np.random.default_rng(1).normal(size=(2, 1, 4, 4)).astype(np.float32)
    x[0, 0, 1, 1] = 1000.0  # a fault-sized input
    out = run(model, {"x": x}, "all")[0]
    reference = run(model, {"x": x}, "none")[0]
    np.testing.assert_array_equal(out, reference)
    assert out.max() == np.float32(1.5)  # ...and the bound still holds
    unhardened = run(parse(CONV_RELU), {"x": x}, "all")[0]
    assert unhardened.max() > 100
    np.testing.assert_allclose(out, np.clip(unhardened, 0, 1.5), rtol=1e-6)


def test_opset_10_uses_clip_attributes() -> None:
    model = parse(ELEMENTWISE.replace("LeakyRelu <alpha = 0.1> (x)", "Tanh(x)"), opset=10)
    Ranger(ranges(y=(0.0, 2.0), t=(-0.5, 0.5)))(model)
    clip = node_by_output(model, "t")
    assert clip.op_type == "Clip" and len(clip.inputs) == 1
    assert clip.attributes["min"].value == pytest.approx(-0.5)
    x = np.array([-4.0, -0.2, 0.3, 1.8, 50.0], dtype=np.float32)
    _, _, t = run(model, {"x": x})
    np.testing.assert_allclose(t, np.clip(np.tanh(x), -0.5, 0.5), rtol=1e-6)


def test_reasons_for_skipped_activations() -> None:
    model = parse(MIXED)
    p = Ranger(ranges(a=(0.0, 1.0), s=(0.5, 0.5)))
    assert p.check(node_by_output(model, "a")) is None
    assert p.check(node_by_output(model, "i")) == "value is INT32, not a float type"
    assert p.check(node_by_output(model, "s")) == (
        "'s' is constant on the calibration data ([0.5, 0.5]); a clip would freeze it"
    )
    assert p.check(node_by_output(model, "t")) == "no profiled range for 't'"
    assert p.check(node_by_output(model, "n")) == "Neg is not an activation"
    p(model)
    assert [c.node for c in p.changes] == ["Relu(a)"]
    assert [(s.node, s.reason) for s in p.skips] == [
        ("LeakyRelu(b)", "no profiled range for 'b'"),
        ("Relu(c)", "no profiled range for 'c'"),
        ("Relu(i)", "value is INT32, not a float type"),
        ("Sigmoid(s)", "'s' is constant on the calibration data ([0.5, 0.5]); a clip would freeze it"),
        ("Relu(e)", "no profiled range for 'e'"),
        ("Tanh(t)", "no profiled range for 't'"),
    ]
    # a second run finds the clip already there
    again = Ranger(ranges(a=(0.0, 1.0)))
    again(model)
    assert ("Relu(a__pre_onnxfi_ranger)", "output 'a__pre_onnxfi_ranger' already feeds the ranger hardening") in [
        (s.node, s.reason) for s in again.skips
    ]
    assert not again.changes


def test_relu_rewritten_by_relumax_is_left_to_it() -> None:
    model = parse(ELEMENTWISE)
    ReluMax(ranges(x=(-1.0, 2.0)))(model)
    p = Ranger(ranges(s=(0.0, 1.0)))
    clip = next(n for n in model.graph if n.op_type == "Clip")  # relumax's Clip(x, 0, FLT_MAX) replaced the Relu
    assert p.check(clip) == "part of the relumax hardening"


def test_layers_restricts_the_pass_to_matching_candidates() -> None:
    """``harden --layers REGEX``: only the activations whose label matches get a Clip; the rest are skipped
    with the reason, and their numbers are untouched."""
    import re

    model = parse(ELEMENTWISE)
    p = Ranger(ranges(y=(-3.0, 2.0), s=(0.2, 0.7), t=(-0.15, 1.5)))
    p.only = re.compile("Sigmoid")
    p(model)
    assert [c.detail.split(" after ")[1] for c in p.changes] == ["Sigmoid"]
    assert len(p.skips) == 2 and all(s.reason == "not in --layers Sigmoid" for s in p.skips)
    x = np.array([-4.0, -1.0, 0.5, 1.8, 50.0], dtype=np.float32)
    y, s, t = run(model, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))  # not clipped at 2
    np.testing.assert_allclose(s, np.clip(1 / (1 + np.exp(-x.astype(np.float64))), 0.2, 0.7), rtol=1e-6)
    np.testing.assert_allclose(t, np.where(x > 0, x, 0.1 * x), rtol=1e-6)


def test_layers_must_be_a_regular_expression() -> None:
    from onnxfi.errors import OnnxfiError
    from onnxfi.harden import HardenOptions

    with pytest.raises(OnnxfiError, match="not a regular expression"):
        HardenOptions(layers="features.(3")
