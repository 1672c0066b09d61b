"""Object-detection scoring: turns a detector's raw outputs into per-image boxes, matches faulty boxes to
golden ones, and scores a batch (lost / added / relabelled / moved counts, mAP@0.5).

Conventions used throughout:

* A box is four float64 numbers ``x1, y1, x2, y2`` (corners, ``x2 >= x1`` for a proper box) in whatever
  units the model uses (pixels or normalized); a box with ``x2 < x1`` or ``y2 < y1`` has area 0.
* :class:`Detections` holds one image's boxes ``[K, 4]``, scores ``[K]`` and integer classes ``[K]``. A
  decoder (:class:`Decoder`) turns one run's outputs, the whole batch, into one :class:`Detections` per image.
* IoU of two boxes is intersection over union; it is 0 when the union is 0 or not finite, so NaN/Inf
  boxes from a fault never crash and never overlap anything (see :func:`box_iou`).
* Scores are ranked highest first; ties keep the original order; NaN ranks last.
* Ground-truth labels (:func:`labels_to_detections`) are a padded ``[N, M, 5]`` array of rows
  ``class, x1, y1, x2, y2`` per image, rows with ``class < 0`` being padding: an npz-friendly format.

Layouts the built-in decoders read (:data:`LAYOUTS`; :func:`infer_decoder` picks one from names and shapes):

* ``nms``: detections after in-graph NMS. Either separate tensors (:class:`NmsDecoder`: boxes
  ``[N, K, 4]``, scores ``[N, K]``, classes ``[N, K]``, optional ``num_detections`` ``[N]`` / ``[N, 1]``,
  the TF / TensorRT style; unbatched ``[K, 4]`` / ``[K]`` / ``[K]`` is one image), or one tensor of rows
  (:class:`DetsDecoder`: ``[N, K, >=6]`` rows ``x1, y1, x2, y2, score, class`` as the YOLO end-to-end
  exports write them, or ``[K, 7]`` rows ``batch, x1, y1, x2, y2, class, score`` as the YOLOv7
  ONNX Runtime end-to-end export writes them; the column order is the ``columns`` parameter).
* ``yolo``: raw YOLO heads (:class:`YoloDecoder`): ``[N, A, 5 + C]`` (``cx, cy, w, h, objectness``,
  class scores; YOLOv5/v7) or ``[N, 4 + C, A]`` (no objectness; YOLOv8 and later), decoded with a score
  threshold, class-wise NMS and a cap on detections per image.
* ``ssd``: boxes ``[N, A, 4]`` and per-class scores ``[N, A, C]`` (:class:`SsdDecoder`), one column of
  which may be the background; every (anchor, class) above the threshold is a candidate, then class-wise NMS.

A plug-in decoder (:func:`load_decoder`, ``module:function``) covers any other layout.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from onnxfi.errors import DataError, MetricError, OnnxfiError, first_line

__all__ = [
    "LAYOUTS", "BOX_FORMATS", "DETS_COLUMNS", "BATCH_DETS_COLUMNS", "MAX_IMAGES",
    "BoxFormat", "Detections", "Decoder", "NmsDecoder", "DetsDecoder", "YoloDecoder", "SsdDecoder",
    "PluginDecoder", "Match",
    "to_xyxy", "box_iou", "nms", "infer_decoder", "load_decoder", "as_detections_list",
    "labels_to_detections", "match", "average_precision", "detection_parts",
]

LAYOUTS = ("nms", "yolo", "ssd")
BoxFormat = Literal["xyxy", "yxyx", "xywh", "cxcywh"]
BOX_FORMATS: tuple[BoxFormat, ...] = ("xyxy", "yxyx", "xywh", "cxcywh")
# column names a DetsDecoder understands; "_" marks a column to skip
_COLUMN_NAMES = frozenset({"batch", "x1", "y1", "x2", "y2", "score", "class", "_"})
DETS_COLUMNS = ("x1", "y1", "x2", "y2", "score", "class")
BATCH_DETS_COLUMNS = ("batch", "x1", "y1", "x2", "y2", "class", "score")
# a batch index at or above this is read as a corrupted row, not as an image (DetsDecoder without batch_size)
MAX_IMAGES = 1 << 16
_EMPTY_IDX = np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------
# detections


def _class_ids(x: ArrayLike) -> NDArray[np.int64]:
    """Integer class ids of ``x``; float ids are rounded, and a non-finite one (from a fault) reads as -1."""
    a = np.asarray(x)
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    f = np.asarray(a, dtype=np.float64)
    out = np.full(f.shape, -1, dtype=np.int64)
    ok = np.isfinite(f)
    # clip first: a fault can write 1e30, which has no int64
    out[ok] = np.rint(np.clip(f[ok], -1.0, 2.0**53)).astype(np.int64)
    return out


def _floats(x: ArrayLike) -> NDArray[np.float64]:
    """``x`` as float64 (bfloat16 / float8 included), always a fresh array."""
    a = np.asarray(x)
    if a.dtype.kind == "V":  # ml_dtypes float8 types: go through float32, which holds them exactly
        a = a.astype(np.float32)
    return np.array(a, dtype=np.float64)


@dataclass(frozen=True, eq=False, init=False)
class Detections:
    """One image's detections: ``boxes`` float64 ``[K, 4]`` (``x1, y1, x2, y2``), ``scores`` float64
    ``[K]``, ``classes`` int64 ``[K]``.

    The constructor takes anything array-like, converts and copies it (float class ids are rounded, a
    non-finite one reads as -1; ``K = 0`` accepts any empty array) and makes the arrays read-only; wrong
    shapes raise :class:`~onnxfi.errors.OnnxfiError`.
    """

    boxes: NDArray[np.float64]
    scores: NDArray[np.float64]
    classes: NDArray[np.int64]

    def __init__(self, boxes: ArrayLike, scores: ArrayLike, classes: ArrayLike) -> None:
        b = _floats(boxes)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise OnnxfiError(f"detection boxes must be [K, 4], got {list(b.shape)}")
        k = b.shape[0]
        s = _floats(scores)
        c = _class_ids(classes)
        if s.size != k or c.size != k or s.ndim > 1 or c.ndim > 1:
            raise OnnxfiError(f"detection scores {list(s.shape)} and classes {list(c.shape)} "
                              f"must both be [{k}] for {k} boxes")
        s, c = s.reshape(k), np.array(c.reshape(k))
        for name, arr in (("boxes", b), ("scores", s), ("classes", c)):
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))

    def take(self, index: ArrayLike) -> Detections:
        """The detections at ``index`` (integer indices or a boolean mask), in that order."""
        idx = np.asarray(index)
        return Detections(self.boxes[idx], self.scores[idx], self.classes[idx])

    def __repr__(self) -> str:
        return f"Detections(K={len(self)}, classes={sorted(set(self.classes.tolist()))})"


def to_xyxy(boxes: ArrayLike, box_format: BoxFormat = "xyxy") -> NDArray[np.float64]:
    """``boxes`` (last axis of size 4, in ``box_format``) as float64 ``x1, y1, x2, y2`` corners.

    Formats: ``xyxy`` corners, ``yxyx`` corners y first (TensorFlow), ``xywh`` top-left corner and size
    (COCO), ``cxcywh`` centre and size (YOLO).
    """
    b = _floats(boxes)
    if b.shape[-1:] != (4,):
        raise OnnxfiError(f"boxes must have a last axis of 4, got {list(b.shape)}")
    a0, a1, a2, a3 = (b[..., i] for i in range(4))
    with np.errstate(invalid="ignore", over="ignore"):
        if box_format == "xyxy":
            return b
        if box_format == "yxyx":
            return np.stack([a1, a0, a3, a2], axis=-1)
        if box_format == "xywh":
            return np.stack([a0, a1, a0 + a2, a1 + a3], axis=-1)
        if box_format == "cxcywh":
            return np.stack([a0 - a2 / 2, a1 - a3 / 2, a0 + a2 / 2, a1 + a3 / 2], axis=-1)
    raise OnnxfiError(f"unknown box format {box_format!r}; choose from {', '.join(BOX_FORMATS)}")


def box_iou(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """IoU of every box in ``a`` ``[K, 4]`` with every box in ``b`` ``[M, 4]`` (``x1, y1, x2, y2``): ``[K, M]``.

    A box's width and height are clipped at 0. The IoU is 0 where the union is 0 or not a finite positive
    number (NaN / Inf coordinates), so a corrupted box overlaps nothing.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore", over="ignore"):
        area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
        area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[..., 0] * wh[..., 1]
        union = area_a[:, None] + area_b[None, :] - inter
        ok = (union > 0) & np.isfinite(union) & np.isfinite(inter)
        return np.divide(inter, union, out=np.zeros_like(inter), where=ok)


