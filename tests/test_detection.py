"""Tests for onnxfi.detection: hand-built matcher cases, NMS against a brute-force reference, every decoder
layout on synthetic arrays, hand-computed AP, layout inference and plug-in decoders."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from onnxfi import detection as d
from onnxfi.errors import DataError, MetricError, OnnxfiError

NAN = float("nan")


def dets(rows: list[tuple[float, float, float, float, float, int]]) -> d.Detections:
    """Detections from rows ``x1, y1, x2, y2, score, class``."""
    a = np.array([r[:5] for r in rows], dtype=np.float64).reshape(-1, 5)
    return d.Detections(a[:, :4], a[:, 4], np.array([r[5] for r in rows], dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# Detections, box formats, IoU
# --------------------------------------------------------------------------------------------------


def test_detections_converts_copies_and_freezes() -> None:
    boxes = np.array([[0, 0, 2, 2]], dtype=np.float32)
    det = d.Detections(boxes, [0.5], np.array([3.0]))
    assert det.boxes.dtype == np.float64 and det.scores.dtype == np.float64 and det.classes.dtype == np.int64
    assert len(det) == 1 and det.classes.tolist() == [3]
    boxes[0, 0] = 9  # the caller's array is copied
    assert det.boxes[0, 0] == 0
    with pytest.raises(ValueError):
        det.boxes[0, 0] = 1
    assert len(d.Detections.empty()) == 0
    assert len(d.Detections([], [], [])) == 0


def test_detections_non_finite_class_reads_as_minus_one() -> None:
    det = d.Detections(np.zeros((3, 4)), [1, 1, 1], [NAN, float("inf"), 1e30])
    assert det.classes.tolist() == [-1, -1, 2**53]


@pytest.mark.parametrize(("boxes", "scores", "classes"), [
    (np.zeros((2, 3)), [1, 1], [0, 0]),
    (np.zeros((2, 4)), [1], [0, 0]),
    (np.zeros((2, 4)), [1, 1], [[0, 0]]),
])
def test_detections_bad_shapes_raise(boxes: np.ndarray, scores: list[int], classes: list[int]) -> None:
    with pytest.raises(OnnxfiError, match="detection"):
        d.Detections(boxes, scores, classes)


def test_to_xyxy_every_format() -> None:
    np.testing.assert_array_equal(d.to_xyxy([[1, 2, 3, 4]], "xyxy"), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(d.to_xyxy([[2, 1, 4, 3]], "yxyx"), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(d.to_xyxy([[1, 2, 2, 2]], "xywh"), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(d.to_xyxy([[2, 3, 2, 2]], "cxcywh"), [[1, 2, 3, 4]])
    with pytest.raises(OnnxfiError, match="unknown box format"):
        d.to_xyxy([[1, 2, 3, 4]], "xyzw")  # type: ignore[arg-type]


def test_box_iou_hand_values_and_corrupted_boxes() -> None:
    a = np.array([[0, 0, 2, 2]], dtype=np.float64)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6], [NAN, 0, 2, 2], [0, 0, float("inf"), 2], [1, 1, 1, 1]])
    # overlap 1 of union 4 + 4 - 1 = 7; itself; disjoint; NaN; infinite; zero-area box
    np.testing.assert_allclose(d.box_iou(a, b), [[1 / 7, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert d.box_iou(np.zeros((0, 4)), b).shape == (0, 6)


# --------------------------------------------------------------------------------------------------
# NMS against a brute-force reference
# --------------------------------------------------------------------------------------------------


def brute_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def brute_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> list[int]:
    """Textbook greedy NMS in plain Python: visit by score (ties by index), keep what no kept box of the
    same class overlaps by more than ``iou``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(classes[j] != classes[i] or brute_iou(boxes[i].tolist(), boxes[j].tolist()) <= iou for j in kept):
            kept.append(i)
    return kept


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 50, size=(n, 2))
    wh = rng.uniform(1, 20, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("iou", [0.3, 0.5])
def test_nms_matches_brute_force(seed: int, iou: float) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    boxes = random_boxes(rng, n)
    scores = rng.uniform(size=n).round(2)  # rounded: ties happen and must go by index
    classes = rng.integers(0, 3, size=n)
    assert d.nms(boxes, scores, iou, classes).tolist() == brute_nms(boxes, scores, classes, iou)
    assert d.nms(boxes, scores, iou).tolist() == brute_nms(boxes, scores, np.zeros(n, int), iou)
    assert d.nms(boxes, scores, iou, classes, max_detections=5).tolist() == \
        brute_nms(boxes, scores, classes, iou)[:5]


def test_nms_nan_scores_go_last_and_nan_boxes_suppress_nothing() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [NAN, 0, 10, 10], [1, 1, 10, 10]], dtype=np.float64)
    scores = np.array([0.5, NAN, 0.9, 0.7])
    # 2 (NaN box) is kept and overlaps nothing; 3 suppresses 0 (IoU 0.81); NaN-scored 1 comes last, suppressed
    assert d.nms(boxes, scores, 0.5).tolist() == [2, 3]
    assert d.nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


