"""Weight range check (weight-clip, issue 19): the op sequence, exact fault-free numbers, flips cut back to the
weight's range under ONNX Runtime (against numpy), and the check kept in the graph ORT executes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from harden_helpers import fill, ops, parse, session, to_proto

from onnxfi.harden import HardenOptions, harden
from onnxfi.model import LoadedModel
from onnxfi.passes import WeightClip
from onnxfi.sites import enumerate_sites

TWO = """
two (float[N,4] x) => (float[N,3] y) <float[4,4] w1 = {@W1}, float[4,3] w2 = {@W2}, int64[1] ax = {1}> {
  a = MatMul(x, w1)
  r = Relu(a)
  b = MatMul(r, w2)
  c = ReduceSum(b, ax)
  y = Sub(b, c)
}
"""
W1 = (np.arange(16, dtype=np.float32) / 8 - 1).reshape(4, 4)  # exact in the 4 decimals fill() writes
W2 = ((np.arange(12, dtype=np.float32) - 4) / 8).reshape(4, 3)


def _model() -> ir.Model:
    return parse(fill(TWO, W1=W1.reshape(-1), W2=W2.reshape(-1)))


def _flip(values: np.ndarray, index: tuple[int, ...], bit: int) -> np.ndarray:
    out = values.copy()
    out.view(np.uint32)[index] ^= np.uint32(1 << bit)
    return out


def _reference(x: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    b = np.maximum(x @ w1, 0) @ w2
    return b - b.sum(axis=1, keepdims=True)


def test_each_weight_is_read_through_a_clip_to_its_own_range() -> None:
    model = _model()
    result = harden(model, ["weight-clip"], None, HardenOptions())
    hm = result.model
    assert ops(hm) == ["Clip", "Clip", "MatMul", "Relu", "MatMul", "ReduceSum", "Sub"]
    (report,) = result.reports
    assert sorted(c.node for c in report.changes) == ["w1", "w2"]
    assert [s.node for s in report.skips] == ["ax"]  # structural: the axes of ReduceSum
    # the weights keep their names and values, are overridable inputs, and onnxfi still sees one real input
    inputs = [v.name for v in hm.graph.inputs]
    assert inputs == ["x", "w1", "w2"]
    np.testing.assert_array_equal(hm.graph.initializers["w1"].const_value.numpy(), W1)
    assert [s.name for s in LoadedModel(hm, Path("m.onnx"), False).inputs()] == ["x"]
    sites = {s.name for s in enumerate_sites(hm).select("weights")}
    assert {"w1", "w2"} <= sites
    clips = [n for n in hm.graph if n.op_type == "Clip"]
    bounds = {n.inputs[0].name: (float(n.inputs[1].const_value.numpy()), float(n.inputs[2].const_value.numpy()))
              for n in clips}
    assert bounds == {"w1": (-1.0, 0.875), "w2": (-0.5, 0.875)}


def test_fault_free_outputs_are_unchanged_and_flips_are_cut_back_to_the_range(tmp_path: Path) -> None:
    model = _model()
    hm = harden(model, ["weight-clip"], None, HardenOptions()).model
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    plain = session(model).run(None, {"x": x})[0]
    checked = session(hm).run(None, {"x": x})[0]
    np.testing.assert_array_equal(plain, checked)
    for index, bit in [((1, 2), 30), ((0, 0), 29), ((3, 1), 31), ((2, 2), 3)]:
        bad = _flip(W2, index, bit)
        # the fault as onnxfi injects it: the stored initializer changed, the session built on the faulty model
        faulty = ir.from_proto(to_proto(hm))
        faulty.graph.initializers["w2"].const_value = ir.Tensor(bad, name="w2")
        got = session(faulty).run(None, {"x": x})[0]
        want = _reference(x, W1, np.clip(bad, W2.min(), W2.max()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        unprotected = _reference(x, W1, bad)
        if bit == 30:  # an exponent flip of a small weight: huge without the check, bounded with it
            assert np.abs(unprotected).max() > 1e30 and np.abs(got).max() < 10
    # ORT keeps the check at run time: the optimized graph still holds both Clips (an input is not folded)
    session(hm, optimized=tmp_path / "opt.onnx")
    kept = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert kept.count("Clip") == 2


def test_weights_it_cannot_check_are_left_alone_with_a_reason() -> None:
    text = """
    g (float[N,2] x) => (float[N,2] y) <int64[1,2] k = {1, 2}> {
      w = Constant <value = float[2,2] {1, 2, 3, 4}> ()
      kf = Cast <to = 1> (k)
      a = MatMul(x, w)
      y = Add(a, kf)
    }
    """
    model = parse(text)
    pass_ = WeightClip()
    pass_(model)
    reasons = {s.node: s.reason for s in pass_.skips}
    assert [c.node for c in pass_.changes] == ["w"]  # a Constant node's weight: made an initializer, checked
    assert list(reasons) == ["k"] and "not a float type" in reasons["k"]
    assert ops(model) == ["Clip", "Cast", "MatMul", "Add"]
    assert [v.name for v in model.graph.inputs] == ["x", "w"] and "w" in model.graph.initializers
    x = np.ones((3, 2), dtype=np.float32)
    want = x @ np.array([[1, 2], [3, 4]], dtype=np.float32) + np.array([[1, 2]], dtype=np.float32)
    np.testing.assert_array_equal(session(model).run(None, {"x": x})[0], want)


def test_only_the_layers_regex_is_checked() -> None:
    hm = harden(_model(), ["weight-clip"], None, HardenOptions(layers="^w2$")).model
    assert ops(hm) == ["Clip", "MatMul", "Relu", "MatMul", "ReduceSum", "Sub"]
    assert [v.name for v in hm.graph.inputs] == ["x", "w2"]