def _score_order(scores: NDArray[np.float64]) -> NDArray[np.int64]:
    """Indices by score, highest first, ties in index order, NaN last."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    # primary key -s (NaN read as -inf), then NaN after a true -inf; lexsort is stable: ties keep index order
    return np.lexsort((np.isnan(scores), -s)).astype(np.int64)


def nms(
    boxes: ArrayLike, scores: ArrayLike, iou: float = 0.45, classes: ArrayLike | None = None,
    max_detections: int | None = None,
) -> NDArray[np.int64]:
    """Greedy non-maximum suppression: the indices of the boxes kept, highest score first.

    Boxes are visited by score (highest first, ties in index order, NaN last); a box is kept unless a kept
    box of the same class (every box is one class when ``classes`` is None) overlaps it with IoU above
    ``iou`` (strictly, as torchvision's ``batched_nms``). At most ``max_detections`` are returned: the
    highest-scoring kept ones.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != b.shape[0]:
        raise OnnxfiError(f"nms: {b.shape[0]} boxes but {s.shape[0]} scores")
    c = np.zeros(len(s), dtype=np.int64) if classes is None else _class_ids(classes).reshape(-1)
    limit = len(s) if max_detections is None else max(int(max_detections), 0)
    order = _score_order(s)
    keep = np.zeros(len(s), dtype=bool)
    for cls in np.unique(c):
        idx = order[c[order] == cls]
        kept = 0
        # one kept box per pass; stop once this class alone fills the cap (the rest could never be returned)
        while idx.size and kept < limit:
            i = idx[0]
            keep[i] = True
            kept += 1
            rest = idx[1:]
            idx = rest[~(box_iou(b[i], b[rest])[0] > iou)]
    out = order[keep[order]]
    return out[:limit]


# ---------------------------------------------------------------------------------------------------------
# decoders


class Decoder(Protocol):
    """Turns one run's outputs (the whole batch) into one :class:`Detections` per image."""

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]: ...


def _describe(outputs: Mapping[str, Any]) -> str:
    parts = []
    for name, v in outputs.items():
        dtype = getattr(v, "dtype", None)
        parts.append(f"{name} {list(np.shape(v))}" + (f" {dtype}" if dtype is not None else ""))
    return ", ".join(parts) or "none"


def _get(outputs: Mapping[str, np.ndarray], name: str, who: str) -> np.ndarray:
    if name not in outputs:
        raise OnnxfiError(f"{who}: no output {name!r}; outputs: {_describe(outputs)}")
    return np.asarray(outputs[name])


def _vectors(x: np.ndarray, lead: tuple[int, ...], what: str, who: str) -> np.ndarray:
    """``x`` shaped ``lead`` (a trailing axis of 1 is dropped), or a one-line error."""
    if x.shape == lead + (1,):
        x = x.reshape(lead)
    if x.shape != lead:
        raise OnnxfiError(f"{who}: {what} must be {list(lead)} to go with the boxes, got {list(x.shape)}")
    return x