# --------------------------------------------------------------------------------------------------
# decoders
# --------------------------------------------------------------------------------------------------


def test_nms_decoder_tf_style_with_num_detections() -> None:
    boxes = np.zeros((2, 3, 4), dtype=np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.3, 0.4]  # y1 x1 y2 x2
    boxes[0, 1] = [0.5, 0.5, 0.6, 0.7]
    boxes[1, 0] = [0.0, 0.0, 1.0, 1.0]
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.0, 0.0]], dtype=np.float32)
    classes = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]], dtype=np.float32)
    outs = {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": classes,
            "num_detections": np.array([2.0, 1.0], dtype=np.float32)}
    got = d.NmsDecoder("detection_boxes", "detection_scores", "detection_classes", "num_detections",
                       box_format="yxyx")(outs)
    assert len(got) == 2
    np.testing.assert_allclose(got[0].boxes, [[0.2, 0.1, 0.4, 0.3], [0.5, 0.5, 0.7, 0.6]], rtol=1e-6)
    assert got[0].classes.tolist() == [1, 2] and got[1].classes.tolist() == [4]
    # [N, 1] counts, and a corrupted count (NaN, too large) is clipped rather than crashing
    outs["num_detections"] = np.array([[NAN], [99.0]])
    got = d.NmsDecoder("detection_boxes", "detection_scores", "detection_classes", "num_detections")(outs)
    assert [len(g) for g in got] == [0, 1]  # image 1: the zero-score padding rows are dropped


def test_nms_decoder_unbatched_and_shape_errors() -> None:
    outs = {"boxes": np.array([[0, 0, 1, 1], [0, 0, 2, 2]]), "scores": np.array([0.9, 0.1]),
            "labels": np.array([7, -1])}
    (got,) = d.NmsDecoder("boxes", "scores", "labels")(outs)
    assert got.classes.tolist() == [7]  # class -1 is padding
    with pytest.raises(OnnxfiError, match="no output 'nope'"):
        d.NmsDecoder("nope", "scores", "labels")(outs)
    outs["scores"] = np.array([0.9, 0.1, 0.3])
    with pytest.raises(OnnxfiError, match="scores 'scores' must be"):
        d.NmsDecoder("boxes", "scores", "labels")(outs)


def test_dets_decoder_batched_rows() -> None:
    rows = np.zeros((2, 3, 7), dtype=np.float32)
    rows[0, 0] = [0, 0, 4, 4, 0.9, 2, 123]  # 7th column ignored
    rows[1, 1] = [1, 1, 5, 5, 0.8, 0, 0]
    got = d.DetsDecoder("dets")({"dets": rows})
    assert [len(g) for g in got] == [1, 1]
    assert got[0].classes.tolist() == [2] and got[1].boxes.tolist() == [[1, 1, 5, 5]]
    np.testing.assert_allclose(got[1].scores, [0.8], rtol=1e-6)
    custom = d.DetsDecoder("dets", columns=("x1", "y1", "x2", "y2", "class", "score"))({"dets": rows})
    assert custom[0].classes.tolist() == [1]  # the 0.9 read as a class id


