"""The detection task end to end (issue 20): outcomes of hand-built detections through classify, the choice
of a detector from its outputs, a user's decoder, and a campaign from the command line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from conftest import fails
from onnx import TensorProto

from onnxfi import detection
from onnxfi.cli import main
from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import classify, output_metric
from onnxfi.scoring import choose_output

BOXES = np.array([[[10, 10, 30, 30], [50, 50, 90, 80], [0, 0, 0, 0]],
                  [[5, 5, 25, 45], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
SCORES = np.array([[0.9, 0.8, 0.0], [0.7, 0.0, 0.0]], np.float32)
CLASSES = np.array([[1, 2, 0], [0, 0, 0]], np.int64)
NUM = np.array([2, 1], np.int64)
LABELS = np.array([[[1, 10, 10, 30, 30], [2, 50, 50, 90, 80]],
                   [[0, 5, 5, 25, 45], [-1, 0, 0, 0, 0]]], np.float32)


def _outs(boxes: np.ndarray = BOXES, scores: np.ndarray = SCORES, classes: np.ndarray = CLASSES,
          num: np.ndarray = NUM) -> dict[str, np.ndarray]:
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": num}


def _classify(faulty: dict[str, np.ndarray], labels: np.ndarray | None = LABELS) -> dict:
    golden = _outs()
    choice = choose_output(golden, labels)
    return classify(golden, faulty, choice.name, choice.task, labels, 0.01, layout=choice.layout)


def test_a_post_nms_detector_is_recognised_from_its_output_names() -> None:
    choice = choose_output(_outs(), LABELS)
    assert (choice.task, choice.layout, choice.metric) == ("detection", "det-nms", "map50")
    assert choice.scores[choice.name] == 1.0
    assert output_metric(choice.task, choice.layout, _outs(), _outs(), choice.name, LABELS) == ("map50", 1.0)
    # without labels the metric is mAP against the fault-free detections
    assert output_metric(choice.task, choice.layout, _outs(), _outs(), choice.name, None) == ("map50_golden", 1.0)
    # a plain classifier whose output is named like a score stays a classifier
    assert choose_output({"scores": np.eye(3, dtype=np.float32)}, None).task == "classification"


def test_identical_detections_are_masked_and_score_changes_tolerable() -> None:
    assert _classify(_outs())["outcome"] == "masked"
    row = _classify(_outs(scores=SCORES * 0.99))
    assert row["outcome"] == "tolerable" and not row["sdc1"]


def test_lost_added_relabelled_and_moved_boxes_are_sdc() -> None:
    lost = _classify(_outs(num=np.array([1, 1])))  # image 0 loses its second box
    assert lost["sdc1"] and lost["metrics"]["det_lost"] == 1 and lost["images_changed"] == 0.5
    boxes, scores = BOXES.copy(), SCORES.copy()
    boxes[0, 2], scores[0, 2] = [100, 100, 120, 120], 0.6
    added = _classify(_outs(boxes=boxes, scores=scores, num=np.array([3, 1])))  # image 0 gains a third box
    assert added["sdc1"] and added["metrics"]["det_added"] == 1
    cls = CLASSES.copy()
    cls[1, 0] = 2
    relabelled = _classify(_outs(classes=cls))
    assert relabelled["sdc1"] and relabelled["metrics"]["det_relabelled"] == 1
    assert relabelled["outcome"] == "critical"  # mAP against the labels drops: 1.0 -> below
    moved = BOXES.copy()
    moved[0, 0] += 2  # 10% of a 20-pixel box (IoU 0.68, still a match): beyond the 5% tolerance
    row = _classify(_outs(boxes=moved))
    assert row["sdc1"] and row["metrics"]["det_moved"] == 1
    shifted = BOXES.copy()
    shifted[0, 1, 2] += 0.5  # 1.25% of a 40-pixel-wide box: within it
    row = _classify(_outs(boxes=shifted))
    assert row["outcome"] == "tolerable" and row["metrics"]["det_shifted"] == 1


def test_decoding_only_changed_images_equals_decoding_all() -> None:
    rng = np.random.default_rng(0)
    head = rng.random((6, 40, 5 + 3)).astype(np.float32) * np.array([64, 64, 20, 20, 1, 1, 1, 1], np.float32)
    golden = {"output": head}
    gdets = detection.decode("det-yolo", golden)
    for changed in ([], [2], [0, 5], list(range(6))):
        faulty = head.copy()
        faulty[changed, :, 4] = rng.random((len(changed), 40))
        fast = detection.decode_changed("det-yolo", {"output": faulty}, golden, gdets)
        full = detection.decode("det-yolo", {"output": faulty})
        assert len(fast) == len(full)
        for a, b in zip(fast, full):
            assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
            assert np.array_equal(a.classes, b.classes)


def test_a_task_that_cannot_be_read_as_detection_is_an_error() -> None:
    with pytest.raises(OnnxfiError, match="detection"):
        choose_output({"logits": np.eye(3, dtype=np.float32)}, None, task="detection")
    with pytest.raises(OnnxfiError, match=r"\[N, M, 5\]"):
        choose_output(_outs(), np.zeros((2, 3), np.float32), task="detection")
    # labels of another task are evidence against the detection reading: the outputs are read as before
    assert choose_output(_outs(), np.zeros(2, np.int64)).task == "classification"


def _detector(path: Path) -> None:
    """x [N, K, 4] -> boxes = x * Wb, scores = Sigmoid(x @ Ws), classes = ArgMax(x @ Wc): a post-NMS-shaped head
    whose weights are fault sites."""
    rng = np.random.default_rng(1)
    wb = np.ones(4, np.float32)
    ws = rng.normal(0, 0.05, (4, 1)).astype(np.float32)
    wc = rng.normal(0, 1.0, (4, 3)).astype(np.float32)
    nodes = [
        oh.make_node("Mul", ["x", "Wb"], ["detection_boxes"]),
        oh.make_node("MatMul", ["x", "Ws"], ["s1"]),
        oh.make_node("Squeeze", ["s1", "ax"], ["s2"]),
        oh.make_node("Sigmoid", ["s2"], ["detection_scores"]),
        oh.make_node("MatMul", ["x", "Wc"], ["c1"]),
        oh.make_node("ArgMax", ["c1"], ["detection_classes"], axis=-1, keepdims=0),
    ]
    g = oh.make_graph(
        nodes, "det", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
        [oh.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, ["N", 5, 4]),
         oh.make_tensor_value_info("detection_scores", TensorProto.FLOAT, ["N", 5]),
         oh.make_tensor_value_info("detection_classes", TensorProto.INT64, ["N", 5])],
        [onh.from_array(wb, "Wb"), onh.from_array(ws, "Ws"), onh.from_array(wc, "Wc"),
         onh.from_array(np.array([-1], np.int64), "ax")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    xy = rng.uniform(0, 50, (12, 5, 2)).astype(np.float32)
    x = np.concatenate([xy, xy + rng.uniform(5, 20, (12, 5, 2)).astype(np.float32)], axis=2)
    np.savez(path.with_suffix(".npz"), x=x)


def test_analyze_a_detector_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "det.onnx"
    _detector(model)
    data = model.with_suffix(".npz")
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "200", "--bits", "31,30,29,28,27",
               "--db", str(tmp_path / "d.db"), "--json", str(tmp_path / "d.json")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "a detection lost, added, relabelled or moved" in out and "mAP@0.5 drop" in out
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc["clean"]["task"] == "detection" and doc["clean"]["metric"] == "map50_golden"
    assert doc["clean"]["value"] == 1.0
    s = doc["summary"]
    assert s["rates"]["sdc1"]["k"] > 0  # exponent flips of the head's weights move, drop or relabel boxes
    drop = s["task_drop"]["map50"]
    assert 0.0 < drop["rate"] <= 1.0 and drop["lo"] <= drop["rate"] <= drop["hi"]


def test_a_users_decoder_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "det.onnx"
    _detector(model)
    data = model.with_suffix(".npz")
    plugin = tmp_path / "mydecoder.py"
    plugin.write_text(
        "import numpy as np\n"
        "def decode(outputs):\n"
        "    b, s, c = outputs['detection_boxes'], outputs['detection_scores'], outputs['detection_classes']\n"
        "    return [(b[i], s[i], c[i]) for i in range(len(b))]\n")
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "30", "--db", str(tmp_path / "p.db"),
               "--decoder", f"{plugin}:decode", "--json", str(tmp_path / "p.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "p.json").read_text())
    assert doc["clean"]["task"] == "detection"
    assert doc["clean"]["output_choice"]["layout"] == f"det:{plugin}:decode"
    fails(capsys, ["run", model, "--data", data, "--decoder", f"{tmp_path / 'missing.py'}:decode"],
          "--decoder", "no file")
    fails(capsys, ["run", model, "--data", data, "--decoder", f"{plugin}:decode", "--task", "ctc"],
          "--task detection")


def test_a_model_with_a_fixed_batch_of_one_runs_one_sample_per_run(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "det1.onnx"
    _detector(model)  # data: det1.npz, 12 samples
    m = onnx.load(model)
    for v in [*m.graph.input, *m.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, model)
    data = model.with_suffix(".npz")
    assert main(["run", str(model), "--data", str(data), "--json", str(tmp_path / "r.json")]) == 0
    run = json.loads((tmp_path / "r.json").read_text())
    assert run["batch"] == 1 and {o["name"]: o["shape"] for o in run["outputs"]}["detection_boxes"] == [12, 5, 4]
    assert main(["analyze", str(model), "--data", str(data), "--faults", "10", "--db", str(tmp_path / "b.db"),
                 "--json", str(tmp_path / "b.json")]) == 0
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["clean"]["samples"] == 12 and doc["summary"]["experiments"] == 10


def test_transient_faults_on_a_detector_are_scored_per_image(tmp_path: Path) -> None:
    """One-inference activation faults: each experiment is classified on its own image (the decoder reads
    that image's rows), so images_changed is 0 or 1 and the detection outcomes come out as for weights."""
    model = tmp_path / "det.onnx"
    _detector(model)
    rc = main(["analyze", str(model), "--data", str(model.with_suffix(".npz")), "--fault-model", "transient",
               "--target", "activations", "--faults", "120", "--bits", "30", "--db", str(tmp_path / "t.db"),
               "--json", str(tmp_path / "t.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["clean"]["task"] == "detection"
    s = doc["summary"]
    assert s["experiments"] == 120 and s["rates"]["crash"]["k"] == 0
    assert s["rates"]["sdc1"]["k"] > 0  # exponent-MSB flips of boxes, scores or logits change detections
    changed = {r[0] for r in sqlite3.connect(tmp_path / "t.db").execute("SELECT images_changed FROM results")}
    assert changed <= {0.0, 1.0}