def _threshold_mask(scores: NDArray[np.float64], threshold: float | None) -> NDArray[np.bool_]:
    if threshold is None:
        return np.ones(scores.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        return scores > threshold


@dataclass(frozen=True)
class NmsDecoder:
    """Separate post-NMS tensors: ``boxes`` ``[N, K, 4]``, ``scores`` ``[N, K]``, ``classes`` ``[N, K]``
    (a trailing axis of 1 is accepted; float classes are rounded), optionally ``num_detections`` ``[N]`` or
    ``[N, 1]`` (valid rows first). Unbatched ``[K, 4]`` / ``[K]`` / ``[K]`` is one image.

    A row is kept when it is among the first ``num_detections`` (clipped to ``[0, K]``; NaN reads as 0),
    its class is >= 0, and its score is above ``score_threshold`` (None keeps every score, NaN included):
    the default 0 drops the zero-score padding rows TF and TensorRT write. Names are output names.
    """

    boxes: str
    scores: str
    classes: str
    num_detections: str | None = None
    box_format: BoxFormat = "xyxy"
    score_threshold: float | None = 0.0
    layout: ClassVar[str] = "nms"

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
        who = "nms decoder"
        raw = [_get(outputs, name, who) for name in (self.boxes, self.scores, self.classes)]
        if raw[0].ndim == 2:  # unbatched: one image
            raw = [x[None] for x in raw]
        b = to_xyxy(raw[0], self.box_format)
        if b.ndim != 3:
            raise OnnxfiError(f"{who}: boxes {self.boxes!r} must be [N, K, 4], got {list(b.shape)}")
        lead = b.shape[:2]
        s = _floats(_vectors(raw[1], lead, f"scores {self.scores!r}", who))
        c = _class_ids(_vectors(raw[2], lead, f"classes {self.classes!r}", who))
        n, k = lead
        valid = np.ones(lead, dtype=bool)
        if self.num_detections is not None:
            num = _floats(_get(outputs, self.num_detections, who)).reshape(-1)
            if num.size != n:
                raise OnnxfiError(f"{who}: num_detections {self.num_detections!r} must be [{n}] or "
                                  f"[{n}, 1], got {list(np.shape(outputs[self.num_detections]))}")
            count = np.clip(np.nan_to_num(num, nan=0.0), 0, k).astype(np.int64)
            valid &= np.arange(k)[None, :] < count[:, None]
        valid &= c >= 0
        valid &= _threshold_mask(s, self.score_threshold)
        return [Detections(b[i][valid[i]], s[i][valid[i]], c[i][valid[i]]) for i in range(n)]


@dataclass(frozen=True)
class DetsDecoder:
    """One tensor of post-NMS rows, the column order named by ``columns`` (``x1 y1 x2 y2 score class
    batch``, ``_`` for a column to skip; columns past the named ones are ignored).

    ``[N, K, >=6]`` (one row block per image) defaults to :data:`DETS_COLUMNS` ``x1, y1, x2, y2, score,
    class`` (YOLO end-to-end exports; a 7th column is ignored). ``[K, >=7]`` (rows of the whole batch,
    each naming its image) defaults to :data:`BATCH_DETS_COLUMNS` ``batch, x1, y1, x2, y2, class, score``
    (YOLOv7's ONNX Runtime end-to-end export). A ``[K, 6]`` tensor has no default: its sixth column could
    be either, so name ``columns``. Without a ``score`` column every score is 1; without ``class`` every
    class is 0.

    Rows with a class < 0 or a score not above ``score_threshold`` (None: keep all) are dropped. For the
    ``[K, ...]`` form the batch has ``batch_size`` images; left out, ``1 +`` the largest batch index
    (below :data:`MAX_IMAGES`), and rows whose batch index is not such an image are dropped.
    """

    output: str
    columns: tuple[str, ...] | None = None
    score_threshold: float | None = 0.0
    batch_size: int | None = None
    layout: ClassVar[str] = "nms"

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
        who = f"dets decoder ({self.output!r})"
        a = _floats(_get(outputs, self.output, who))
        if a.ndim not in (2, 3):
            raise OnnxfiError(f"{who}: rows must be [N, K, C] or [K, C], got {list(a.shape)}")
        cols = self._columns(a, who)
        pos = {name: i for i, name in enumerate(cols) if name != "_"}
        rows = a.reshape(-1, a.shape[-1])
        boxes = rows[:, [pos["x1"], pos["y1"], pos["x2"], pos["y2"]]]
        scores = rows[:, pos["score"]] if "score" in pos else np.ones(len(rows))
        classes = _class_ids(rows[:, pos["class"]]) if "class" in pos else np.zeros(len(rows), dtype=np.int64)
        keep = (classes >= 0) & _threshold_mask(scores, self.score_threshold)
        if a.ndim == 3:
            image = np.repeat(np.arange(a.shape[0]), a.shape[1])
            n = a.shape[0]
        else:
            image = _class_ids(rows[:, pos["batch"]])
            cap = MAX_IMAGES if self.batch_size is None else self.batch_size
            ok = (image >= 0) & (image < cap)
            n = self.batch_size if self.batch_size is not None else int(image[ok & keep].max(initial=0)) + 1
            keep &= ok
        return [Detections(boxes[keep & (image == i)], scores[keep & (image == i)],
                           classes[keep & (image == i)]) for i in range(n)]

    def _columns(self, a: np.ndarray, who: str) -> tuple[str, ...]:
        cols = self.columns
        if cols is None:
            if a.ndim == 3:
                cols = DETS_COLUMNS
            elif a.shape[-1] >= 7:
                cols = BATCH_DETS_COLUMNS
            else:
                raise OnnxfiError(f"{who}: rows {list(a.shape)} have no default column order; give columns "
                                  f"(e.g. {' '.join(BATCH_DETS_COLUMNS[:-1])})")
        bad = [c for c in cols if c not in _COLUMN_NAMES]
        named = [c for c in cols if c != "_"]
        if bad or len(set(named)) != len(named):
            raise OnnxfiError(f"{who}: bad columns {' '.join(cols)}: use each of "
                              f"{' '.join(sorted(_COLUMN_NAMES - {'_'}))} at most once, '_' to skip")
        missing = [c for c in ("x1", "y1", "x2", "y2") if c not in cols]
        if a.ndim == 2 and "batch" not in cols:
            missing.append("batch")
        if missing:
            raise OnnxfiError(f"{who}: columns {' '.join(cols)} lack {' '.join(missing)}")
        if len(cols) > a.shape[-1]:
            raise OnnxfiError(f"{who}: {len(cols)} columns named but rows have {a.shape[-1]}")
        return tuple(cols)


@dataclass(frozen=True)
class YoloDecoder:
    """A raw YOLO head: ``[N, A, 5 + C]`` (``cx, cy, w, h, objectness, C`` class scores; YOLOv5/v7) or
    ``[N, 4 + C, A]`` (``cx, cy, w, h, C`` class scores; YOLOv8 and later). Unbatched ``[A, F]`` is one image.

    ``channels_first`` (None: True when axis 1 is shorter than axis 2, as the anchors outnumber the
    features) says which; ``objectness`` (None: only channels-last has one) whether column 4 is an
    objectness that multiplies the class scores. Each anchor gives one candidate, its best class; those
    with a score above ``score_threshold`` go through class-wise :func:`nms` (``iou``) and the best
    ``max_detections`` stay.
    """

    output: str
    channels_first: bool | None = None
    objectness: bool | None = None
    score_threshold: float = 0.25
    iou: float = 0.45
    max_detections: int = 300
    box_format: BoxFormat = "cxcywh"
    layout: ClassVar[str] = "yolo"

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
        who = f"yolo decoder ({self.output!r})"
        a = _floats(_get(outputs, self.output, who))
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise OnnxfiError(f"{who}: output must be [N, A, 5+C] or [N, 4+C, A], got {list(a.shape)}")
        first = a.shape[1] < a.shape[2] if self.channels_first is None else self.channels_first
        if first:
            a = a.transpose(0, 2, 1)
        obj = (not first) if self.objectness is None else self.objectness
        head = 5 if obj else 4
        if a.shape[2] <= head:
            raise OnnxfiError(f"{who}: {a.shape[2]} features per anchor leave no class scores "
                              f"(channels_first={first}, objectness={obj})")
        out = []
        with np.errstate(invalid="ignore", over="ignore"):
            for p in a:
                cls = p[:, head:] * p[:, 4:5] if obj else p[:, head:]
                best = np.argmax(cls, axis=1)
                score = cls[np.arange(len(cls)), best]
                cand = np.flatnonzero(score > self.score_threshold)
                out.append(_nms_detections(to_xyxy(p[cand, :4], self.box_format), score[cand], best[cand],
                                           self.iou, self.max_detections))
        return out


def _nms_detections(boxes: NDArray[np.float64], scores: NDArray[np.float64], classes: ArrayLike,
                    iou: float, max_detections: int) -> Detections:
    keep = nms(boxes, scores, iou, classes, max_detections)
    return Detections(boxes[keep], scores[keep], np.asarray(classes)[keep])


@dataclass(frozen=True)
class SsdDecoder:
    """Boxes ``[N, A, 4]`` (in ``box_format``) and per-class scores ``[N, A, C]`` (unbatched ``[A, 4]`` /
    ``[A, C]`` is one image). Column ``background`` (None: none) is never a detection; class ids are score
    columns, background included. Every (anchor, class) with a score above ``score_threshold`` is a
    candidate (one anchor may give several classes); class-wise :func:`nms` (``iou``) then keeps the best
    ``max_detections``.
    """

    boxes: str
    scores: str
    background: int | None = 0
    score_threshold: float = 0.25
    iou: float = 0.45
    max_detections: int = 300
    box_format: BoxFormat = "xyxy"
    layout: ClassVar[str] = "ssd"

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
        who = "ssd decoder"
        b = to_xyxy(_get(outputs, self.boxes, who), self.box_format)
        s = _floats(_get(outputs, self.scores, who))
        if b.ndim == 2:
            b, s = b[None], s[None]
        if b.ndim != 3 or s.ndim != 3 or s.shape[:2] != b.shape[:2]:
            raise OnnxfiError(f"{who}: boxes {self.boxes!r} must be [N, A, 4] and scores {self.scores!r} "
                              f"[N, A, C], got {list(b.shape)} and {list(s.shape)}")
        out = []
        for boxes, scores in zip(b, s):
            mask = _threshold_mask(scores, self.score_threshold)
            if self.background is not None and 0 <= self.background < scores.shape[1]:
                mask[:, self.background] = False
            anchor, cls = np.nonzero(mask)
            out.append(_nms_detections(boxes[anchor], scores[anchor, cls], cls, self.iou, self.max_detections))
        return out


def as_detections_list(result: Any, source: str = "decoder") -> list[Detections]:
    """``result`` (a list of :class:`Detections` or of ``(boxes, scores, classes)`` tuples, one per image)
    as a list of :class:`Detections`; anything else raises :class:`~onnxfi.errors.OnnxfiError` naming ``source``."""
    if isinstance(result, (np.ndarray, str, bytes, Mapping)) or not isinstance(result, Sequence):
        raise OnnxfiError(f"{source} returned {type(result).__name__}, not a list of Detections or "
                          "(boxes, scores, classes) tuples, one per image")
    out = []
    for i, item in enumerate(result):
        if isinstance(item, Detections):
            out.append(item)
            continue
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            raise OnnxfiError(f"{source} returned {type(item).__name__} for image {i}, not Detections or a "
                              "(boxes, scores, classes) tuple")
        try:
            out.append(Detections(*item))
        except OnnxfiError as e:
            raise OnnxfiError(f"{source}, image {i}: {e}") from None
        except (TypeError, ValueError) as e:
            raise OnnxfiError(f"{source}, image {i}: {first_line(e)}") from None
    return out


@dataclass(frozen=True)
class PluginDecoder:
    """A user's decoder ``module:function`` (:func:`load_decoder`): ``function(outputs)`` returns one
    :class:`Detections` or ``(boxes, scores, classes)`` tuple per image. When the function raises, the
    call raises :class:`~onnxfi.errors.MetricError` (the user's code: the campaign stops with one line)."""

    spec: str
    fn: Callable[[Mapping[str, np.ndarray]], Any] = field(repr=False, compare=False)
    layout: ClassVar[str] = "plugin"

    def __call__(self, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
        try:
            result = self.fn(outputs)
        except Exception as e:
            raise MetricError(f"decoder {self.spec} raised {type(e).__name__}: {first_line(e)}") from e
        return as_detections_list(result, f"decoder {self.spec}")


def _module(mod: str) -> Any:
    """An importable module name, or a ``.py`` file imported as it is (its folder first on the path)."""
    if not mod.endswith(".py"):
        return importlib.import_module(mod)
    path = Path(mod).resolve()
    if not path.is_file():
        raise ImportError(f"no file {mod}")
    name = "_onnxfi_decoder_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ImportError(f"cannot import {mod}")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        loader_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_decoder(spec: str) -> PluginDecoder:
    """The decoder ``module:function`` or ``path/to/file.py:function`` (as ``--metric``, ``--data-loader``):
    the module is imported, the function looked up."""
    mod, _, fn = spec.rpartition(":")
    if not mod or not fn:
        raise OnnxfiError(f"bad decoder {spec!r}: use module:function or file.py:function")
    try:
        obj = getattr(_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise OnnxfiError(f"cannot load decoder {spec!r}: {first_line(e)}") from None
    except Exception as e:  # the user's module failed on import: one line, as a metric's failure
        raise OnnxfiError(f"decoder {spec!r} failed on import: {type(e).__name__}: {first_line(e)}") from None
    if not callable(obj):
        raise OnnxfiError(f"decoder {spec!r} is a {type(obj).__name__}, not a function")
    return PluginDecoder(spec, obj)


# output-name roles, first match wins: "detection_boxes" is boxes, "num_dets" is a count
_ROLES = (
    ("num_detections", ("num_det", "num_box", "numdet")),
    ("boxes", ("box",)),
    ("scores", ("score", "conf", "prob")),
    ("classes", ("class", "label")),
    ("dets", ("det",)),
)


def _role(name: str) -> str | None:
    low = name.lower()
    for role, keys in _ROLES:
        if any(k in low for k in keys):
            return role
    return None


def infer_decoder(outputs: Mapping[str, Any], layout: str | None = None,
                  batch_size: int | None = None) -> Decoder:
    """The one built-in decoder that reads ``outputs`` (arrays, or anything with a ``.shape``; only names
    and shapes are read), judged from
    output names (case-insensitive substrings: ``box``/``bbox``, ``score``/``conf``/``prob``,
    ``class``/``label``, ``num_det``, ``det``) and shapes; ``layout`` (:data:`LAYOUTS`) keeps only that
    layout's candidates. ``batch_size`` goes to a :class:`DetsDecoder` of batch rows.

    Candidates: ``nms`` from named boxes ``[N, K, 4]`` + scores ``[N, K]`` + classes ``[N, K]`` (+ a
    num_detections ``[N]`` / ``[N, 1]`` when there is one), or from one rank-3 output with 6 or 7 columns,
    or a rank-2 one with 7 (unnamed or named ``det``); ``ssd`` from named boxes ``[N, A, 4]`` + scores
    ``[N, A, C]`` when no output is named as classes; ``yolo`` from a rank-3 output with more anchors
    than features, unnamed or named ``det`` (when not 6 or 7 columns wide: those are rows). Zero or several candidates raise :class:`~onnxfi.errors.OnnxfiError` listing the
    outputs with their shapes and the candidates: pass a decoder explicitly then.
    """
    if layout is not None and layout not in LAYOUTS:
        raise OnnxfiError(f"unknown detection layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    shapes = {name: tuple(np.shape(v)) for name, v in outputs.items()}
    by_role: dict[str | None, list[str]] = {}
    for name in outputs:
        by_role.setdefault(_role(name), []).append(name)
    named = {r: by_role.get(r, []) for r, _ in _ROLES}
    cands: list[Decoder] = []
    for bname, sname, cname in itertools.product(named["boxes"], named["scores"], named["classes"]):
        bs = shapes[bname]
        if len(bs) not in (2, 3) or bs[-1] != 4:
            continue
        lead = bs[:-1]
        if shapes[sname] not in (lead, lead + (1,)) or shapes[cname] not in (lead, lead + (1,)):
            continue
        n = lead[0] if len(lead) == 2 else 1
        num_shapes = ((n,), (n, 1)) if len(lead) == 2 else ((), (1,), (1, 1))
        nums: list[str | None] = [m for m in named["num_detections"] if shapes[m] in num_shapes]
        for num in nums or [None]:
            cands.append(NmsDecoder(bname, sname, cname, num))
    if not named["classes"]:
        for bname, sname in itertools.product(named["boxes"], named["scores"]):
            bs, ss = shapes[bname], shapes[sname]
            if len(bs) in (2, 3) and bs[-1] == 4 and len(ss) == len(bs) and ss[:-1] == bs[:-1]:
                cands.append(SsdDecoder(bname, sname))
    for name in named["dets"] + by_role.get(None, []):
        shape = shapes[name]
        rows = (len(shape) == 3 and shape[-1] in (6, 7)) or (len(shape) == 2 and shape[-1] == 7)
        if rows:
            cands.append(DetsDecoder(name, batch_size=batch_size if len(shape) == 2 else None))
        # a raw head: unnamed, or named "det..." without the shape of post-NMS rows
        if len(shape) == 3 and shape[1] != shape[2] and not (rows and _role(name) == "dets"):
            features = min(shape[1], shape[2])
            if features >= (5 if shape[1] < shape[2] else 6):
                cands.append(YoloDecoder(name))
    if layout is not None:
        cands = [c for c in cands if getattr(c, "layout", None) == layout]
    if len(cands) == 1:
        return cands[0]
    what = f"{layout} layout" if layout else "detection layout"
    found = "; ".join(repr(c) for c in cands) if cands else "none fits"
    raise OnnxfiError(f"cannot tell the {what} from outputs {_describe(outputs)}: candidates: {found}; "
                      "build one of NmsDecoder, DetsDecoder, YoloDecoder, SsdDecoder, or give a "
                      "module:function decoder")


# ---------------------------------------------------------------------------------------------------------
# matching and scoring


@dataclass(frozen=True, eq=False)
class Match:
    """How one image's faulty detections relate to its golden ones (:func:`match`).

    ``pairs`` ``[P, 2]`` are (golden index, faulty index) of matched detections, same class; ``shift``
    ``[P]`` is each pair's box change (:func:`match`). ``relabelled_pairs`` ``[R, 2]`` overlap but have
    different classes. ``lost`` golden and ``added`` faulty indices are unmatched. Counts: ``n_lost``,
    ``n_added``, ``n_relabelled``, and the pairs split three ways: ``n_moved`` (shift above ``box_tol``,
    NaN included), ``n_shifted`` (above 0, within ``box_tol``), ``n_same`` (identical box; scores are
    ignored).
    """

    pairs: NDArray[np.int64]
    shift: NDArray[np.float64]
    relabelled_pairs: NDArray[np.int64]
    lost: NDArray[np.int64]
    added: NDArray[np.int64]
    box_tol: float

    @property
    def n_lost(self) -> int:
        return int(self.lost.size)

    @property
    def n_added(self) -> int:
        return int(self.added.size)

    @property
    def n_relabelled(self) -> int:
        return int(self.relabelled_pairs.shape[0])

    @property
    def n_moved(self) -> int:
        return int(np.count_nonzero(~(self.shift <= self.box_tol)))

    @property
    def n_shifted(self) -> int:
        return int(np.count_nonzero((self.shift > 0) & (self.shift <= self.box_tol)))

    @property
    def n_same(self) -> int:
        return int(np.count_nonzero(self.shift == 0))

    @property
    def changed(self) -> bool:
        """Some detection lost, added, relabelled or moved beyond ``box_tol``: a silent data corruption."""
        return bool(self.n_lost or self.n_added or self.n_relabelled or self.n_moved)


def _greedy(ious: NDArray[np.float64], order: NDArray[np.int64], allowed: NDArray[np.bool_],
            golden_free: NDArray[np.bool_], faulty_free: NDArray[np.bool_], iou: float) -> NDArray[np.int64]:
    """Pairs (golden, faulty): each free faulty box in ``order`` takes the free golden box it may pair with
    (``allowed``) of highest IoU, at least ``iou`` (ties: lowest golden index); both stop being free."""
    pairs = []
    for f in order:
        if not faulty_free[f]:
            continue
        cand = np.where(golden_free & allowed[:, f], ious[:, f], -1.0)
        if cand.size == 0:
            continue
        g = int(np.argmax(cand))
        if cand[g] >= iou:
            pairs.append((g, int(f)))
            golden_free[g] = False
            faulty_free[f] = False
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def match(golden: Detections, faulty: Detections, iou: float = 0.5, box_tol: float = 0.05) -> Match:
    """Match ``faulty`` detections to ``golden`` ones, one to one.

    1. Same class: faulty detections, highest score first, each take the unmatched golden detection of
       their class with the highest IoU, when it is at least ``iou`` (the COCO greedy rule).
    2. Relabelled: the faulty detections still unmatched, in the same order, each take the unmatched golden
       detection of a *different* class with the highest IoU >= ``iou``; such a pair counts once, as
       relabelled, and neither as lost nor as added.
    3. Golden detections still unmatched are lost; faulty ones are added.

    IoU is :func:`box_iou`, except that two identical boxes have IoU 1 even when their area is 0.

    A matched pair's ``shift`` is its largest relative coordinate change: ``max(|dx1|, |dx2|) / w`` and
    ``max(|dy1|, |dy2|) / h``, the larger of the two, with ``w``, ``h`` the golden box's width and height (a
    change on a zero-size side is infinite). The pair is *moved* when the shift is above ``box_tol`` (or
    NaN), *shifted* when it is above 0 and within ``box_tol``, *same* when the box is identical. Score
    changes are ignored (they matter only through the order above and through what a decoder's threshold
    keeps).
    """
    ious = box_iou(golden.boxes, faulty.boxes)
    # an unchanged box matches itself even when its area is 0 (IoU 0/0)
    ious[np.all(golden.boxes[:, None, :] == faulty.boxes[None, :, :], axis=2)] = 1.0
    order = _score_order(faulty.scores)
    golden_free = np.ones(len(golden), dtype=bool)
    faulty_free = np.ones(len(faulty), dtype=bool)
    same_class = golden.classes[:, None] == faulty.classes[None, :]
    pairs = _greedy(ious, order, same_class, golden_free, faulty_free, iou)
    relabelled = _greedy(ious, order, ~same_class, golden_free, faulty_free, iou)
    g, f = golden.boxes[pairs[:, 0]], faulty.boxes[pairs[:, 1]]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        delta = np.abs(f - g)
        size = np.stack([g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]] * 2, axis=1)  # w, h, w, h
        rel = np.where(delta == 0, 0.0, delta / np.clip(size, 0, None))
        # NaN must survive the max (np.max propagates it): a NaN shift reads as moved
        shift = rel.max(axis=1) if len(rel) else np.zeros(0)
    return Match(pairs, shift, relabelled, np.flatnonzero(golden_free).astype(np.int64),
                 np.flatnonzero(faulty_free).astype(np.int64), float(box_tol))


def labels_to_detections(labels: ArrayLike) -> list[Detections]:
    """Ground truth from a padded ``[N, M, 5]`` array of rows ``class, x1, y1, x2, y2`` per image, rows with
    ``class < 0`` (or not finite) being padding; scores are 1. Raises :class:`~onnxfi.errors.DataError`
    for another shape."""
    a = _floats(labels)
    if a.ndim != 3 or a.shape[-1] != 5:
        raise DataError(f"detection labels must be [N, M, 5] rows (class, x1, y1, x2, y2; class -1 pads), "
                        f"got {list(a.shape)}")
    out = []
    for rows in a:
        classes = _class_ids(rows[:, 0])
        keep = classes >= 0
        out.append(Detections(rows[keep, 1:], np.ones(int(keep.sum())), classes[keep]))
    return out


def _truth(truth: Sequence[Detections] | ArrayLike) -> list[Detections]:
    if isinstance(truth, Sequence) and all(isinstance(t, Detections) for t in truth):
        return list(truth)  # type: ignore[arg-type]
    return labels_to_detections(truth)  # type: ignore[arg-type]


def _padded(dets: Sequence[Detections], n: int) -> list[Detections]:
    return list(dets) + [Detections.empty()] * (n - len(dets))


def average_precision(
    pred_per_image: Sequence[Detections], truth_per_image: Sequence[Detections] | ArrayLike, iou: float = 0.5,
) -> float:
    """Mean average precision at IoU ``iou`` of ``pred_per_image`` against ``truth_per_image`` (a list of
    :class:`Detections`, whose scores are ignored, or padded labels: :func:`labels_to_detections`).

    Per class present in the truth: predictions of that class from every image, highest score first (ties
    in image order, NaN last), each take the unmatched truth box of their image and class with the highest
    IoU, when at least ``iou`` (true positive), else count as false positives; AP is the area under the
    precision-recall curve with all-point interpolation (VOC 2010+: precision made non-increasing from the
    right). The result is the mean over those classes; predictions of other classes are ignored; ``nan``
    when the truth has no box. A list shorter than the other is padded with images without detections.
    """
    truth = _truth(truth_per_image)
    n = max(len(truth), len(pred_per_image))
    truth, pred = _padded(truth, n), _padded(pred_per_image, n)
    classes = np.unique(np.concatenate([t.classes for t in truth])) if n else _EMPTY_IDX
    # every prediction against every truth box of its image, once (classes are masked below)
    overlaps = [box_iou(p.boxes, t.boxes) if len(p) and len(t) else None for p, t in zip(pred, truth)]
    aps = []
    for c in classes:
        image = np.concatenate([np.full(int(np.sum(p.classes == c)), i) for i, p in enumerate(pred)])
        idx = np.concatenate([np.flatnonzero(p.classes == c) for p in pred])
        scores = np.array([pred[i].scores[j] for i, j in zip(image, idx)], dtype=np.float64)
        free = [t.classes == c for t in truth]  # the truth boxes of class c not matched yet
        tp = np.zeros(len(idx), dtype=bool)
        for rank, k in enumerate(_score_order(scores)):
            i = int(image[k])
            if not free[i].any():
                continue
            ov = np.where(free[i], overlaps[i][idx[k]], -1.0)  # type: ignore[index]
            best = int(np.argmax(ov))
            if ov[best] >= iou:
                tp[rank] = True
                free[i][best] = False
        npos = sum(int(np.count_nonzero(t.classes == c)) for t in truth)
        hits = np.cumsum(tp)
        recall = hits / npos
        precision = hits / np.arange(1, len(tp) + 1)
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        step = np.flatnonzero(mrec[1:] != mrec[:-1])
        aps.append(float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1])))
    return float(np.mean(aps)) if aps else float("nan")


