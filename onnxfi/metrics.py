"""Per-experiment metrics: turn faulty outputs, golden outputs and labels into masks and plain-float scores.

Conventions used throughout:

* Classification scores are ``[N, C]`` (``[N, C, 1, 1]`` is accepted and flattened); labels are ``[N]``
  (or ``[N, 1]``) integer class ids in ``[0, C)``, or ``[N, C]`` one-hot / probability rows, read as the
  class ids of their argmax (:func:`class_ids`).
* NaN handling of the ranking functions follows ``np.argmax``: NaN counts as larger than every number
  (``+inf`` included), ties go to the lowest index, and among several NaN the first one wins. ``top1``,
  ``topk_indices`` and ``topk_contains`` all use this one order, so a corrupted row never crashes and
  ``top1(x) == topk_indices(x, k)[:, 0]`` always holds.
* Scalar reductions over zero samples (an empty batch, every pixel ignored) return ``nan`` instead of raising.
* Every summary value is a plain Python ``float`` so the dictionaries can go straight into JSON or SQLite.
* Float means every floating-point type ONNX has (:func:`onnxfi.bits.is_float_dtype`): ``bfloat16`` and the
  float8 types (``ml_dtypes``, numpy kind ``"V"``) are read as float32, exactly, so NaN/Inf in them count.

Output layouts (:data:`LAYOUTS`) name where an output's decision is: ``classes`` (scores ``[N, C]``, argmax
over C), ``ids`` (integer class ids ``[N]``), ``nchw`` / ``nhwc`` (segmentation scores, argmax over the
channel axis), ``mask-nchw`` / ``mask-nhwc`` / ``mask`` (one channel ``[N, 1, H, W]`` / ``[N, H, W, 1]`` /
``[N, H, W]``: a binary mask, pixel = 1 when its value is above :func:`mask_threshold` of the fault-free
output), ``labelmap`` (integer class ids per pixel) and ``raw`` (no decision: regression).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from onnxfi import sequence
from onnxfi.bits import is_float_dtype
from onnxfi.detection import TASK_PLUGIN_PREFIX, is_detection_layout
from onnxfi.errors import OnnxfiError
from onnxfi.sequence import SEQUENCE_LAYOUTS, ctc_blank_layout

__all__ = [
    "Task",
    "Layout",
    "LAYOUTS",
    "remembered",
    "classification_parts",
    "MASK_LAYOUTS",
    "layout_task",
    "task_family",
    "is_sequence_scores",
    "TASKS",
    "SEQUENCE_LAYOUTS",
    "infer_layout",
    "mask_threshold",
    "decisions",
    "layout_classes",
    "label_map_classes",
    "label_rows",
    "class_ids",
    "IGNORE_ID",
    "softmax",
    "is_probability",
    "detect_task",
    "top1",
    "topk_indices",
    "topk_contains",
    "sdc1_mask",
    "sdc5_mask",
    "accuracy",
    "topk_accuracy",
    "nonfinite_mask",
    "error_stats",
    "confusion_matrix",
    "miou",
    "pixel_accuracy",
    "predictive_entropy",
    "mean_entropy",
    "max_softmax_probability",
    "expected_calibration_error",
    "classification_metrics",
    "segmentation_metrics",
]

Task = Literal["classification", "segmentation", "regression", "sequence", "detection"]
Layout = Literal["classes", "ids", "nchw", "nhwc", "mask-nchw", "mask-nhwc", "mask", "labelmap", "raw",
                 "ctc", "ctc-last", "tokens"]
LAYOUTS: tuple[Layout, ...] = ("classes", "ids", "nchw", "nhwc", "mask-nchw", "mask-nhwc", "mask", "labelmap", "raw",
                               "ctc", "ctc-last", "tokens")
# what ``--task`` takes: the four families, and the two readings of a sequence output by name
TASKS = ("classification", "segmentation", "regression", "sequence", "ctc", "tokens", "detection")
MASK_LAYOUTS: tuple[Layout, ...] = ("mask-nchw", "mask-nhwc", "mask")
# the label id segmentation datasets use for "don't care" pixels (Pascal VOC, Cityscapes): never a class
IGNORE_ID = 255
_LAYOUT_TASKS: dict[str, Task] = {
    "classes": "classification", "ids": "classification", "raw": "regression",
    **{k: "segmentation" for k in ("nchw", "nhwc", "mask-nchw", "mask-nhwc", "mask", "labelmap")},
    **{k: "sequence" for k in SEQUENCE_LAYOUTS},
}

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

# Elements per float64 chunk in error_stats (8 MiB per temporary).
_CHUNK = 1 << 20

# Largest magnitude a float label id may have before it is treated as garbage (keeps int64 casts exact).
_MAX_LABEL = float(2**53)


# --------------------------------------------------------------------------------------------------
# Input coercion
# --------------------------------------------------------------------------------------------------


def _numeric(x: ArrayLike, name: str) -> NDArray[Any]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        if is_float_dtype(arr.dtype):  # bfloat16, float8: float32 holds every value exactly
            return arr.astype(np.float32)
        raise OnnxfiError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _as_float(x: ArrayLike, name: str) -> FloatArray:
    with np.errstate(invalid="ignore"):  # a faulty output can hold a signalling NaN: it stays NaN
        return _numeric(x, name).astype(np.float64, copy=False)


def _axis(axis: int, ndim: int, name: str) -> int:
    if not -ndim <= axis < ndim:
        raise OnnxfiError(f"{name}: axis {axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def _scores(x: ArrayLike, name: str) -> FloatArray:
    """Classification scores as float64 ``[N, C]``; ``[N, C, 1, 1]`` is flattened."""
    arr = _as_float(x, name)
    if arr.ndim == 4 and arr.shape[2] == 1 and arr.shape[3] == 1:
        arr = arr.reshape(arr.shape[0], arr.shape[1])
    if arr.ndim != 2:
        raise OnnxfiError(f"{name}: expected classification scores of shape [N, C], got {list(arr.shape)}")
    if arr.shape[1] < 1:
        raise OnnxfiError(f"{name}: scores have no classes (shape {list(arr.shape)})")
    return arr


def _same_shape(a: NDArray[Any], b: NDArray[Any], what: str) -> None:
    if a.shape != b.shape:
        raise OnnxfiError(f"{what}: shapes differ ({list(a.shape)} vs {list(b.shape)})")


def label_rows(labels: ArrayLike, atol: float = 1e-3) -> Literal["one-hot", "probabilities"] | None:
    """What ``[N, C]`` labels (``C >= 2``) hold per row: ``"one-hot"`` (one 1, zeros elsewhere),
    ``"probabilities"`` (finite, non-negative, summing to 1 within ``atol``), else None (any other shape
    or values: class ids, multi-label targets, regression targets)."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf" and is_float_dtype(arr.dtype):
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "biuf" or arr.ndim != 2 or arr.shape[1] < 2 or arr.shape[0] == 0:
        return None
    a = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)) or a.min() < 0 or not np.all(np.abs(a.sum(axis=1) - 1.0) <= atol):
        return None
    return "one-hot" if bool(np.all((a == 0) | (a == 1))) else "probabilities"