def test_dets_decoder_batch_index_rows() -> None:
    # batch, x1, y1, x2, y2, class, score (YOLOv7 end2end for ONNX Runtime)
    rows = np.array([[0, 0, 0, 2, 2, 5, 0.9], [2, 1, 1, 3, 3, 6, 0.8], [1e9, 0, 0, 1, 1, 0, 0.7]])
    got = d.DetsDecoder("out")({"out": rows})
    assert [g.classes.tolist() for g in got] == [[5], [], [6]]  # the 1e9 batch index is dropped
    assert len(d.DetsDecoder("out", batch_size=5)({"out": rows})) == 5
    assert len(d.DetsDecoder("out", batch_size=2)({"out": rows})) == 2  # image 2 is outside the batch
    with pytest.raises(OnnxfiError, match="no default column order"):
        d.DetsDecoder("out")({"out": rows[:, :6]})
    single = d.DetsDecoder("out", columns=("batch", "x1", "y1", "x2", "y2", "score"))({"out": rows[:2, :6]})
    assert [g.classes.tolist() for g in single] == [[0], [], [0]]


@pytest.mark.parametrize("columns", [("x1", "y1", "x2", "score"), ("x1", "x1", "y1", "x2", "y2"),
                                     ("x1", "y1", "x2", "y2", "colour"), ("x1", "y1", "x2", "y2", "_", "_", "_", "_")])
def test_dets_decoder_bad_columns(columns: tuple[str, ...]) -> None:
    with pytest.raises(OnnxfiError, match="columns"):
        d.DetsDecoder("o", columns=columns)({"o": np.zeros((1, 2, 6))})


def yolo_v5(boxes_cxcywh: list[list[float]], obj: list[float], cls: list[list[float]]) -> np.ndarray:
    """A [1, A, 5 + C] head; zero anchors pad it to 20 so that anchors outnumber features, as in a real one."""
    rows = np.concatenate([np.array(boxes_cxcywh), np.array(obj)[:, None], np.array(cls)], axis=1)
    return np.concatenate([rows, np.zeros((20 - len(rows), rows.shape[1]))])[None]


def test_yolo_decoder_v5_objectness_threshold_and_nms() -> None:
    a = yolo_v5(
        [[10, 10, 4, 4], [10.2, 10, 4, 4], [30, 30, 2, 2], [50, 50, 2, 2], [10, 10, 4, 4]],
        [0.9, 0.8, 0.5, 0.2, 0.9],
        [[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [1.0, 0.0], [0.1, 0.5]],
    ).astype(np.float32)
    (got,) = d.YoloDecoder("output0")({"output0": a})
    # scores obj*cls: 0.81 (class 0), 0.72 (class 0, suppressed by the first), 0.4 (class 1),
    # 0.2 (below 0.25), 0.45 (class 1 on the first box: another class, so kept)
    np.testing.assert_allclose(got.scores, [0.81, 0.45, 0.4], rtol=1e-6)
    assert got.classes.tolist() == [0, 1, 1]
    np.testing.assert_allclose(got.boxes[0], [8, 8, 12, 12])
    (capped,) = d.YoloDecoder("output0", max_detections=1)({"output0": a})
    assert len(capped) == 1


def test_yolo_decoder_v8_channels_first() -> None:
    anchors = 50  # more anchors than 4 + C features: channels first, no objectness
    a = np.zeros((2, 4 + 3, anchors), dtype=np.float32)
    a[0, :4, 7] = [20, 20, 10, 10]
    a[0, 4 + 2, 7] = 0.6
    a[1, :4, 3] = [5, 5, 2, 2]
    a[1, 4 + 0, 3] = 0.3
    got = d.YoloDecoder("output0")({"output0": a})
    assert got[0].classes.tolist() == [2] and got[1].classes.tolist() == [0]
    np.testing.assert_allclose(got[0].boxes, [[15, 15, 25, 25]])
    np.testing.assert_allclose(got[1].scores, [0.3], rtol=1e-6)
    # the same array read channels-last with objectness would be a different model: explicit override
    with pytest.raises(OnnxfiError, match="no class scores"):
        d.YoloDecoder("output0", channels_first=True, objectness=True)({"output0": np.zeros((1, 5, 50))})


def test_ssd_decoder_background_and_multi_label() -> None:
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], dtype=np.float32)
    scores = np.array([[[0.9, 0.5, 0.6], [0.1, 0.05, 0.8]]], dtype=np.float32)
    (got,) = d.SsdDecoder("boxes", "scores")({"boxes": boxes, "scores": scores})
    # column 0 is background; anchor 0 is both class 1 and class 2
    assert sorted(zip(got.classes.tolist(), got.boxes[:, 0].tolist())) == [(1, 0.0), (2, 0.0), (2, 20.0)]
    (nobg,) = d.SsdDecoder("boxes", "scores", background=None)({"boxes": boxes, "scores": scores})
    assert 0 in nobg.classes.tolist()
    with pytest.raises(OnnxfiError, match="ssd decoder"):
        d.SsdDecoder("boxes", "scores")({"boxes": boxes, "scores": scores[:, :1]})