def _self_match(dets: Detections, box_tol: float) -> Match:
    k = np.arange(len(dets), dtype=np.int64)
    return Match(np.stack([k, k], axis=1), np.zeros(len(dets)), np.zeros((0, 2), dtype=np.int64), _EMPTY_IDX,
                 _EMPTY_IDX, float(box_tol))


def detection_parts(
    golden_dets: Sequence[Detections], faulty_dets: Sequence[Detections],
    labels: Sequence[Detections] | ArrayLike | None = None, iou: float = 0.5, box_tol: float = 0.05,
    with_map: bool = True,
) -> tuple[dict[str, float], NDArray[np.bool_], bool]:
    """One experiment's detection outcome: ``(metrics, changed, tolerable_only)``.

    Each image's faulty detections are matched to its golden ones (:func:`match` with ``iou`` and
    ``box_tol``). ``changed[i]`` (an SDC on image ``i``) is true when some detection is lost, added,
    relabelled, or moved beyond ``box_tol``. ``tolerable_only`` is true when no image changed but some
    box shifted within ``box_tol``. A list shorter than the other is padded with images without
    detections (a batch-rows layout cannot tell that its last images are empty).

    ``metrics`` (plain floats): ``det_lost``, ``det_added``, ``det_relabelled``, ``det_moved``,
    ``det_shifted``, ``det_same`` (totals over the batch), ``det_changed_frac`` (fraction of images
    changed; ``nan`` for no image), ``map50`` (mAP@0.5 of faulty against golden as the truth; ``nan``
    when golden has no box). With ``labels`` (padded ``[N, M, 5]``: :func:`labels_to_detections`, or a
    list of :class:`Detections`) also ``map50_labels`` (faulty against the labels) and ``map50_clean``
    (golden against the labels). ``with_map=False`` leaves out ``map50`` (a caller that scores against labels).
    """
    n = max(len(golden_dets), len(faulty_dets))
    golden, faulty = _padded(golden_dets, n), _padded(faulty_dets, n)
    # an image whose detections are golden's own object (decode_changed: its outputs did not change) matches itself
    matches = [_self_match(g, box_tol) if f is g else match(g, f, iou, box_tol) for g, f in zip(golden, faulty)]
    changed = np.array([m.changed for m in matches], dtype=bool)
    metrics: dict[str, float] = {
        "det_lost": float(sum(m.n_lost for m in matches)),
        "det_added": float(sum(m.n_added for m in matches)),
        "det_relabelled": float(sum(m.n_relabelled for m in matches)),
        "det_moved": float(sum(m.n_moved for m in matches)),
        "det_shifted": float(sum(m.n_shifted for m in matches)),
        "det_same": float(sum(m.n_same for m in matches)),
        "det_changed_frac": float(changed.mean()) if n else float("nan"),
    }
    if with_map:
        metrics["map50"] = average_precision(faulty, golden, 0.5)
    if labels is not None:
        truth = _truth(labels)
        metrics["map50_labels"] = average_precision(faulty, truth, 0.5)
        metrics["map50_clean"] = average_precision(golden, truth, 0.5)
    tolerable_only = bool(not changed.any() and any(m.n_shifted for m in matches))
    return metrics, changed, tolerable_only


