"""Model zoo: every registry entry loads, runs and reproduces its recorded metric (onnxruntime only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxfi import zoo
from onnxfi.errors import OnnxfiError

REQUIRED = [
    "digits_cnn",
    "digits_mlp_skl",
    "digits_cnn_paddle",
    "fashion_cnn",
    "fashion_cnn_bnfold",
    "fashion_cnn_int8_qdq",
    "fashion_cnn_int8_qop",
    "fashion_cnn_fp16",
    "fashion_cnn_pruned50",
    "fashion_cnn_pruned90",
    "fashion_seg",
    "digits_vit",
    "digits_vit_fused",
    "digits_vit_int4",
]
TOLERANCE = 0.005  # +-0.5 percentage points
ALL = zoo.names()


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, object]]:
    return {name: zoo.evaluate(name) for name in ALL}


def _ops(name: str) -> set[str]:
    model = onnx.load(str(zoo.get(name).file))
    return {n.op_type for n in model.graph.node}


def test_required_models_present() -> None:
    missing = sorted(set(REQUIRED) - set(ALL))
    assert not missing, f"missing zoo entries: {missing}"


@pytest.mark.parametrize("name", ALL)
def test_entry_files_and_eval_subset(name: str) -> None:
    entry = zoo.get(name)
    assert entry.file.is_file() and entry.file.suffix == ".onnx"
    assert entry.eval_data.is_file() and entry.eval_data.suffix == ".npz"
    assert entry.task in ("classification", "segmentation", "detection")
    assert entry.data_source.get("license"), "data license must be recorded"
    assert entry.framework and entry.converter
    feeds, labels = zoo.load_eval_data(name)
    assert 256 <= labels.shape[0] <= 1000
    if entry.task == "detection":  # padded ground truth: rows (class, x1, y1, x2, y2), class -1 = padding
        assert labels.dtype == np.float32 and labels.ndim == 3 and labels.shape[2] == 5
    else:
        assert labels.dtype == np.int64
    for spec in entry.inputs:
        arr = feeds[spec.name]
        assert str(arr.dtype) == spec.dtype_name
        assert arr.shape[0] == labels.shape[0]
        assert all(isinstance(d, str) or d == n for d, n in zip(spec.shape, arr.shape, strict=True))
    assert entry.file.stat().st_size < 5 * 2**20
    assert entry.eval_data.stat().st_size < 5 * 2**20


@pytest.mark.parametrize("name", ALL)
def test_reproduces_recorded_metric(name: str, results: dict[str, dict[str, object]]) -> None:
    res = results[name]
    assert res["samples"] == zoo.get(name).eval_samples
    assert abs(float(res["difference"])) <= TOLERANCE, res  # type: ignore[arg-type]


def test_no_dl_framework_needed(results: dict[str, dict[str, object]]) -> None:
    assert results
    for framework in ("torch", "tensorflow", "paddle", "jax", "sklearn"):
        assert framework not in sys.modules, f"{framework} was imported by the zoo evaluation"


def test_quality_floors(results: dict[str, dict[str, object]]) -> None:
    assert results["digits_cnn"]["value"] >= 0.97  # type: ignore[operator]
    assert results["digits_vit"]["value"] >= 0.96  # type: ignore[operator]
    for name in ("digits_vit_fused", "digits_vit_int4"):  # the derived graphs stay close to fp32
        assert abs(results[name]["value"] - results["digits_vit"]["value"]) <= 0.01, name  # type: ignore[operator]
    for name in ALL:
        if name.startswith("fashion_cnn"):
            floor = 0.85 if "pruned90" in name else 0.88
            assert results[name]["value"] >= floor, name  # type: ignore[operator]


def test_segmentation_beats_background_baseline(results: dict[str, dict[str, object]]) -> None:
    entry = zoo.get("fashion_seg")
    assert entry.task == "segmentation" and entry.metric == "miou"
    _, labels = zoo.load_eval_data("fashion_seg")
    background = np.zeros((labels.shape[0], 11, *labels.shape[1:]), np.float32)
    background[:, 0] = 1.0  # every pixel predicted as class 0
    baseline = zoo.compute_metrics("segmentation", background, labels)
    recorded = entry.extra["baseline_all_background"]
    assert baseline["miou"] == pytest.approx(recorded["miou"], abs=1e-6)
    measured = results["fashion_seg"]
    assert float(measured["value"]) > baseline["miou"] + 0.3  # type: ignore[arg-type]
    assert measured["metrics"]["pixel_accuracy"] > baseline["pixel_accuracy"]  # type: ignore[index]


def test_graph_forms() -> None:
    assert "BatchNormalization" in _ops("digits_cnn")
    assert "BatchNormalization" in _ops("fashion_cnn")
    assert "BatchNormalization" not in _ops("fashion_cnn_bnfold")
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _ops("fashion_cnn_int8_qdq")
    assert "QLinearConv" in _ops("fashion_cnn_int8_qop")
    fp16 = onnx.load(str(zoo.get("fashion_cnn_fp16").file))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    skl = onnx.load(str(zoo.get("digits_mlp_skl").file))
    assert any(o.domain == "ai.onnx.ml" for o in skl.opset_import)
    paddle = onnx.load(str(zoo.get("digits_cnn_paddle").file))
    assert any(n.op_type == "Constant" for n in paddle.graph.node)
    assert {"LayerNormalization", "Softmax", "Erf"} <= _ops("digits_vit")
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= _ops("digits_vit_fused")
    assert "MatMulNBits" in _ops("digits_vit_int4")
    for name in ("digits_vit_fused", "digits_vit_int4"):
        model = onnx.load(str(zoo.get(name).file))
        assert {n.domain for n in model.graph.node} == {"", "com.microsoft"}, name


@pytest.mark.parametrize(("name", "floor"), [("fashion_cnn_pruned50", 0.45), ("fashion_cnn_pruned90", 0.85)])
def test_pruned_sparsity(name: str, floor: float) -> None:
    model = onnx.load(str(zoo.get(name).file))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer]
    weights = [w for w in weights if w.ndim >= 2]
    zeros = sum(int(np.sum(w == 0)) for w in weights)
    assert zeros / sum(w.size for w in weights) >= floor


def test_resolve_model(tmp_path: Path) -> None:
    assert zoo.resolve_model("digits_cnn") == zoo.get("digits_cnn").file
    existing = tmp_path / "digits_cnn"
    existing.write_bytes(b"x")
    assert zoo.resolve_model(str(existing)) == existing  # an existing file wins over a name
    assert zoo.resolve_model("no/such/model.onnx") == Path("no/such/model.onnx")
    assert zoo.resolve_model("not_a_zoo_name") == Path("not_a_zoo_name")
    assert zoo.eval_data_path("digits_cnn").name == "digits_eval.npz"


def test_unknown_name_lists_available() -> None:
    with pytest.raises(OnnxfiError, match="digits_cnn"):
        zoo.get("no_such_model")
    with pytest.raises(OnnxfiError):
        zoo.evaluate("no_such_model")


def test_segmentation_score_ignores_out_of_range_label_ids() -> None:
    """A 255 ("ignore") label id takes no part in mIoU or pixel accuracy (it used to count as a class)."""
    labels = np.array([[[0, 1], [1, 255]]])  # [N=1, H=2, W=2]
    scores = np.zeros((1, 2, 2, 2), np.float32)
    scores[0, 1, 1, :] = 1.0  # predicted: [[0, 0], [1, 1]]
    got = zoo.compute_metrics("segmentation", scores, labels)
    # class 0: TP 1, FP 1 (the labelled 1 at [0, 1]) -> 1/2; class 1: TP 1, FN 1 -> 1/2; the 255 pixel adds nothing
    assert got == {"miou": 0.5, "pixel_accuracy": 2 / 3}
    assert zoo.compute_metrics("segmentation", scores, np.array([[[0, 1], [1, 1]]]))["miou"] != 0.5


def test_classification_score() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    assert zoo.compute_metrics("classification", scores, np.array([1, 1, 1])) == {"accuracy": pytest.approx(2 / 3)}
    with pytest.raises(OnnxfiError, match="does not match labels shape"):
        zoo.compute_metrics("classification", scores, np.array([1, 1]))


def test_default_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert zoo.default_data("digits_cnn") == str(zoo.get("digits_cnn").eval_data)
    model = tmp_path / "digits_cnn"
    model.write_bytes(b"x")
    assert zoo.default_data(str(model)) is None  # an existing file wins over a name, as in resolve_model
    assert zoo.default_data("model.onnx") is None
    assert zoo.default_data("not_a_zoo_name") is None
    monkeypatch.setenv(zoo.ZOO_ENV_VAR, str(tmp_path / "nowhere"))
    assert zoo.default_data("digits_cnn") is None  # no zoo installed: no default data
    monkeypatch.setenv(zoo.ZOO_ENV_VAR, str(tmp_path))
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(OnnxfiError, match="cannot read model zoo registry"):
        zoo.default_data("digits_cnn")  # a broken registry is said, not taken for "no data"


def test_zoo_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(zoo.ZOO_ENV_VAR, str(tmp_path))
    assert zoo.zoo_dir() == tmp_path.resolve()
    with pytest.raises(OnnxfiError, match="registry not found"):
        zoo.entries()
    (tmp_path / "registry.json").write_text(json.dumps({"models": {}}))
    assert zoo.entries() == []
    assert zoo.resolve_model("digits_cnn") == Path("digits_cnn")


def _cli(argv: list[str]) -> int:
    from onnxfi.commands import zoo as zoo_cmd

    parser = argparse.ArgumentParser(prog="onnxfi")
    zoo_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["zoo", "list"]) == 0
    assert "fashion_cnn_int8_qop" in capsys.readouterr().out
    assert _cli(["zoo", "path", "digits_cnn"]) == 0
    assert capsys.readouterr().out.strip() == str(zoo.get("digits_cnn").file)
    assert _cli(["zoo", "eval", "digits_cnn", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metric"] == "accuracy" and abs(out["difference"]) <= TOLERANCE
    assert _cli(["zoo", "eval", "digits_mlp_skl"]) == 0
    assert "recorded" in capsys.readouterr().out
    with pytest.raises(OnnxfiError):
        _cli(["zoo", "path", "no_such_model"])