# --------------------------------------------------------------------------------------------------
# infer_decoder
# --------------------------------------------------------------------------------------------------


def shaped(**shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, dtype=np.float32) for name, shape in shapes.items()}


def test_infer_decoder_tf_and_tensorrt_names() -> None:
    tf = shaped(detection_boxes=(2, 100, 4), detection_scores=(2, 100), detection_classes=(2, 100),
                num_detections=(2,), detection_multiclass_scores=(2, 100, 91),
                raw_detection_boxes=(2, 1917, 4), raw_detection_scores=(2, 1917, 91),
                detection_anchor_indices=(2, 100))
    assert d.infer_decoder(tf) == d.NmsDecoder("detection_boxes", "detection_scores", "detection_classes",
                                               "num_detections")
    trt = shaped(num_dets=(1, 1), det_boxes=(1, 100, 4), det_scores=(1, 100), det_classes=(1, 100))
    assert d.infer_decoder(trt) == d.NmsDecoder("det_boxes", "det_scores", "det_classes", "num_dets")
    torchvision = shaped(boxes=(7, 4), scores=(7,), labels=(7,))
    assert d.infer_decoder(torchvision) == d.NmsDecoder("boxes", "scores", "labels")


def test_infer_decoder_by_shape() -> None:
    assert d.infer_decoder(shaped(output0=(1, 84, 8400))) == d.YoloDecoder("output0")
    assert d.infer_decoder(shaped(output=(1, 25200, 85), **{"onnx::Sigmoid_1": (1, 3, 80, 80, 85)})) == \
        d.YoloDecoder("output")
    assert d.infer_decoder(shaped(dets=(1, 100, 6))) == d.DetsDecoder("dets")
    # named like rows but shaped like a raw YOLOv5 head (8x8 grid, 3 classes)
    assert d.infer_decoder(shaped(detections=(4, 64, 8))) == d.YoloDecoder("detections")
    assert d.infer_decoder(shaped(output=(12, 7)), batch_size=4) == d.DetsDecoder("output", batch_size=4)
    assert d.infer_decoder(shaped(bboxes=(1, 3000, 4), scores=(1, 3000, 81))) == d.SsdDecoder("bboxes", "scores")


def test_infer_decoder_ambiguous_lists_outputs_and_candidates() -> None:
    # [1, 100, 6] could be end-to-end rows or a one-class YOLOv5 head: never guess
    with pytest.raises(OnnxfiError) as e:
        d.infer_decoder(shaped(output=(1, 100, 6)))
    msg = str(e.value)
    assert "\n" not in msg
    assert "output [1, 100, 6] float32" in msg
    assert "DetsDecoder(output='output'" in msg and "YoloDecoder(output='output'" in msg
    assert d.infer_decoder(shaped(output=(1, 100, 6)), layout="yolo") == d.YoloDecoder("output")
    # a raw multi-level head (PicoDet-style) has one candidate per level
    with pytest.raises(OnnxfiError, match="candidates: YoloDecoder"):
        d.infer_decoder(shaped(a=(1, 7600, 10), b=(1, 1900, 10)))
    with pytest.raises(OnnxfiError, match="none fits"):
        d.infer_decoder(shaped(logits=(1, 1000)))
    with pytest.raises(OnnxfiError, match="none fits"):
        d.infer_decoder(shaped(output0=(1, 84, 8400)), layout="ssd")
    with pytest.raises(OnnxfiError, match="unknown detection layout"):
        d.infer_decoder(shaped(output0=(1, 84, 8400)), layout="mask")