# ---------------------------------------------------------------------------------------------------------
# onnxfi's detection task: the layout names a decoder, which reads every output of a run


LAYOUT_PREFIX = "det-"  # det-nms, det-yolo, det-ssd: a built-in decoder, re-inferred from the outputs' names
PLUGIN_PREFIX = "det:"  # det:module:function: a user's decoder (--decoder)
TASK_PLUGIN_PREFIX = "detection:"  # the --task value that carries a user's decoder


def is_detection_layout(layout: str) -> bool:
    """``det-nms`` / ``det-yolo`` / ``det-ssd`` or ``det:module:function``."""
    return layout.startswith(PLUGIN_PREFIX) or (
        layout.startswith(LAYOUT_PREFIX) and layout[len(LAYOUT_PREFIX):] in LAYOUTS)


_PLUGINS: dict[str, PluginDecoder] = {}


def decoder_of(layout: str, outputs: Mapping[str, Any]) -> Decoder:
    """The decoder a detection layout names: the user's ``module:function``, or the one built-in decoder of
    that kind that reads ``outputs`` (:func:`infer_decoder`; names and shapes only, so every run of a model
    gets the same decoder)."""
    if layout.startswith(PLUGIN_PREFIX):
        spec = layout[len(PLUGIN_PREFIX):]
        if spec not in _PLUGINS:
            _PLUGINS[spec] = load_decoder(spec)
        return _PLUGINS[spec]
    if not is_detection_layout(layout):
        raise OnnxfiError(f"not a detection layout: {layout!r}")
    return infer_decoder(outputs, layout=layout[len(LAYOUT_PREFIX):])