def class_ids(labels: ArrayLike, num_classes: int | None = None, name: str = "labels") -> IntArray:
    """Class ids as int64 ``[N]`` from ids ``[N]`` / ``[N, 1]`` (whole numbers) or one-hot / probability
    rows ``[N, C]`` (:func:`label_rows`; the argmax of each row, first tie wins). With ``num_classes``,
    rows must have that many columns and every id must lie in ``[0, num_classes)``; an error names the range."""
    arr = _numeric(labels, name)
    if arr.ndim == 2 and arr.shape[1] >= 2:
        rows = label_rows(arr)
        if rows is None:
            raise OnnxfiError(f"{name}: shape {list(arr.shape)} is neither class ids [N] nor one-hot or "
                              "probability rows [N, C] (non-negative, each row summing to 1)")
        if num_classes is not None and arr.shape[1] != num_classes:
            raise OnnxfiError(f"{name}: {rows} rows over {arr.shape[1]} classes, but the scores have "
                              f"{num_classes} classes")
        out: IntArray = np.argmax(arr, axis=1).astype(np.int64)
        return out
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise OnnxfiError(f"{name}: expected class ids of shape [N], got shape {list(arr.shape)}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)) or np.any(np.abs(arr) > _MAX_LABEL):
            raise OnnxfiError(f"{name}: class ids must be whole numbers")
    out = arr.astype(np.int64)
    if num_classes is not None and out.size and (out.min() < 0 or out.max() >= num_classes):
        raise OnnxfiError(
            f"{name}: class ids must lie in [0, {num_classes}) (the scores have {num_classes} classes), "
            f"got range [{out.min()}, {out.max()}]"
        )
    return out


def _labels(labels: ArrayLike, n: int, num_classes: int, name: str = "labels") -> IntArray:
    """Class ids as int64 ``[N]`` (:func:`class_ids`), validated against ``n`` samples and ``[0, num_classes)``."""
    shape = list(np.shape(labels))
    if not shape or shape[0] != n:
        raise OnnxfiError(f"{name}: expected {n} class ids (shape [{n}]), got shape {shape}")
    return class_ids(labels, num_classes, name)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OnnxfiError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _mean(values: NDArray[Any]) -> float:
    """Mean as a float; ``nan`` for an empty array (no warning)."""
    if values.size == 0:
        return float("nan")
    return float(np.mean(values, dtype=np.float64))


def _finite_mean(values: FloatArray) -> float:
    """Mean of the finite entries; ``nan`` when there are none."""
    return _mean(values[np.isfinite(values)])


# --------------------------------------------------------------------------------------------------
# Probabilities and task detection
# --------------------------------------------------------------------------------------------------


def softmax(logits: ArrayLike, axis: int = 1) -> FloatArray:
    """Numerically stable softmax in float64 along ``axis``.

    Non-finite inputs follow the mathematical limit where one exists: a slice holding ``+inf`` becomes
    uniform over its ``+inf`` entries, ``-inf`` entries get probability 0. A slice holding NaN, or made
    only of ``-inf``, becomes all NaN.
    """
    x = _as_float(logits, "logits")
    if x.ndim == 0:
        raise OnnxfiError("logits: expected at least one dimension")
    ax = _axis(axis, x.ndim, "logits")
    if x.shape[ax] == 0:
        raise OnnxfiError(f"logits: axis {axis} has size 0")
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(x, axis=ax, keepdims=True)
        shifted = np.where(np.isposinf(m), np.where(np.isposinf(x), 0.0, -np.inf), x - m)
        e = np.exp(shifted)
        out: FloatArray = e / np.sum(e, axis=ax, keepdims=True)
    return out


def is_probability(x: ArrayLike, axis: int = 1, atol: float = 1e-2) -> bool:
    """Heuristic: every value finite and in ``[0, 1]`` and every slice along ``axis`` sums to 1.

    Both checks use the tolerance ``atol`` (default 1e-2, loose enough for float16 softmax outputs).
    Empty or non-numeric arrays are not probabilities. Used so outputs that already went through a
    softmax are not softmaxed a second time.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf" and is_float_dtype(arr.dtype):
        arr = arr.astype(np.float32)
    if arr.dtype.kind not in "biuf" or arr.ndim == 0 or arr.size == 0:
        return False
    if not -arr.ndim <= axis < arr.ndim:
        return False
    return bool(remembered("is_probability", arr, (axis, atol), lambda: bool(
        np.all(probability_slices(arr.astype(np.float64, copy=False), axis, atol)))))


def probability_slices(a: FloatArray, axis: int = 1, atol: float = 1e-2) -> BoolArray:
    """Per slice of ``a`` along ``axis``: every value finite and in ``[0, 1]`` and the slice summing to 1,
    both within ``atol`` (:func:`is_probability` of each slice; ``[N, C]`` rows: one flag per row)."""
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(a), axis=axis) & (np.min(a, axis=axis) >= -atol) & (np.max(a, axis=axis) <= 1.0 + atol)
        out: BoolArray = ok & (np.abs(np.sum(a, axis=axis) - 1.0) <= atol)
    return out


def _dim(d: object) -> int | None:
    """A known dimension as int; symbolic (str), missing (None) or negative dims are unknown."""
    if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0:
        return int(d)
    return None


def detect_task(shape: Sequence[int | str | None], dtype: DTypeLike | None = None) -> Task:
    """Guess what a model output is from its shape (and optionally its dtype).

    * ``[N, C]`` with ``C >= 2`` (or unknown): classification; ``[N, C, 1, 1]`` likewise.
    * ``[N, C, H, W]`` with ``C >= 2`` (or unknown): segmentation logits; ``[N, 1, H, W]`` with an
      integer dtype: a label map kept with its channel axis, also segmentation.
    * ``[N, H, W]``: a label map, segmentation -- unless ``dtype`` is given and is a float type.
    * Everything else: regression.

    Symbolic or unknown dimensions (``str``/``None``/negative, as in ONNX shapes) count as "large".
    """
    dims = [_dim(d) for d in shape]
    is_int = dtype is not None and np.dtype(dtype).kind in "biu"
    is_float_like = dtype is not None and not is_int

    def many(d: int | None) -> bool:
        return d is None or d >= 2

    if len(dims) == 2:
        return "classification" if many(dims[1]) else "regression"
    if len(dims) == 4:
        c, h, w = dims[1], dims[2], dims[3]
        if h == 1 and w == 1 and many(c):
            return "classification"
        if many(c):
            return "segmentation"
        if c == 1 and is_int:
            return "segmentation"
        return "regression"
    if len(dims) == 3:
        return "regression" if is_float_like else "segmentation"
    return "regression"


# --------------------------------------------------------------------------------------------------
# Output layouts: where an output's decision is
# --------------------------------------------------------------------------------------------------


def task_family(task: str | None) -> str | None:
    """The family of a ``--task`` value: ``ctc`` and ``tokens`` (readings of a sequence output) are
    ``sequence``; an unknown task is an :class:`OnnxfiError` naming the choices."""
    if task is None:
        return None
    if task.startswith(TASK_PLUGIN_PREFIX):  # detection:module:function, a user's decoder (--decoder)
        return "detection"
    if task not in TASKS:
        raise OnnxfiError(f"unknown task {task!r} (use {', '.join(TASKS)})")
    return "sequence" if task in ("ctc", "tokens") else task


def is_sequence_scores(arr: NDArray[Any]) -> bool:
    """Float ``[N, T, C]`` (C >= 2) whose every step is a probability row over C (a softmax over classes)."""
    return (arr.dtype.kind not in "biu" and arr.ndim == 3 and arr.shape[2] >= 2 and arr.size > 0
            and is_probability(arr, axis=2))


def _sequence_layout(arr: NDArray[Any], task: str) -> Layout:
    if arr.dtype.kind in "biu" or arr.ndim != 3 or arr.shape[2] < 2:
        raise OnnxfiError(f"an output of shape {list(arr.shape)} ({arr.dtype}) cannot be read as a sequence "
                          "(per-step class scores [N, T, C])")
    if task == "tokens":
        return "tokens"
    if task == "ctc":
        return "ctc-last" if ctc_blank_layout(arr) == "ctc-last" else "ctc"
    raise OnnxfiError(f"an output [N, T, C] of per-step class scores {list(arr.shape)} reads as a CTC sequence "
                      "(--task ctc: greedy decode, repeats collapsed, blank dropped) or as one class per step "
                      "(--task tokens); choose one")


def layout_task(layout: str) -> Task:
    """The task a layout belongs to: ``classes``/``ids`` classification, ``raw`` regression, ``ctc``/``tokens``
    sequence, a decoder's (``det-yolo``, ``det:module:function``, :mod:`onnxfi.detection`) detection, the rest
    segmentation."""
    if is_detection_layout(layout):
        return "detection"
    try:
        return _LAYOUT_TASKS[layout]
    except KeyError:
        raise OnnxfiError(f"unknown output layout {layout!r} (use {', '.join(LAYOUTS)})") from None


def _in_unit_interval(arr: NDArray[Any]) -> bool:
    a = arr[np.isfinite(arr)]
    return bool(a.size) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def infer_layout(x: ArrayLike, task: str | None = None) -> Layout:
    """The layout of a (fault-free) output from its shape, dtype and values: the shape rules.

    * float ``[N, C]`` with ``C >= 2`` or ``[N, C, 1, 1]``: ``classes``; integer ``[N]`` or ``[N, 1]``: ``ids``.
    * float ``[N, A, B, D]`` with one channel (``D == 1``: ``mask-nhwc``, else ``A == 1``: ``mask-nchw``): a
      binary mask when every finite value lies in [0, 1] (a sigmoid output), else ``raw`` (a depth map, an
      image). Several channels: segmentation scores, ``nchw`` when they are probabilities along axis 1,
      ``nhwc`` when along axis 3, else ``nhwc`` when ``D`` is smaller than both ``A`` and ``B`` (as in
      ``[1, 256, 256, 21]``) and ``nchw`` otherwise (ONNX's default layout).
    * integer ``[N, H, W]``, ``[N, 1, H, W]`` or ``[N, H, W, 1]``: ``labelmap``.
    * float ``[N, T, C]`` whose every step is a probability row (a softmax over C >= 2 classes): a sequence,
      which the shape cannot tell between CTC and per-token classes, so an :class:`OnnxfiError` asks for
      ``task`` ``ctc`` or ``tokens`` (:mod:`onnxfi.sequence`; ``ctc`` picks ``ctc`` / ``ctc-last`` by the
      blank's evidence, :func:`onnxfi.sequence.ctc_blank_layout`).
    * anything else (float ``[N, H, W]`` and ``[N, T, C]`` logits included): ``raw``.

    ``task`` forces the family: ``regression`` is always ``raw``; ``sequence``, ``ctc`` and ``tokens`` read
    float ``[N, T, C]``; ``classification`` takes ``[N, C]`` /
    ``[N, C, 1, 1]`` scores or integer ids; ``segmentation`` reads any one-channel float output as a mask
    (float ``[N, H, W]`` too) and ``[N, C, 1, 1]`` as ``nchw``. A shape that the forced task cannot read
    raises :class:`OnnxfiError`.
    """
    arr = _numeric(x, "output")
    family = task_family(task)
    if task == "regression":
        return "raw"
    if family == "detection":
        raise OnnxfiError("a detector's outputs are read together by a decoder (onnxfi.detection), not one by one")
    if family == "sequence" or (task is None and is_sequence_scores(arr)):
        return _sequence_layout(arr, task or "sequence")
    shape = arr.shape
    is_int = arr.dtype.kind in "biu"
    layout: Layout = "raw"
    if not is_int and ((arr.ndim == 2 and shape[1] >= 2) or (arr.ndim == 4 and shape[1] >= 2 and shape[2:] == (1, 1))):
        layout = "nchw" if task == "segmentation" and arr.ndim == 4 else "classes"
    elif is_int and (arr.ndim == 1 or arr.ndim == 2 and shape[1] == 1):
        layout = "ids"
    elif is_int and (arr.ndim == 3 or arr.ndim == 4 and 1 in (shape[1], shape[3])):
        layout = "labelmap"
    elif not is_int and arr.ndim == 4:
        if shape[3] == 1 or shape[1] == 1:
            mask: Layout = "mask-nhwc" if shape[3] == 1 else "mask-nchw"
            layout = mask if task == "segmentation" or _in_unit_interval(arr) else "raw"
        elif is_probability(arr, axis=1):
            layout = "nchw"
        elif is_probability(arr, axis=3):
            layout = "nhwc"
        else:
            layout = "nhwc" if shape[3] < shape[1] and shape[3] < shape[2] else "nchw"
    elif not is_int and arr.ndim == 3 and task == "segmentation":
        layout = "mask"
    if family is not None and layout_task(layout) != family:
        raise OnnxfiError(f"an output of shape {list(shape)} ({arr.dtype}) cannot be read as {task}")
    return layout


def mask_threshold(golden: ArrayLike) -> float:
    """The threshold of a binary mask, from the fault-free output: 0.5 when every finite value lies in
    [0, 1] (probabilities), else 0 (logits: sigmoid(0) = 0.5, the same decision). A pixel is 1 when its
    value is above the threshold."""
    return 0.5 if _in_unit_interval(_numeric(golden, "golden")) else 0.0


def _squeeze_channel(arr: NDArray[Any], layout: str) -> NDArray[Any]:
    if layout == "mask-nchw" and arr.ndim == 4 and arr.shape[1] == 1:
        return arr[:, 0]
    if layout == "mask-nhwc" and arr.ndim == 4 and arr.shape[3] == 1:
        return arr[..., 0]
    if layout == "labelmap" and arr.ndim == 4:
        if arr.shape[1] == 1:
            return arr[:, 0]
        if arr.shape[3] == 1:
            return arr[..., 0]
    if layout in ("mask", "labelmap") and arr.ndim == 3:
        return arr
    raise OnnxfiError(f"output of shape {list(arr.shape)} does not have the {layout} layout")


_MEMO: dict[str, list[tuple[Any, Any, Any]]] = {}


def remembered(what: str, arr: Any, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()`` remembered for the last 4 arrays per ``what`` by the array's identity (and ``key``),
    most recently used first: one experiment's classification reads the class map of its output and of the
    golden output several times (outcome, metrics, task metric), and the golden output and the labels are
    the same arrays for every experiment of a site (a segmentation output of 256 images x 64 x 64 pixels
    took 23 ms per argmax). The array is held while remembered, so its id is not reused; results are made
    read-only. Arrays passed here are outputs and labels, which nothing changes in place."""
    memo = _MEMO.setdefault(what, [])
    for i, (a, k, res) in enumerate(memo):
        if a is arr and k == key:
            if i:
                memo.insert(0, memo.pop(i))
            return res
    res = compute()
    for r in res if isinstance(res, tuple) else (res,):
        if isinstance(r, np.ndarray):
            r.flags.writeable = False
    memo.insert(0, (arr, key, res))
    del memo[4:]
    return res


def _class_argmax(arr: NDArray[Any], axis: int) -> IntArray:
    """``np.argmax(arr, axis)`` as int64 (remembered: see :func:`remembered`)."""
    out: IntArray = remembered("argmax", arr, axis, lambda: np.argmax(arr, axis=axis).astype(np.int64))
    return out


def decisions(x: ArrayLike, layout: str, threshold: float | None = None) -> IntArray:
    """The decisions an output makes: class ids ``[N]`` (``classes``, ``ids``), per pixel ``[N, H, W]``, or
    per sequence ``[N, T]`` (:func:`onnxfi.sequence.decode`: ids first, -1 after).

    Scores use ``np.argmax`` over the class axis (NaN wins, first tie wins). A mask pixel is 1 above
    ``threshold`` (required for masks: pass :func:`mask_threshold` of the fault-free output, so a faulty
    output is read with the same threshold) and -1 where it is NaN; a float label map's entries that are
    not whole finite numbers are -1. -1 is never a valid class.
    """
    if layout == "classes":
        return top1(x)
    arr = _numeric(x, "output")
    if layout == "ids":
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise OnnxfiError(f"class ids: expected shape [N], got {list(arr.shape)}")
        return _label_map_values(arr)
    if layout in ("nchw", "nhwc"):
        if arr.ndim != 4:
            raise OnnxfiError(f"{layout} scores: expected 4 dimensions, got {list(arr.shape)}")
        return _class_argmax(arr, 1 if layout == "nchw" else 3)
    if layout in MASK_LAYOUTS:
        if threshold is None:
            raise ValueError("decisions: a mask layout needs the threshold of the fault-free output")
        m = _squeeze_channel(arr, layout)
        with np.errstate(invalid="ignore"):
            bits = (m > threshold).astype(np.int64)
        bits[np.isnan(m)] = -1
        return bits
    if layout == "labelmap":
        return _label_map_values(_squeeze_channel(arr, layout))
    if layout in SEQUENCE_LAYOUTS:
        if arr.ndim != 3:
            raise OnnxfiError(f"{layout} sequence scores: expected [N, T, C], got {list(arr.shape)}")
        out: IntArray = remembered("sequence", arr, layout, lambda: sequence.decode(arr, layout))
        return out
    raise OnnxfiError(f"an output with the {layout!r} layout makes no decisions")


def label_map_classes(*maps: ArrayLike) -> int:
    """The class count of label maps without logits: 1 + the largest id they hold, ignore ids (negative
    or :data:`IGNORE_ID`) left out; at least 1."""
    top = 0
    for x in maps:
        ids = _label_map_values(_numeric(x, "label map")).reshape(-1)
        ids = ids[(ids >= 0) & (ids != IGNORE_ID)]
        if ids.size:
            top = max(top, int(ids.max()) + 1)
    return max(1, top)


def layout_classes(x: ArrayLike, layout: str) -> int | None:
    """The class count an output's layout implies: C of scores, 2 for a mask, None for ids and label maps."""
    shape = np.shape(x)
    if layout in ("classes", "nchw"):
        return int(shape[1])
    if layout in SEQUENCE_LAYOUTS:
        return int(shape[2])
    if layout == "nhwc":
        return int(shape[3])
    if layout in MASK_LAYOUTS:
        return 2
    return None


# --------------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------------


def top1(x: ArrayLike) -> IntArray:
    """Index of the largest score per row of ``[N, C]`` scores (``np.argmax``: NaN wins, first tie wins)."""
    s = _scores(x, "scores")
    out: IntArray = np.asarray(np.argmax(s, axis=1), dtype=np.int64)
    return out


def topk_indices(x: ArrayLike, k: int) -> IntArray:
    """The ``min(k, C)`` best class indices per row, best first, in the module's NaN-aware order."""
    s = _scores(x, "scores")
    k = min(_positive_int(k, "k"), s.shape[1])
    nan = np.isnan(s)
    # lexsort: last key is primary. NaN first (in index order), then descending value, ties by index.
    order = np.lexsort((-np.where(nan, 0.0, s), ~nan), axis=1)
    return order[:, :k].astype(np.int64)


def topk_contains(x: ArrayLike, target: ArrayLike, k: int) -> BoolArray:
    """Whether ``target[i]`` is among the top ``min(k, C)`` classes of row ``i`` of ``[N, C]`` scores.

    Rank-based (no sort): the rank of the target is the number of classes ordered before it in the
    module's NaN-aware order, so this agrees exactly with ``topk_indices``.
    """
    s = _scores(x, "scores")
    n, c = s.shape
    t = _labels(target, n, c, "target")
    k = min(_positive_int(k, "k"), c)
    v = s[np.arange(n), t][:, None]
    before = np.arange(c)[None, :] < t[:, None]
    s_nan = np.isnan(s)
    with np.errstate(invalid="ignore"):
        beats_finite = s_nan | (s > v) | ((s == v) & before)
    beats = np.where(np.isnan(v), s_nan & before, beats_finite)
    rank = np.sum(beats, axis=1)
    out: BoolArray = rank < k
    return out


def sdc1_mask(faulty: ArrayLike, golden: ArrayLike) -> BoolArray:
    """Per sample: the faulty top-1 class differs from the golden top-1 class."""
    f = _scores(faulty, "faulty")
    g = _scores(golden, "golden")
    _same_shape(f, g, "sdc1_mask")
    out: BoolArray = top1(f) != top1(g)
    return out


def sdc5_mask(faulty: ArrayLike, golden: ArrayLike, k: int = 5) -> BoolArray:
    """Per sample: the golden top-1 class is not in the faulty top-``min(k, C)`` (k = 5 by default)."""
    f = _scores(faulty, "faulty")
    g = _scores(golden, "golden")
    _same_shape(f, g, "sdc5_mask")
    out: BoolArray = ~topk_contains(f, top1(g), k)
    return out


def accuracy(x: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples whose top-1 class equals the label (``nan`` for an empty batch)."""
    s = _scores(x, "scores")
    t = _labels(labels, s.shape[0], s.shape[1])
    return _mean(top1(s) == t)


def topk_accuracy(x: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Fraction of samples whose label is among the top ``min(k, C)`` classes (``nan`` for an empty batch)."""
    return _mean(topk_contains(x, labels, k))


def nonfinite_mask(x: ArrayLike) -> BoolArray:
    """Per sample (axis 0): whether any value is NaN or +-Inf -- the usual DUE signal."""
    arr = _numeric(x, "output")
    if arr.ndim == 0:
        raise OnnxfiError("output: expected a batch axis, got a scalar")
    finite = np.isfinite(arr)
    if arr.ndim > 1:
        finite = np.all(finite, axis=tuple(range(1, arr.ndim)))
    out: BoolArray = ~finite
    return out


def error_stats(faulty: ArrayLike, golden: ArrayLike, eps: float = 1e-8) -> dict[str, float]:
    """Element-wise deviation of ``faulty`` from ``golden`` (any shape, computed in float64).

    ``max_abs``/``mean_abs`` are over ``|f - g|``; ``max_rel``/``mean_rel`` over ``|f - g| / (|g| + eps)``
    (``eps`` keeps golden zeros from dividing by zero). These four are taken only over positions where
    *both* values are finite, and are ``nan`` when there is no such position. Non-finite values are
    reported separately: ``nan_frac`` and ``inf_frac`` are the fractions of faulty elements that are NaN
    and +-Inf, ``finite_frac`` the fraction of positions the four statistics cover. So an output with an
    Inf shows ``inf_frac > 0`` instead of ``max_abs = inf`` hiding the size of the finite deviations.
    A finite difference that overflows float64 is reported as ``inf``.
    """
    f = _numeric(faulty, "faulty")
    g = _numeric(golden, "golden")
    _same_shape(f, g, "error_stats")
    flat_f, flat_g = f.reshape(-1), g.reshape(-1)
    count = n_nan = n_inf = 0
    sum_abs = sum_rel = 0.0
    max_abs = max_rel = -np.inf
    # Chunked so a large segmentation output is never copied to float64 as a whole.
    for start in range(0, flat_f.size, _CHUNK):
        fc = flat_f[start : start + _CHUNK].astype(np.float64)
        gc = flat_g[start : start + _CHUNK].astype(np.float64)
        n_nan += int(np.count_nonzero(np.isnan(fc)))
        n_inf += int(np.count_nonzero(np.isinf(fc)))
        both = np.isfinite(fc) & np.isfinite(gc)
        if not np.any(both):
            continue
        gv = gc[both]
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.abs(fc[both] - gv)
            rel = d / (np.abs(gv) + eps)
            sum_abs += float(np.sum(d))
            sum_rel += float(np.sum(rel))
        max_abs = max(max_abs, float(np.max(d)))
        max_rel = max(max_rel, float(np.max(rel)))
        count += d.size
    nan = float("nan")
    total = flat_f.size
    return {
        "max_abs": max_abs if count else nan,
        "mean_abs": sum_abs / count if count else nan,
        "max_rel": max_rel if count else nan,
        "mean_rel": sum_rel / count if count else nan,
        "nan_frac": n_nan / total if total else nan,
        "inf_frac": n_inf / total if total else nan,
        "finite_frac": count / total if total else nan,
    }


def error_stats_rows(faulty: np.ndarray, golden: np.ndarray, eps: float = 1e-8) -> dict[str, list[float]]:
    """:func:`error_stats` of each sample (first axis) of ``faulty`` against ``golden``, vectorized over the
    samples (a batch of one-sample experiments); a list per statistic. Samples of more than :data:`_CHUNK`
    values may differ from :func:`error_stats` in the last bit of the means (it sums in chunks)."""
    n = faulty.shape[0]
    fc = _numeric(faulty, "faulty").reshape(n, -1).astype(np.float64)
    gc = _numeric(golden, "golden").reshape(n, -1).astype(np.float64)
    total = fc.shape[1]
    n_nan = np.count_nonzero(np.isnan(fc), axis=1)
    n_inf = np.count_nonzero(np.isinf(fc), axis=1)
    both = np.isfinite(fc) & np.isfinite(gc)
    count = np.count_nonzero(both, axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.where(both, np.abs(fc - gc), 0.0)
        rel = d / (np.abs(gc) + eps)
        rel = np.where(both, rel, 0.0)
        sum_abs, sum_rel = np.sum(d, axis=1), np.sum(rel, axis=1)
    max_abs = np.where(both, d, -np.inf).max(axis=1)
    max_rel = np.where(both, rel, -np.inf).max(axis=1)
    nan = float("nan")
    out: dict[str, list[float]] = {k: [] for k in
                                   ("max_abs", "mean_abs", "max_rel", "mean_rel", "nan_frac", "inf_frac", "finite_frac")}
    for i in range(n):
        k = int(count[i])
        out["max_abs"].append(float(max_abs[i]) if k else nan)
        out["mean_abs"].append(float(sum_abs[i]) / k if k else nan)
        out["max_rel"].append(float(max_rel[i]) if k else nan)
        out["mean_rel"].append(float(sum_rel[i]) / k if k else nan)
        out["nan_frac"].append(int(n_nan[i]) / total if total else nan)
        out["inf_frac"].append(int(n_inf[i]) / total if total else nan)
        out["finite_frac"].append(k / total if total else nan)
    return out


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


def _label_map(x: ArrayLike, name: str) -> tuple[IntArray, int | None]:
    """See :func:`_label_map_of` (remembered by the array's identity, see :func:`remembered`)."""
    if isinstance(x, np.ndarray):
        out: tuple[IntArray, int | None] = remembered("label_map", x, name, lambda: _label_map_of(x, name))
        return out
    return _label_map_of(x, name)


def _label_map_of(x: ArrayLike, name: str) -> tuple[IntArray, int | None]:
    """A ``[N, H, W]`` int64 label map and, when ``x`` was ``[N, C, H, W]`` logits, ``C``.

    Logits are reduced with ``np.argmax`` over C. Integer ``[N, 1, H, W]`` is a label map with a kept
    channel axis. Float label maps are allowed; entries that are not whole finite numbers (e.g. after a
    fault) become -1, an id that is never a valid class.
    """
    arr = _numeric(x, name)
    if arr.ndim == 4:
        if arr.shape[1] == 1 and arr.dtype.kind in "biu":
            arr = arr[:, 0]
        elif arr.shape[1] < 2:
            raise OnnxfiError(f"{name}: segmentation logits need at least 2 channels, got {list(arr.shape)}")
        else:
            return _class_argmax(arr, 1), int(arr.shape[1])
    if arr.ndim != 3:
        raise OnnxfiError(
            f"{name}: expected segmentation logits [N, C, H, W] or a label map [N, H, W], got {list(arr.shape)}"
        )
    return _label_map_values(arr), None


def _label_map_values(arr: NDArray[Any]) -> IntArray:
    """Class ids as int64; float entries that are not whole finite numbers (e.g. after a fault) become -1."""
    if is_float_dtype(arr.dtype):
        a = arr.astype(np.float64, copy=False)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(a) & (a == np.round(a)) & (np.abs(a) < _MAX_LABEL)
        out: IntArray = np.where(ok, a, -1.0).astype(np.int64)
        return out
    if arr.dtype == np.uint64:
        # ids beyond int64 would wrap to negative numbers; they are invalid anyway
        arr = np.minimum(arr, np.uint64(2**62))
    return arr.astype(np.int64)


def _resolve_segmentation(
    pred: ArrayLike, target: ArrayLike, num_classes: int | None
) -> tuple[IntArray, IntArray, int | None]:
    p, cp = _label_map(pred, "pred")
    t, ct = _label_map(target, "target")
    _same_shape(p, t, "segmentation pred/target label maps")
    channels = {c for c in (cp, ct) if c is not None}
    if len(channels) > 1:
        raise OnnxfiError(f"pred and target logits have different class counts: {sorted(channels)}")
    inferred = channels.pop() if channels else None
    if num_classes is not None:
        num_classes = _positive_int(num_classes, "num_classes")
        if inferred is not None and inferred != num_classes:
            raise OnnxfiError(f"num_classes={num_classes} but the logits have {inferred} channels")
        return p, t, num_classes
    return p, t, inferred


def _confusion_full(pred: IntArray, target: IntArray, k: int) -> IntArray:
    """``[K, K + 1]`` counts, rows = target class, columns = predicted class, last column = invalid prediction.

    Pixels whose target is outside ``[0, K)`` (e.g. 255 or -1 "ignore" ids) are skipped.
    """
    valid = (target >= 0) & (target < k)
    t = target[valid]
    p = pred[valid]
    p = np.where((p >= 0) & (p < k), p, k)
    counts = np.bincount(t * (k + 1) + p, minlength=k * (k + 1))
    return counts.reshape(k, k + 1).astype(np.int64)


def _need_classes(k: int | None) -> int:
    if k is None:
        raise OnnxfiError("num_classes is required when neither pred nor target is [N, C, H, W] logits")
    return k


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int | None = None) -> IntArray:
    """``[K, K]`` pixel counts: ``cm[t, p]`` = pixels of target class ``t`` predicted as ``p``.

    ``pred``/``target`` are ``[N, C, H, W]`` logits (argmax over C) or ``[N, H, W]`` label maps.
    ``num_classes`` may be left out when either is logits. Target pixels outside ``[0, K)`` are ignored;
    predictions outside ``[0, K)`` appear in no column (they still count as misses in ``miou``).
    """
    p, t, k = _resolve_segmentation(pred, target, num_classes)
    k = _need_classes(k)
    return _confusion_full(p, t, k)[:, :k].copy()


def miou(
    pred: ArrayLike, target: ArrayLike, num_classes: int | None = None, ignore_absent: bool = True
) -> float:
    """Mean intersection-over-union over classes, pooled over the whole batch.

    IoU_c = TP / (TP + FP + FN). With ``ignore_absent`` (default) the mean is over the classes present in
    the target or the prediction (``nan`` if none); otherwise over all ``num_classes``, with an absent
    class scoring 1.0 (nothing to get wrong), so ``miou(x, x)`` is 1 either way. Predictions outside
    ``[0, K)`` are false negatives for the target class; target pixels outside ``[0, K)`` are ignored.
    """
    p, t, k = _resolve_segmentation(pred, target, num_classes)
    k = _need_classes(k)
    cm = _confusion_full(p, t, k)
    tp = np.diag(cm[:, :k]).astype(np.float64)
    union = cm.sum(axis=1) + cm[:, :k].sum(axis=0) - tp
    present = union > 0
    iou = np.divide(tp, union, out=np.ones(k, dtype=np.float64), where=present)
    if ignore_absent:
        return _mean(iou[present])
    return _mean(iou)


def pixel_accuracy(pred: ArrayLike, target: ArrayLike, num_classes: int | None = None) -> float:
    """Fraction of target pixels whose predicted class equals the target class.

    Target pixels outside ``[0, K)`` are ignored when the class count K is known (``num_classes`` or
    logits); otherwise only negative target ids are ignored. ``nan`` when no pixel is left.
    """
    p, t, k = _resolve_segmentation(pred, target, num_classes)
    valid = t >= 0
    if k is not None:
        valid &= t < k
    return _mean(p[valid] == t[valid])


# --------------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------------


def predictive_entropy(probs: ArrayLike, axis: int = 1) -> FloatArray:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0); NaN/negative probabilities give NaN."""
    p = _as_float(probs, "probs")
    if p.ndim < 2:
        raise OnnxfiError(f"probs: expected [N, C, ...], got shape {list(p.shape)}")
    ax = _axis(axis, p.ndim, "probs")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        terms = np.where(p == 0.0, 0.0, p * np.log(p))
    out: FloatArray = -np.sum(terms, axis=ax)
    return out


def mean_entropy(probs: ArrayLike, axis: int = 1) -> float:
    """Mean predictive entropy over samples (and pixels), skipping non-finite entropies; ``nan`` if none."""
    return _finite_mean(predictive_entropy(probs, axis))


def max_softmax_probability(probs: ArrayLike, axis: int = 1) -> FloatArray:
    """Confidence (maximum probability) along ``axis``; a NaN anywhere in the slice gives NaN."""
    p = _as_float(probs, "probs")
    if p.ndim < 2:
        raise OnnxfiError(f"probs: expected [N, C, ...], got shape {list(p.shape)}")
    ax = _axis(axis, p.ndim, "probs")
    if p.shape[ax] == 0:
        raise OnnxfiError("probs: no classes")
    out: FloatArray = np.max(p, axis=ax)
    return out


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error of ``[N, C]`` probabilities (Guo et al., 2017).

    Confidence = max probability, prediction = its argmax. Samples go to ``n_bins`` equal-width bins
    ``(i/B, (i+1)/B]`` (a confidence of exactly 0 goes to the first bin, above 1 to the last), and
    ECE = sum_b (n_b / N) * |accuracy_b - mean confidence_b|. Rows holding NaN/Inf have no meaningful
    confidence and are left out (N counts only the finite rows; DUE is reported separately). ``nan``
    when no finite row is left. The probabilities are used as given, not renormalised.
    """
    s = _scores(probs, "probs")
    t = _labels(labels, s.shape[0], s.shape[1])
    bins = _positive_int(n_bins, "n_bins")
    ok = np.all(np.isfinite(s), axis=1)
    s, t = s[ok], t[ok]
    n = s.shape[0]
    if n == 0:
        return float("nan")
    conf = np.max(s, axis=1)
    correct = (np.argmax(s, axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    sum_conf = np.bincount(b, weights=conf, minlength=bins)
    sum_acc = np.bincount(b, weights=correct, minlength=bins)
    # (n_b / N) * |acc_b - conf_b| == |sum_acc_b - sum_conf_b| / N
    return float(np.sum(np.abs(sum_acc - sum_conf)) / n)


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def _probabilities(output: FloatArray, golden: FloatArray) -> FloatArray:
    """``output`` as probabilities: as is when the golden output already is one, else softmaxed.

    The decision is taken on the golden (fault-free) output so a corrupted row cannot flip it.
    """
    if is_probability(golden, axis=1):
        return output
    return softmax(output, axis=1)


def classification_metrics(
    output: ArrayLike, golden: ArrayLike, labels: ArrayLike | None = None
) -> dict[str, float]:
    """See :func:`classification_parts` (the numbers alone)."""
    return classification_parts(output, golden, labels)[0]


def classification_parts(
    output: ArrayLike, golden: ArrayLike, labels: ArrayLike | None = None
) -> tuple[dict[str, float], BoolArray, BoolArray]:
    """Every per-experiment classification number for one faulty ``output`` against its ``golden`` run.

    Keys (all plain floats, fractions are over the N samples):

    * ``n``, ``num_classes``;
    * ``due_frac``: samples whose output holds NaN/Inf (detected unrecoverable error);
    * ``sdc1_frac`` / ``sdc5_frac``: samples with a finite output whose top-1 differs from golden / whose
      golden top-1 left the top-5 (top-C when C < 5). DUE samples are not counted as SDC;
    * ``golden_agreement``: samples whose top-1 equals golden's (all samples, ``np.argmax`` order);
    * ``mean_entropy`` / ``mean_msp``: of the output probabilities over the finite samples. Outputs are
      softmaxed first unless the golden output already is a probability distribution;
    * ``err_*``: :func:`error_stats` of the raw outputs (``err_max_abs``, ``err_nan_frac``, ...);
    * with ``labels``: ``accuracy``, ``top5_accuracy`` (top-min(5, C)), ``ece`` (15 bins, finite samples).

    Accuracy uses the ``np.argmax`` order on every sample, DUE ones included (an all-NaN row predicts
    class 0), matching what a framework's argmax would report; use ``due_frac`` to separate them.

    Also returns the per-sample masks :func:`sdc1_mask` and :func:`sdc5_mask` it computed (DUE samples
    included), so a caller needs not compute them again.
    """
    f = _scores(output, "output")
    g = _scores(golden, "golden")
    _same_shape(f, g, "classification_metrics output/golden")
    n, c = f.shape
    due = nonfinite_mask(f)
    ok = ~due
    mismatch1 = sdc1_mask(f, g)
    mismatch5 = sdc5_mask(f, g)
    probs = _probabilities(f, g)
    result: dict[str, float] = {
        "n": float(n),
        "num_classes": float(c),
        "due_frac": _mean(due),
        "sdc1_frac": _mean(mismatch1 & ok),
        "sdc5_frac": _mean(mismatch5 & ok),
        "golden_agreement": _mean(~mismatch1),
        "mean_entropy": _finite_mean(predictive_entropy(probs[ok])),
        "mean_msp": _finite_mean(max_softmax_probability(probs[ok])),
    }
    if labels is not None:
        t = _labels(labels, n, c)
        result["accuracy"] = accuracy(f, t)
        result["top5_accuracy"] = topk_accuracy(f, t, 5)
        result["ece"] = expected_calibration_error(probs[ok], t[ok])
    for key, value in error_stats(f, g).items():
        result[f"err_{key}"] = value
    return result, mismatch1, mismatch5


def segmentation_metrics(
    output: ArrayLike,
    golden: ArrayLike,
    labels: ArrayLike | None = None,
    num_classes: int | None = None,
    layout: str | None = None,
) -> dict[str, float]:
    """Every per-experiment segmentation number for one faulty ``output`` against its ``golden`` run.

    ``output``/``golden`` are ``[N, C, H, W]`` logits or ``[N, H, W]`` label maps; ``labels`` a label map.
    ``layout`` (see :data:`LAYOUTS`) reads other outputs: ``nhwc`` scores, a binary mask (``mask-nchw``,
    ``mask-nhwc``, ``mask``: 2 classes, thresholded at :func:`mask_threshold` of ``golden``) or an integer
    ``labelmap`` with a channel axis of 1; left out, the shape decides as described above.
    The class count comes from ``num_classes``, else the logits' C (2 for a mask), else ``max(golden label map) + 1``.

    Keys (plain floats):

    * ``n``, ``num_classes``, ``due_frac`` (images whose output holds NaN/Inf);
    * ``miou``, ``pixel_accuracy``: against ``labels`` when given, else against the golden argmax;
    * ``pixel_change_frac``: pixels whose class differs from golden (all images);
    * ``sdc_frac``: images with a finite output and at least one pixel changed;
    * when output and golden are both logits: ``mean_entropy`` and ``mean_msp`` per pixel over the finite
      images (softmax over C unless golden already is probabilities) and the ``err_*``
      :func:`error_stats` of the raw outputs; for a mask, the ``err_*`` statistics.
    """
    out_arr = _numeric(output, "output")
    gold_arr = _numeric(golden, "golden")
    raw_out, raw_gold = out_arr, gold_arr  # what DUE and the mask's error statistics are taken from
    if layout == "nhwc":
        out_arr, gold_arr = np.moveaxis(out_arr, -1, 1), np.moveaxis(gold_arr, -1, 1)
    elif layout in MASK_LAYOUTS or layout == "labelmap":
        threshold = mask_threshold(gold_arr) if layout in MASK_LAYOUTS else None
        out_arr, gold_arr = decisions(out_arr, layout, threshold), decisions(gold_arr, layout, threshold)
        if layout in MASK_LAYOUTS and num_classes is None:
            num_classes = 2
    elif layout not in (None, "nchw"):
        raise OnnxfiError(f"segmentation_metrics: {layout!r} is not a segmentation layout")
    pred, c_out = _label_map(out_arr, "output")
    gold, c_gold = _label_map(gold_arr, "golden")
    _same_shape(pred, gold, "segmentation_metrics output/golden label maps")
    if c_out is not None and c_gold is not None and c_out != c_gold:
        raise OnnxfiError(f"output has {c_out} channels but golden has {c_gold}")
    channels = c_out or c_gold
    if num_classes is not None and channels is not None and num_classes != channels:
        raise OnnxfiError(f"num_classes={num_classes} but the logits have {channels} channels")
    k = num_classes if num_classes is not None else channels
    if k is None:
        if gold.size == 0 or gold.max() < 0:
            raise OnnxfiError(
                "num_classes is required: it cannot be inferred from label maps without classes"
            )
        k = int(gold.max()) + 1
    k = _positive_int(k, "num_classes")
    reference = gold
    if labels is not None:
        reference, c_lab = _label_map(labels, "labels")
        _same_shape(pred, reference, "segmentation_metrics output/labels label maps")
        if c_lab is not None and c_lab != k:
            raise OnnxfiError(f"labels have {c_lab} channels but num_classes is {k}")
    n = pred.shape[0]
    due = nonfinite_mask(raw_out)
    ok = ~due
    changed = pred != gold
    changed_per_image = np.any(changed.reshape(n, -1), axis=1) if n else np.zeros(0, dtype=bool)
    result: dict[str, float] = {
        "n": float(n),
        "num_classes": float(k),
        "due_frac": _mean(due),
        "miou": miou(pred, reference, k),
        "pixel_accuracy": pixel_accuracy(pred, reference, k),
        "pixel_change_frac": _mean(changed),
        "sdc_frac": _mean(changed_per_image & ok),
    }
    if c_out is not None and c_gold is not None:
        already_probs = is_probability(gold_arr, axis=1)
        ent_sum = msp_sum = 0.0
        ent_count = msp_count = 0
        # A group of images at a time (about 2 MB of float64, cache-sized): a copy of a whole [N, C, H, W] batch can be
        # gigabytes, and one image at a time costs a Python round per image. Sums are taken per image.
        good = np.flatnonzero(ok)
        group = max(1, 2**18 // max(1, int(np.prod(out_arr.shape[1:]))))
        for g0 in range(0, len(good), group):
            idx = good[g0:g0 + group]
            images = out_arr[idx].astype(np.float64)
            probs = images if already_probs else softmax(images, axis=1)
            ents = predictive_entropy(probs, axis=1)
            msps = max_softmax_probability(probs, axis=1)
            for ent, msp in zip(ents, msps):
                ent, msp = ent[np.isfinite(ent)], msp[np.isfinite(msp)]
                ent_sum += float(np.sum(ent))
                msp_sum += float(np.sum(msp))
                ent_count += ent.size
                msp_count += msp.size
        result["mean_entropy"] = ent_sum / ent_count if ent_count else float("nan")
        result["mean_msp"] = msp_sum / msp_count if msp_count else float("nan")
        for key, value in error_stats(out_arr, gold_arr).items():
            result[f"err_{key}"] = value
    elif layout in MASK_LAYOUTS:
        for key, value in error_stats(raw_out, raw_gold).items():
            result[f"err_{key}"] = value
    return result