# --------------------------------------------------------------------------------------------------
# plug-in decoders
# --------------------------------------------------------------------------------------------------


def plugin(outputs: Mapping[str, np.ndarray]) -> list[object]:
    """A user's decoder: rows x1 y1 x2 y2 score per image, every class 3; image 0 as Detections."""
    rows = outputs["rows"]
    first = d.Detections(rows[0, :, :4], rows[0, :, 4], np.full(rows.shape[1], 3))
    return [first] + [(r[:, :4], r[:, 4], np.full(len(r), 3)) for r in rows[1:]]


def plugin_raises(outputs: Mapping[str, np.ndarray]) -> list[object]:
    raise ValueError("bad tensor\nsecond line")


def plugin_returns_array(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.zeros((1, 3, 4))


def plugin_bad_item(outputs: Mapping[str, np.ndarray]) -> list[object]:
    return [(np.zeros((2, 4)), np.zeros(3), np.zeros(2))]


NOT_A_FUNCTION = 3


def test_load_decoder_plugin() -> None:
    dec = d.load_decoder(f"{__name__}:plugin")
    got = dec({"rows": np.arange(2 * 2 * 5, dtype=np.float32).reshape(2, 2, 5)})
    assert [len(g) for g in got] == [2, 2]
    assert all(isinstance(g, d.Detections) and g.classes.tolist() == [3, 3] for g in got)
    np.testing.assert_array_equal(got[1].boxes, [[10, 11, 12, 13], [15, 16, 17, 18]])


def test_load_decoder_errors() -> None:
    with pytest.raises(OnnxfiError, match="use module:function"):
        d.load_decoder("plugin")
    with pytest.raises(OnnxfiError, match="cannot load decoder"):
        d.load_decoder(f"{__name__}:missing")
    with pytest.raises(OnnxfiError, match="cannot load decoder"):
        d.load_decoder("no_such_module_xyz:f")
    with pytest.raises(OnnxfiError, match="not a function"):
        d.load_decoder(f"{__name__}:NOT_A_FUNCTION")
    with pytest.raises(MetricError, match="raised ValueError: bad tensor$"):
        d.load_decoder(f"{__name__}:plugin_raises")({})
    with pytest.raises(OnnxfiError, match="returned ndarray"):
        d.load_decoder(f"{__name__}:plugin_returns_array")({})
    with pytest.raises(OnnxfiError, match="image 0: detection scores"):
        d.load_decoder(f"{__name__}:plugin_bad_item")({})


# --------------------------------------------------------------------------------------------------
# matcher and per-experiment parts
# --------------------------------------------------------------------------------------------------

GOLDEN = dets([(0, 0, 10, 10, 0.9, 1), (20, 20, 40, 40, 0.8, 2), (50, 0, 60, 20, 0.7, 1)])


def counts(m: d.Match) -> tuple[int, int, int, int, int, int]:
    return m.n_lost, m.n_added, m.n_relabelled, m.n_moved, m.n_shifted, m.n_same


def test_match_identical_is_masked() -> None:
    m = d.match(GOLDEN, GOLDEN)
    assert counts(m) == (0, 0, 0, 0, 0, 3) and not m.changed
    assert sorted(map(tuple, m.pairs.tolist())) == [(0, 0), (1, 1), (2, 2)]
    metrics, changed, tolerable = d.detection_parts([GOLDEN], [GOLDEN])
    assert changed.tolist() == [False] and not tolerable
    assert metrics["map50"] == 1.0 and metrics["det_changed_frac"] == 0.0 and metrics["det_same"] == 3.0


def test_match_ignores_score_changes() -> None:
    faulty = d.Detections(GOLDEN.boxes, GOLDEN.scores[::-1], GOLDEN.classes)
    assert counts(d.match(GOLDEN, faulty)) == (0, 0, 0, 0, 0, 3)


def test_match_one_lost() -> None:
    m = d.match(GOLDEN, GOLDEN.take([0, 2]))
    assert counts(m) == (1, 0, 0, 0, 0, 2) and m.lost.tolist() == [1] and m.changed


def test_match_one_added() -> None:
    faulty = dets([*[(*b, s, c) for b, s, c in zip(GOLDEN.boxes.tolist(), GOLDEN.scores, GOLDEN.classes)],
                   (70, 70, 80, 80, 0.3, 0)])
    m = d.match(GOLDEN, faulty)
    assert counts(m) == (0, 1, 0, 0, 0, 3) and m.added.tolist() == [3] and m.changed


def test_match_moved_within_tolerance_is_tolerable() -> None:
    # box 1 is 20 wide: x shifted by 0.5 is 2.5% of its width, within the 5% tolerance
    faulty = dets([(0, 0, 10, 10, 0.9, 1), (20.5, 20, 40.5, 40, 0.8, 2), (50, 0, 60, 20, 0.7, 1)])
    m = d.match(GOLDEN, faulty)
    assert counts(m) == (0, 0, 0, 0, 1, 2) and not m.changed
    np.testing.assert_allclose(sorted(m.shift), [0, 0, 0.025])
    metrics, changed, tolerable = d.detection_parts([GOLDEN, GOLDEN], [faulty, GOLDEN])
    assert changed.tolist() == [False, False] and tolerable
    assert metrics["det_shifted"] == 1.0 and metrics["det_moved"] == 0.0


def test_match_moved_beyond_tolerance_is_changed() -> None:
    # box 2 is 20 high: y2 moved by 2 is 10%, over 5% (IoU 200/220 still matches)
    faulty = dets([(0, 0, 10, 10, 0.9, 1), (20, 20, 40, 40, 0.8, 2), (50, 0, 60, 22, 0.7, 1)])
    m = d.match(GOLDEN, faulty)
    assert counts(m) == (0, 0, 0, 1, 0, 2) and m.changed
    metrics, changed, tolerable = d.detection_parts([GOLDEN], [faulty])
    assert changed.tolist() == [True] and not tolerable and metrics["det_moved"] == 1.0
    # with a 20% tolerance the same change is tolerable
    assert not d.match(GOLDEN, faulty, box_tol=0.2).changed


def test_match_relabelled_counts_once() -> None:
    faulty = dets([(0, 0, 10, 10, 0.9, 7), (20, 20, 40, 40, 0.8, 2), (50, 0, 60, 20, 0.7, 1)])
    m = d.match(GOLDEN, faulty)
    assert counts(m) == (0, 0, 1, 0, 0, 2) and m.changed
    assert m.relabelled_pairs.tolist() == [[0, 0]]
    metrics, changed, _ = d.detection_parts([GOLDEN], [faulty])
    assert (metrics["det_relabelled"], metrics["det_lost"], metrics["det_added"]) == (1.0, 0.0, 0.0)


def test_match_prefers_same_class_and_highest_score_first() -> None:
    golden = dets([(0, 0, 10, 10, 0.9, 1)])
    # the higher-scored faulty box of the same class takes the golden box although the other overlaps more
    faulty = dets([(0, 0, 10, 10, 0.5, 1), (1, 0, 11, 10, 0.9, 1), (0, 0, 10, 10, 0.95, 2)])
    m = d.match(golden, faulty)
    assert m.pairs.tolist() == [[0, 1]] and m.n_relabelled == 0 and m.added.tolist() == [0, 2]


def test_match_nan_box_is_lost_and_added() -> None:
    faulty = dets([(NAN, 0, 10, 10, 0.9, 1), (20, 20, 40, 40, 0.8, 2), (50, 0, 60, 20, 0.7, 1)])
    assert counts(d.match(GOLDEN, faulty)) == (1, 1, 0, 0, 0, 2)


def test_match_zero_size_golden_box() -> None:
    golden = dets([(0, 0, 10, 0, 0.9, 1), (0, 0, 10, 10, 0.9, 2)])
    assert d.match(golden, golden).n_same == 2  # unchanged zero-height box: same
    # a zero-height box overlaps nothing, so it cannot be matched at all once moved
    faulty = dets([(0, 0, 10, 1, 0.9, 1), (0, 0, 10, 10, 0.9, 2)])
    assert counts(d.match(golden, faulty)) == (1, 1, 0, 0, 0, 1)


def test_detection_parts_pads_and_uses_labels() -> None:
    labels = np.full((2, 3, 5), -1.0)
    labels[0, 0] = [1, 0, 0, 10, 10]
    labels[0, 1] = [2, 20, 20, 40, 40]
    labels[1, 0] = [0, 0, 0, 5, 5]
    golden = [GOLDEN, dets([(0, 0, 5, 5, 0.9, 0)])]
    faulty = [GOLDEN]  # image 1 lost everything: a shorter list is padded with empty images
    metrics, changed, tolerable = d.detection_parts(golden, faulty, labels=labels)
    assert changed.tolist() == [False, True] and not tolerable
    assert metrics["det_lost"] == 1.0 and metrics["det_changed_frac"] == 0.5
    # vs golden: classes 1 and 2 found perfectly, class 0 not at all -> (1 + 1 + 0) / 3
    assert metrics["map50"] == pytest.approx(2 / 3)
    # vs labels, golden: class 1 AP 1 (its false positive ranks below the true one), class 2 AP 1, class 0 AP 1
    assert metrics["map50_clean"] == pytest.approx(1.0)
    assert metrics["map50_labels"] == pytest.approx(2 / 3)
    assert set(metrics) == {"det_lost", "det_added", "det_relabelled", "det_moved", "det_shifted", "det_same",
                            "det_changed_frac", "map50", "map50_labels", "map50_clean"}
    assert all(type(v) is float for v in metrics.values())


# --------------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------------


def test_ap_perfect_predictions_is_one() -> None:
    assert d.average_precision([GOLDEN, GOLDEN], [GOLDEN, GOLDEN]) == 1.0


def test_ap_false_positive_ranked_above_true_positive() -> None:
    truth = [dets([(0, 0, 10, 10, 1, 0)])]
    pred = [dets([(50, 50, 60, 60, 0.9, 0), (0, 0, 10, 10, 0.8, 0)])]
    # ranked: FP (precision 0, recall 0), TP (precision 1/2, recall 1): AP = (1 - 0) * 1/2
    assert d.average_precision(pred, truth) == pytest.approx(0.5)


def test_ap_interpolation_hand_computed() -> None:
    truth = [dets([(0, 0, 10, 10, 1, 0), (20, 0, 30, 10, 1, 0)])]
    pred = [dets([(0, 0, 10, 10, 0.9, 0), (50, 50, 60, 60, 0.8, 0), (20, 0, 30, 10, 0.7, 0)])]
    # TP, FP, TP: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3; envelope 1, 2/3, 2/3
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert d.average_precision(pred, truth) == pytest.approx(5 / 6)


def test_ap_duplicate_detection_is_false_positive_and_classes_average() -> None:
    truth = [dets([(0, 0, 10, 10, 1, 0), (0, 0, 10, 10, 1, 1)])]
    # class 0: TP then a duplicate (FP) -> AP 1; class 1: nothing -> AP 0; class 9 is not in the truth
    pred = [dets([(0, 0, 10, 10, 0.9, 0), (0, 0, 10, 10, 0.8, 0), (0, 0, 10, 10, 0.9, 9)])]
    assert d.average_precision(pred, truth) == pytest.approx(0.5)


def test_ap_iou_threshold_and_empty_truth() -> None:
    truth = [dets([(0, 0, 10, 10, 1, 0)])]
    pred = [dets([(0, 0, 10, 6, 0.9, 0)])]  # IoU 0.6
    assert d.average_precision(pred, truth, iou=0.5) == 1.0
    assert d.average_precision(pred, truth, iou=0.7) == 0.0
    assert np.isnan(d.average_precision(pred, [d.Detections.empty()]))


def test_ap_accepts_padded_labels_and_rejects_other_shapes() -> None:
    labels = np.array([[[0, 0, 0, 10, 10], [-1, 0, 0, 0, 0]]], dtype=np.float32)
    assert d.average_precision([dets([(0, 0, 10, 10, 0.5, 0)])], labels) == 1.0
    truth = d.labels_to_detections(labels)
    assert len(truth) == 1 and truth[0].classes.tolist() == [0]
    with pytest.raises(DataError, match=r"\[N, M, 5\]"):
        d.labels_to_detections(np.zeros((3, 5)))


def test_ap_brute_force_agrees_with_recount() -> None:
    """Random predictions: AP from scratch (every threshold's precision, max over higher recall) agrees."""
    rng = np.random.default_rng(7)
    truth_boxes = random_boxes(rng, 6)
    truth = [d.Detections(truth_boxes[:3], np.ones(3), [0, 0, 1]), d.Detections(truth_boxes[3:], np.ones(3), [0, 1, 1])]
    pred = []
    for t in truth:
        jitter = t.boxes + rng.normal(0, 2, size=t.boxes.shape)
        extra = random_boxes(rng, 2)
        pred.append(d.Detections(np.concatenate([jitter, extra]), rng.uniform(size=5), np.concatenate([t.classes, [0, 1]])))
    aps = []
    for c in (0, 1):
        items = [(p.scores[j], i, p.boxes[j]) for i, p in enumerate(pred) for j in range(len(p)) if p.classes[j] == c]
        items.sort(key=lambda x: -x[0])
        used: set[tuple[int, int]] = set()
        tp = []
        for _, i, box in items:
            best, best_iou = None, 0.5
            for j in range(len(truth[i])):
                if truth[i].classes[j] == c and (i, j) not in used:
                    ov = brute_iou(box.tolist(), truth[i].boxes[j].tolist())
                    if ov >= best_iou:
                        best, best_iou = j, ov
            tp.append(best is not None)
            if best is not None:
                used.add((i, best))
        npos = sum(int(np.sum(t.classes == c)) for t in truth)
        rec = [sum(tp[:k + 1]) / npos for k in range(len(tp))]
        prec = [sum(tp[:k + 1]) / (k + 1) for k in range(len(tp))]
        ap, prev = 0.0, 0.0
        for k, r in enumerate(rec):
            if r > prev:
                ap += (r - prev) * max(prec[k:])
                prev = r
        aps.append(ap)
    assert d.average_precision(pred, truth) == pytest.approx(np.mean(aps))
    assert not all(a == 1.0 for a in aps)  # the case is not trivial


def test_layouts_cover_every_builtin_decoder() -> None:
    layouts = {cls.layout for cls in (d.NmsDecoder, d.DetsDecoder, d.YoloDecoder, d.SsdDecoder)}
    assert layouts == set(d.LAYOUTS)


@pytest.mark.filterwarnings("error")
def test_decoders_survive_corrupted_outputs() -> None:
    """NaN / Inf / huge values from a fault: no exception, no numpy warning, every image still there."""
    rng = np.random.default_rng(3)
    head = rng.uniform(0, 1, size=(2, 30, 8))
    head[0, :5] = NAN
    head[0, 5:10] = np.inf
    head[1, :, :4] = 1e308
    for got in (d.YoloDecoder("o")({"o": head}),
                d.SsdDecoder("b", "s")({"b": head[..., :4], "s": head[..., 4:]}),
                d.NmsDecoder("b", "s", "c")({"b": head[..., :4], "s": head[..., 4], "c": head[..., 5] * 1e30}),
                d.DetsDecoder("o")({"o": head[..., :6]})):
        assert len(got) == 2
        metrics, changed, _ = d.detection_parts(got, got[::-1])
        assert changed.shape == (2,) and all(isinstance(v, float) for v in metrics.values())