def decoder_outputs(decoder: Decoder) -> list[str]:
    """The outputs a built-in decoder reads (first: the one named as the scored output); empty for a plug-in."""
    names = [getattr(decoder, a, None) for a in ("output", "boxes", "scores", "classes", "num_detections")]
    return [n for n in names if isinstance(n, str)]


def choose_layout(outputs: Mapping[str, Any], task: str | None,
                  labels: Any = None) -> tuple[str, str, str] | None:
    """(layout, scored output, reason) of a detector's outputs, or None when ``task`` is None and the evidence
    does not say detector: outputs named like a detector's that exactly one built-in decoder reads, each with
    the images on a first axis (rank 3; the unbatched [K, 4] forms are left to ``--task detection``), and
    no ``labels`` or detection labels (``[N, M, 5]``). ``task`` ``detection`` asks for one (an
    :class:`OnnxfiError` lists the candidates when there are none or several); ``detection:module:function``
    names the user's decoder."""
    names = list(outputs)
    if task is not None and task.startswith(TASK_PLUGIN_PREFIX):
        spec = task[len(TASK_PLUGIN_PREFIX):]
        decoder_of(PLUGIN_PREFIX + spec, outputs)  # loads now: a bad spec is one line before any run
        return PLUGIN_PREFIX + spec, names[0], f"the decoder {spec} (--decoder) reads every output"
    if task is None and not any(_role(n) is not None for n in names):
        return None  # no output is named like a detector's: the other tasks' rules read it
    if task is None and labels is not None and (np.ndim(labels) != 3 or np.shape(labels)[-1] != 5):
        return None  # labels of another task (class ids, label maps) say what the model is
    try:
        decoder = infer_decoder(outputs)
    except OnnxfiError:
        if task is None:
            return None
        raise
    layout = LAYOUT_PREFIX + getattr(decoder, "layout", "")
    reads = decoder_outputs(decoder)
    if task is None and not isinstance(decoder, DetsDecoder) and np.ndim(outputs[reads[0]]) < 3:
        return None  # boxes (or a head) without an image axis: a localisation or regression output, maybe
    why = (f"{'--task detection' if task else 'outputs named like a detector'}: {decoder!r} reads "
           f"{', '.join(repr(n) for n in reads)}")
    return layout, reads[0], why


