"""FT-ClipAct: ReLU -> x if 0 <= x <= T else 0 (NaN too), both comparison forms, ORT fusion kept, threshold search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from harden_helpers import (
    CONV_RELU,
    fill,
    fused_nodes,
    initializer_values,
    node_by_output,
    ops,
    parse,
    ranges,
    run,
)

from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError
from onnxfi.harden import SearchConfig, harden, search_clipact_thresholds
from onnxfi.passes.clipact import ClipAct

RELU = "g (float[9] x) => (float[9] y) { y = Relu(x) }"
SPECIALS = np.array([-1.0, -0.0, 0.0, 1.0, 2.0, 2.5, np.nan, np.inf, -np.inf], dtype=np.float32)
EXPECTED = np.array([0, 0, 0, 1, 2, 0, 0, 0, 0], dtype=np.float32)  # T = 2: out of [0, T] and NaN -> 0


def _reference(x: np.ndarray, t: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.where((x >= 0) & (x <= t), x, 0).astype(x.dtype)


def test_relu_stays_and_the_zeroing_follows_it() -> None:
    model = parse(RELU)
    p = ClipAct(ranges(y=(0.0, 2.0)))
    assert p.profile_points(model) == ["y"]
    assert p(model).modified
    assert ops(model) == ["Relu", "LessOrEqual", "Where"]
    relu, le, where = list(model.graph)
    r = relu.outputs[0]
    assert relu.inputs[0].name == "x" and relu.metadata_props["onnxfi.hardening"] == "clipact"
    assert le.inputs[0] is r and where.inputs[0] is le.outputs[0] and where.inputs[1] is r
    assert float(np.asarray(where.inputs[2].const_value.numpy())) == 0.0
    assert [o.name for o in model.graph.outputs] == ["y"] and where.outputs[0].name == "y"
    assert initializer_values(model, list(p.threshold_values.values())) == [2.0]
    for level in ("none", "all"):
        np.testing.assert_array_equal(run(model, {"x": SPECIALS}, level)[0], EXPECTED)


def test_exact_against_numpy_on_random_bit_patterns() -> None:
    model = parse(RELU.replace("float[9]", "float[N]"))
    ClipAct(ranges(y=(0.0, 2.5)))(model)
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    t = np.float32(2.5)
    around = [np.nextafter(t, np.float32(np.inf)), t, np.nextafter(t, np.float32(0))]
    x = np.concatenate([x, np.array(around, dtype=np.float32), SPECIALS])
    for level in ("none", "all"):
        out = run(model, {"x": x}, level)[0]
        np.testing.assert_array_equal(out, _reference(x, 2.5))
        assert not np.isnan(out).any()  # NaN -> 0


def test_before_opset_12_strict_comparison_selects_the_same_values() -> None:
    model = parse(RELU, opset=11)
    ClipAct(ranges(y=(0.0, 2.0)))(model)
    assert ops(model) == ["Relu", "Less", "Where"]
    edge = np.array([np.nextafter(np.float32(2), np.float32(3)), 2.0, 1e-45, -1e-45, 0.0, np.nan, 7.0, -3.0, 1.5],
                    dtype=np.float32)
    expected = _reference(edge, 2.0)
    for level in ("none", "all"):
        out = run(model, {"x": edge}, level)[0]
        np.testing.assert_array_equal(out[[0, 1, 4, 5, 6, 7, 8]], expected[[0, 1, 4, 5, 6, 7, 8]])
        assert out[2] in (0.0, edge[2]) and out[3] == 0.0  # subnormals: either kept or flushed, never wrong sign


def test_relu6_becomes_relu_and_the_threshold_is_capped_by_the_clip_max() -> None:
    model = parse("""
    g (float[9] x) => (float[9] y) <float lo = {0.0}, float hi = {6.0}> { y = Clip(x, lo, hi) }""")
    p = ClipAct(ranges(y=(0.0, 8.0)))
    p(model)
    assert ops(model) == ["Relu", "LessOrEqual", "Where"]  # T <= 6: values above T go to 0, so no Clip is needed
    assert p.changes[0].detail == "Clip -> x if 0 <= x <= T else 0, T = 6"
    x = np.array([-1, 0, 3, 6, 6.5, 100, np.nan, 5.9, 1], dtype=np.float32)
    for level in ("none", "all"):
        np.testing.assert_array_equal(run(model, {"x": x}, level)[0], _reference(x, 6.0))


def test_threshold_override() -> None:
    model = parse(RELU)
    p = ClipAct(ranges(y=(0.0, 5.0)), thresholds={"y": 2.0})
    p(model)
    np.testing.assert_array_equal(run(model, {"x": SPECIALS})[0], EXPECTED)


def test_ort_keeps_the_conv_fusion_and_the_zeroing(tmp_path: Path) -> None:
    hardened = parse(CONV_RELU)
    ClipAct(ranges(y=(0.0, 1.0)))(hardened)
    assert ops(hardened) == ["Conv", "Relu", "LessOrEqual", "Where"]
    assert fused_nodes(hardened, tmp_path, nchwc=False) == [
        ("FusedConv", "Relu"), ("LessOrEqual", ""), ("Where", "")
    ]
    blocked = fused_nodes(hardened, tmp_path)  # NCHWc: a reorder before the comparison, fusion kept
    assert blocked[0] in (("FusedConv", "Relu"), ("nchwc.Conv", "Relu"))
    assert [op for op, _ in blocked if not op.startswith("nchwc.")] == ["LessOrEqual", "Where"]
    x = np.random.default_rng(3).normal(size=(3, 1, 4, 4)).astype(np.float32)
    x[2, 0, 0, 3] = -400.0
    x[0, 0, 3, 0] = 400.0
    x[1, 0, 1, 1] = np.nan
    exposed = parse(CONV_RELU.replace("y = Relu(c)", "y = Identity(c)"))
    for level in ("all", "none"):
        c = run(exposed, {"x": x}, level)[0]
        assert (c > 100).any() and np.isnan(c).any()
        out = run(hardened, {"x": x}, level)[0]
        np.testing.assert_array_equal(out, _reference(c, 1.0))
        assert not np.isnan(out).any()


def test_reasons() -> None:
    model = parse("""
    g (float[4] x) => (float[4] a, float[4] b, float[4] c, float[4] d, float[4] e) <float m1 = {-1.0}, float z = {0.0}> {
      a = Relu(x)
      b = LeakyRelu(x)
      c = Clip(x, m1)
      d = Clip(x)
      n = Neg(x)
      e = Relu(n)
    }""")
    p = ClipAct(ranges(a=(0.0, 1.0), e=(0.0, 0.0)))
    assert p.check(node_by_output(model, "a")) is None
    assert p.check(node_by_output(model, "b")) == (
        "clipact replaces ReLU activations (Relu, Clip with min 0); this is LeakyRelu"
    )
    assert p.check(node_by_output(model, "c")) == "Clip with min -1 is not a ReLU (clipact needs min 0)"
    assert p.check(node_by_output(model, "d")) == "Clip with no lower bound is not a ReLU (clipact needs min 0)"
    assert p.check(node_by_output(model, "e")) == (
        "dead ReLU: threshold T = 0 (the output max on the calibration data is not positive)"
    )
    p(model)
    assert [c.node for c in p.changes] == ["Relu(a)"]
    assert len(p.skips) == 4
    assert ClipAct(ranges()).check(node_by_output(model, "e")) == "no profiled range for 'e'"


MLP = fill("""
mlp (float[N,4] x) => (float[N,3] y) <float[4,6] w1 = {@W1}, float[6,3] w2 = {@W2}> {
  h = MatMul(x, w1)
  r = Relu(h)
  y = MatMul(r, w2)
}
""", W1=np.sin(np.arange(24)).round(3), W2=np.cos(np.arange(18)).round(3))


def _mlp_data() -> Dataset:
    x = np.random.default_rng(4).normal(size=(64, 4)).astype(np.float32)
    return Dataset({"x": x}, None, "test")


def test_search_never_lowers_the_auc_and_is_replayable() -> None:
    model = parse(MLP)
    data = _mlp_data()
    p = ClipAct(ranges(r=(0.0, 2.0)))
    p(model)
    labels = np.argmax(run(parse(MLP), {"x": data.feeds["x"]})[0], axis=1)
    cfg = SearchConfig(rates=(1e-3, 1e-2), trials=2, rounds=2, candidates=4, seed=7)
    a = search_clipact_thresholds(model, p.threshold_values, {"r": 2.0}, data, labels, "y", cfg)
    b = search_clipact_thresholds(model, p.threshold_values, {"r": 2.0}, data, labels, "y", cfg)
    assert a.thresholds == b.thresholds and a.history == b.history
    assert a.auc_final >= a.auc_initial
    assert 0 < a.thresholds["r"] <= 2.0
    assert [h["round"] for h in a.history] == [0, 1]
    assert a.history[0]["candidates"] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert a.fault_bits == (24 + 18) * 32
    assert initializer_values(model, list(p.threshold_values.values())) == [2.0]  # model untouched


def test_harden_with_search_writes_the_found_thresholds() -> None:
    from onnxfi.harden import HardenOptions

    model = parse(MLP)
    cfg = SearchConfig(rates=(1e-3, 1e-2), trials=2, rounds=2, seed=1)
    result = harden(model, ["clipact"], _mlp_data(), HardenOptions(search=True, search_config=cfg))
    report = result.reports[0]
    found = report.details["thresholds"]["r"]
    t_name = next(n for n in result.model.graph.initializers if n.startswith("onnxfi_clipact_T"))
    assert initializer_values(result.model, [t_name]) == [pytest.approx(found)]
    assert report.changes[0].detail.endswith("(searched)")
    assert report.details["search"]["auc_final"] >= report.details["search"]["auc_initial"]
    with pytest.raises(OnnxfiError, match="--search tunes clipact"):
        harden(model, ["ranger"], _mlp_data(), HardenOptions(search=True))
