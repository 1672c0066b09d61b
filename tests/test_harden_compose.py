"""Composition of hardening methods, their reports, and what hardening costs (clean metric, latency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from harden_helpers import DIGITS, DIGITS_DATA, fill, ops, parse, run

from onnxfi.data import Dataset, load_data
from onnxfi.errors import OnnxfiError
from onnxfi.harden import HardenOptions, harden, measure_hardening, parse_methods
from onnxfi.model import load_model

MLP = fill("""
mlp (float[N,4] x) => (float[N,3] y) <float[4,5] w1 = {@W1}, float[5,3] w2 = {@W2}, float[3] b = {1.0, 0.1, -0.3}> {
  h = MatMul(x, w1)
  r = Relu(h)
  z = MatMul(r, w2)
  y = Add(z, b)
}
""", W1=np.sin(np.arange(20) + 1).round(3), W2=np.cos(np.arange(15)).round(3))


def _data(labels: bool = False) -> Dataset:
    x = np.random.default_rng(8).normal(size=(40, 4)).astype(np.float32)
    y = np.argmax(run(parse(MLP), {"x": x})[0], axis=1) if labels else None
    if y is not None:
        y[:4] = (y[:4] + 1) % 3  # make the original 90% accurate
    return Dataset({"x": x}, y, "test")


def test_parse_methods() -> None:
    assert parse_methods("relumax, protect") == ["relumax", "protect"]
    assert parse_methods("nan_guard") == ["nan-guard"]
    with pytest.raises(OnnxfiError, match="unknown hardening method 'foo'; choose from ranger, clipact"):
        parse_methods("ranger,foo")
    with pytest.raises(OnnxfiError, match="given twice"):
        parse_methods("ranger,ranger")
    with pytest.raises(OnnxfiError, match="no hardening method"):
        parse_methods(" , ")


def test_methods_compose_in_order_and_leave_the_input_alone() -> None:
    model = parse(MLP)
    before = ops(model)
    result = harden(model, ["relumax", "ranger", "protect", "nan-guard"], _data())
    assert ops(model) == before
    assert [r.method for r in result.reports] == ["relumax", "ranger", "protect", "nan-guard"]
    relumax, ranger, protect, guard = result.reports
    assert [c.node for c in relumax.changes] == ["Relu(r)"]
    assert [(s.node, s.reason) for s in ranger.skips] == [
        ("onnxfi_relumax_Clip", "part of the relumax hardening"),
        ("onnxfi_relumax_HardSigmoid", "part of the relumax hardening"),
    ]
    assert not ranger.changes
    assert "b" in {c.node for c in protect.changes}  # b[0] = 1.0 sits at exponent 127
    assert "constant of the relumax hardening" in {s.reason for s in protect.skips}
    assert [(c.value, c.detail.split("(")[-1]) for c in guard.changes] == [
        ("r", "classifier input)"), ("y", "graph output)"),
    ]
    assert ops(result.model) == [
        "MatMul", "Clip", "HardSigmoid", "Mul", "IsNaN", "Clip", "Where", "MatMul", "Add", "IsNaN", "Clip", "Where",
    ]
    x = _data().feeds["x"]
    np.testing.assert_allclose(run(result.model, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_data_driven_methods_need_data() -> None:
    with pytest.raises(OnnxfiError, match="ranger needs calibration data"):
        harden(parse(MLP), ["protect", "ranger"])
    assert harden(parse(MLP), ["protect", "nan-guard"]).reports[0].method == "protect"
    with pytest.raises(OnnxfiError, match="--percentile must be in"):
        HardenOptions(percentile=0)


def test_measure_with_labels_and_without() -> None:
    model = parse(MLP)
    result = harden(model, ["clipact"], _data(), HardenOptions())
    c = measure_hardening(model, result.model, _data(labels=True), repeat=4, batch_size=16)
    assert (c.metric, c.output, c.samples) == ("accuracy", "y", 40)
    assert c.before == pytest.approx(0.9)
    assert c.after == c.before and c.metric_change == 0.0
    assert c.latency_before_ms > 0 and c.latency_after_ms > 0 and math.isfinite(c.overhead)
    assert c.batch == 16 and c.repeat == 4
    d = measure_hardening(model, result.model, _data(), repeat=2).to_dict()
    assert (d["metric"], d["before"], d["after"]) == ("top1_agreement", 1.0, 1.0)
    assert d["latency_ms"]["statistic"] == "median"


def test_digits_cnn_hardened_keeps_its_accuracy() -> None:
    loaded = load_model(DIGITS)
    data = load_data(DIGITS_DATA, loaded.inputs())
    result = harden(loaded.model, ["ranger", "protect", "nan-guard"], data)
    c = measure_hardening(loaded.model, result.model, data, repeat=3)
    assert c.metric == "accuracy" and c.samples == 360
    assert c.before == pytest.approx(0.997222, abs=1e-6)
    assert c.after is not None and abs(c.after - c.before) <= 1 / 360
    assert [len(r.changes) for r in result.reports] == [3, 8, 2]