def decode(layout: str, outputs: Mapping[str, np.ndarray]) -> list[Detections]:
    """The per-image detections of one run's outputs read as ``layout``."""
    return as_detections_list(decoder_of(layout, outputs)(outputs))


def decode_changed(layout: str, outputs: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                   golden_dets: Sequence[Detections]) -> list[Detections]:
    """:func:`decode` of a faulty run, decoding only the images whose outputs differ from golden's (the others
    keep golden's detections) when the layout is a built-in one and every output holds the images on its
    first axis; a one-image activation fault decodes one image, not the batch. Same result as :func:`decode`:
    a built-in decoder reads each image's rows alone."""
    n = len(golden_dets)
    arrays = [np.asarray(outputs[k]) for k in golden]
    if layout.startswith(PLUGIN_PREFIX) or not n or any(a.ndim == 0 or a.shape[0] != n for a in arrays):
        return decode(layout, outputs)
    diff = np.zeros(n, dtype=bool)
    for k, g in golden.items():
        a, b = np.asarray(outputs[k]), np.asarray(g)
        if a.shape != b.shape or a.dtype != b.dtype:
            return decode(layout, outputs)
        rows_a = np.ascontiguousarray(a).reshape(n, -1).view(np.uint8)
        rows_b = np.ascontiguousarray(b).reshape(n, -1).view(np.uint8)
        diff |= np.any(rows_a != rows_b, axis=1)
    idx = np.flatnonzero(diff)
    out = list(golden_dets)
    if idx.size == 0:
        return out
    if idx.size == n:
        return decode(layout, outputs)
    part = decode(layout, {k: np.asarray(v)[idx] for k, v in outputs.items()})
    for i, d in zip(idx, part):
        out[int(i)] = d
    return out
