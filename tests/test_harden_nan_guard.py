"""NaN guard: NaN -> 0, +-Inf -> +-max at outputs, residual Adds and the classifier input; regex points."""

from __future__ import annotations

import numpy as np
import pytest
from harden_helpers import fill, node_by_output, ops, parse, run

from onnxfi.errors import OnnxfiError
from onnxfi.faults import SetValue
from onnxfi.passes import InsertActivationFault
from onnxfi.passes.nan_guard import GuardPoint, NanGuard, default_points
from onnxfi.sites import enumerate_sites

F32_MAX = np.finfo(np.float32).max

RESNETISH = fill("""
res (float[N,2,4,4] x) => (float[N,3] y) <float[2,2,3,3] w = {@W}, float[3,2] g = {0.5, -1.0, 0.25, 2.0, -0.75, 1.0}> {
  c = Conv <pads = [1,1,1,1]> (x, w)
  r = Relu(c)
  s = Add(r, x)
  p = GlobalAveragePool(s)
  f = Flatten(p)
  y = Gemm <transB = 1> (f, g)
}
""", W=np.linspace(-0.4, 0.5, 36))


def test_default_points_are_residual_adds_classifier_input_and_outputs() -> None:
    model = parse(RESNETISH)
    assert [(p.value.name, p.why) for p in default_points(model)] == [
        ("s", "after residual Add"),
        ("f", "classifier input"),
        ("y", "graph output"),
    ]
    p = NanGuard()
    p(model)
    assert ops(model) == [
        "Conv", "Relu", "Add", "IsNaN", "Clip", "Where", "GlobalAveragePool", "Flatten", "IsNaN", "Clip", "Where",
        "Gemm", "IsNaN", "Clip", "Where",
    ]
    assert [c.value for c in p.changes] == ["s", "f", "y"]
    assert [o.name for o in model.graph.outputs] == ["y"]


@pytest.mark.parametrize("dtype,np_t", [("float", np.float32), ("float16", np.float16), ("double", np.float64)])
def test_nan_to_zero_inf_to_max(dtype: str, np_t: type) -> None:
    model = parse(f"g ({dtype}[6] x) => ({dtype}[6] y) {{ y = Neg(x) }}")
    NanGuard()(model)
    x = np.array([np.nan, np.inf, -np.inf, 1.5, -2.0, 0.0], dtype=np_t)
    top = np.finfo(np_t).max
    expected = np.array([0, -top, top, -1.5, 2.0, -0.0], dtype=np_t)
    for level in ("none", "all"):
        out = run(model, {"x": x}, level)[0]
        assert out.dtype == np_t
        np.testing.assert_array_equal(out, expected)


def test_opset_10_clip_attributes() -> None:
    model = parse("g (float[4] x) => (float[4] y) { y = Neg(x) }", opset=10)
    NanGuard()(model)
    assert ops(model) == ["Neg", "IsNaN", "Clip", "Where"]
    out = run(model, {"x": np.array([np.nan, np.inf, -np.inf, 3], np.float32)})[0]
    np.testing.assert_array_equal(out, np.array([0, -F32_MAX, F32_MAX, -3], np.float32))


def test_injected_nan_is_stopped_under_full_optimization() -> None:
    model = parse(RESNETISH)
    sites = enumerate_sites(model)
    InsertActivationFault(sites.get("c"), 5, SetValue(float("nan")))(model)
    x = np.random.default_rng(5).normal(size=(2, 2, 4, 4)).astype(np.float32)
    unguarded = run(model, {"x": x}, "all")[0]
    assert np.isnan(unguarded).all()  # the NaN reaches every logit through the pooling
    NanGuard()(model)
    for level in ("all", "none"):
        guarded = run(model, {"x": x}, level)[0]
        assert np.isfinite(guarded).all()


def test_regex_points() -> None:
    model = parse(RESNETISH)
    p = NanGuard(pattern="^(r|p)$")
    assert [pt.value.name for pt in p.points(model)] == ["r", "p"]
    p(model)
    assert [c.value for c in p.changes] == ["r", "p"]
    with pytest.raises(OnnxfiError, match="matches no value"):
        NanGuard(pattern="^nothing$").points(model)
    with pytest.raises(OnnxfiError, match="bad --guard-points regex"):
        NanGuard(pattern="(").points(model)


def test_reasons() -> None:
    model = parse("""
    g (float[4] x, int64[4] k) => (float[4] y, int64[4] j, float[4] x2) {
      y = Neg(x)
      j = Neg(k)
      x2 = Identity(x)
    }""")
    p = NanGuard(pattern=".")
    by_name = {pt.value.name: pt for pt in p.points(model)}
    assert p.check(by_name["y"]) is None
    assert p.check(by_name["j"]) == "'j' is INT64: only float values can hold NaN or Inf"
    p(model)
    assert [(s.node, s.reason) for s in p.skips] == [("j", "'j' is INT64: only float values can hold NaN or Inf")]
    again = NanGuard(pattern="^y$")
    again(model)
    assert again.skips[0].reason == "'y' is already the output of a NaN guard"
    old = parse("g (float[4] x) => (float[4] y) { y = Neg(x) }", opset=8)
    old_y = GuardPoint(node_by_output(old, "y").outputs[0], "test")
    assert NanGuard().check(old_y) == "Where needs opset 9; the model has opset 8"
    graph_input = parse("g (float[4] x) => (float[4] y) { y = Neg(x) }").graph.inputs[0]
    assert NanGuard().check(GuardPoint(graph_input, "test")) == (
        "'x' is a graph input or initializer, not computed by the model"
    )
