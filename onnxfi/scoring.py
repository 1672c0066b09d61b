"""Which model output is scored, and how it is read: evidence (labels on the clean run) or shape rules.

:func:`choose_output` is the one place every command picks the output whose decisions are scored
(``analyze``/``gate`` through the engine, ``run``, ``harden``, ``compare``):

1. ``--output NAME`` wins. An unknown name is an :class:`OnnxfiError` listing the outputs with shapes.
2. With labels, every output whose shape can carry them is scored against them on the clean run, and
   the best agreement wins (evidence, not position). Labels ``[N]`` / ``[N, 1]`` (class ids) fit class
   scores ``[N, C]`` / ``[N, C, 1, 1]`` with every label below C, and integer class ids ``[N]``. Label
   maps ``[N, H, W]`` (or ``[N, 1, H, W]``) fit segmentation scores ``[N, C, H, W]`` (NCHW) or
   ``[N, H, W, C]`` (NHWC) with C >= 2
   above every label, a one-channel output ``[N, 1, H, W]`` / ``[N, H, W, 1]`` / ``[N, H, W]`` as a binary
   mask when the labels are 0/1 (threshold: :func:`onnxfi.metrics.mask_threshold`, 0.5 when the clean
   values lie in [0, 1], else 0 for logits) and an integer label map of the labels' shape. Label ids
   that are negative or 255 are "ignore" pixels. The score is the task metric on the clean run:
   accuracy for class ids, mIoU for label maps. The choice and the runner-up are named with their
   scores in ``reason``. When the runner-up is within :data:`TIE_MARGIN` of the best and decides
   differently on some sample, the choice is ambiguous: an :class:`OnnxfiError` asks for ``--output``.
   Outputs that make the same decisions on every sample (logits and their softmax, scores and their
   argmax) are equivalent: scores are kept over masks over ids, then the earlier output.
   Labels ``[N, C]`` of one-hot or probability rows are read as the class ids of their argmax (said in
   ``reason``); they fit class scores with exactly C classes.
   Labels that fit no reading of the output (class ids outside ``[0, C)``, rows that are neither one-hot
   nor probabilities, label maps of another size) are an :class:`OnnxfiError` saying why, unless the
   output is read as raw values (regression), which labels do not score.
3. Without labels (or for a single output that no labels fit), the shape rules of
   :func:`onnxfi.metrics.infer_layout` read each output; a single output is always the one. Of several,
   the outputs whose values are probabilities (rows of class scores summing to 1, or a mask in [0, 1])
   come first, then any other output that makes decisions (class scores, segmentation scores, ids,
   label maps); raw outputs are never picked. Two in the first such group that decide differently, or
   none at all, is an :class:`OnnxfiError` asking for ``--output``, unless only raw outputs exist and exactly
   one of them holds the samples on its first axis (the others are states, e.g. an RNN's ``[layers, N, H]``):
   that one is read as raw values (regression).

``task`` (``--task``) restricts the reading to one family (classification, segmentation, regression).
:func:`plausibility` turns a clean metric at or below chance into a warning for the commands to print.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from onnxfi import detection, metrics, sequence
from onnxfi.bits import is_float_dtype
from onnxfi.errors import OnnxfiError

__all__ = ["TIE_MARGIN", "OutputChoice", "choose_output", "describe_outputs", "describe_shapes", "plausibility"]

# Two candidates whose label scores differ by less than this (absolute, accuracy or mIoU) tie.
TIE_MARGIN = 0.01

# Preference among outputs that make the same decisions: the richest reading first.
_RANK = {"classes": 0, "nchw": 0, "nhwc": 0, "mask-nchw": 1, "mask-nhwc": 1, "mask": 1, "ids": 2, "labelmap": 2}


@dataclass(frozen=True)
class OutputChoice:
    """The scored output: its name, task and layout (:data:`onnxfi.metrics.LAYOUTS`), why it was chosen,
    the runner-up, and the label score of every output that was scored (``metric`` names the score)."""

    name: str
    task: str
    layout: str
    reason: str
    runner_up: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    metric: str | None = None
    num_classes: int | None = None
    outputs: str = ""  # every output with its shape, as errors and warnings list them

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "layout": self.layout, "reason": self.reason,
                "runner_up": self.runner_up, "metric": self.metric,
                "scores": {k: _num(v) for k, v in self.scores.items()}}


@dataclass(frozen=True)
class _Candidate:
    name: str
    layout: str
    order: int
    score: float = math.nan
    num_classes: int | None = None


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _samples(outputs: Mapping[str, np.ndarray], labels: np.ndarray | None) -> int | None:
    if labels is not None and np.ndim(labels):
        return int(np.shape(labels)[0])
    firsts = Counter(int(np.shape(a)[0]) for a in outputs.values() if np.ndim(a))
    return firsts.most_common(1)[0][0] if firsts else None


def describe_outputs(outputs: Mapping[str, np.ndarray], samples: int | None = None) -> str:
    """``"boxes [N,4], scores [N,2]"``: every output with its shape, the sample axis written N."""
    items = []
    for name, arr in outputs.items():
        dims: list[object] = list(np.shape(arr))
        if dims and samples is not None and dims[0] == samples:
            dims[0] = "N"
        items.append((name, dims))
    return describe_shapes(items)


def describe_shapes(items: Iterable[tuple[str, Sequence[object] | None]]) -> str:
    """``"boxes [N,4], scores [N,2]"`` from (name, shape) pairs, e.g. a model's declared outputs (an unknown
    shape is ``[?]``)."""
    return ", ".join(f"{name} [{','.join(map(str, shape)) if shape is not None else '?'}]" for name, shape in items)


def _fmt(x: float) -> str:
    return f"{x:.4f}" if math.isfinite(x) else "nan"


# ---------------------------------------------------------------------------------------- with labels


def _labels(labels: np.ndarray) -> np.ndarray | None:
    """Labels as int64 class ids ``[N]`` or label maps ``[N, H, W]``; None when they are not class ids
    (regression targets, other shapes). One-hot or probability rows ``[N, C]`` give their argmax."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biuf" or arr.ndim == 0:
        return None
    if metrics.label_rows(arr) is not None:
        return metrics.class_ids(arr)
    if (arr.ndim == 2 or arr.ndim == 4) and arr.shape[1] == 1:  # [N, 1] ids, [N, 1, H, W] maps (as metrics reads them)
        arr = arr[:, 0]
    if arr.ndim not in (1, 2, 3):  # [N] class ids, [N, L] sequences (negative = padding), [N, H, W] label maps
        return None
    if is_float_dtype(arr.dtype):
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)) or np.any(np.abs(arr) > 2.0**53):
            return None
    return arr.astype(np.int64)


def _valid(labels: np.ndarray) -> np.ndarray:
    """Label ids that are not "ignore" (negative, or 255 in a label map)."""
    keep = labels >= 0
    if labels.ndim == 3:
        keep &= labels != metrics.IGNORE_ID
    return labels[keep]


def _sequence_fit(a: np.ndarray, labels: np.ndarray, task: str | None) -> str | None:
    """The sequence layout in which float ``[N, T, C]`` scores carry sequence labels ``[N, L]``, or None.
    ``ctc`` fits any L (its blank, 0 or C - 1, from the clean decisions); ``tokens`` needs L == T. With
    both possible and no ``task`` to say, the labels decide; a tie is an :class:`OnnxfiError`."""
    if not is_float_dtype(a.dtype) or a.ndim != 3 or a.shape[2] < 2:
        return None
    valid = _valid(labels)
    if valid.size and int(valid.max()) >= a.shape[2]:
        return None
    ctc = metrics.infer_layout(a, "ctc")
    tokens = labels.shape[1] == a.shape[1]
    if task == "ctc" or (task in (None, "sequence") and not tokens):
        return ctc
    if task == "tokens":
        return "tokens" if tokens else None
    if task not in (None, "sequence"):
        return None
    sc, st = _score(a, ctc, labels)[0], _score(a, "tokens", labels)[0]
    sc, st = (x if math.isfinite(x) else -1.0 for x in (sc, st))
    if abs(sc - st) < TIE_MARGIN:
        raise OnnxfiError(f"sequence labels {list(labels.shape)} score the output {list(a.shape)} alike as a CTC "
                          f"sequence (seq_accuracy {_fmt(sc)}) and as one class per step (token_accuracy "
                          f"{_fmt(st)}); choose --task ctc or --task tokens")
    return ctc if sc > st else "tokens"


def _label_layout(arr: np.ndarray, labels: np.ndarray, task: str | None, rows: int | None = None) -> str | None:
    """The layout in which ``arr`` carries ``labels`` (see the module docstring), or None. ``rows``: the
    labels came as one-hot / probability rows over that many classes."""
    a = np.asarray(arr)
    is_int = a.dtype.kind in "biu"
    is_float = is_float_dtype(a.dtype)
    n = labels.shape[0]
    if a.ndim == 0 or a.shape[0] != n:
        return None
    valid = _valid(labels)
    top = int(valid.max()) if valid.size else -1
    layout: str | None = None
    if labels.ndim == 2:
        layout = _sequence_fit(a, labels, task)
    elif labels.ndim == 1 and rows is not None:  # one-hot / probability rows: class scores of the same C
        if is_float and a.ndim in (2, 4) and a.shape[1] == rows and a.shape[2:] in ((), (1, 1)):
            layout = "classes" if top < a.shape[1] and valid.size == labels.size else None
    elif labels.ndim == 1:
        if is_float and ((a.ndim == 2 and a.shape[1] >= 2) or (a.ndim == 4 and a.shape[1] >= 2 and a.shape[2:] == (1, 1))):
            layout = "classes" if top < a.shape[1] and valid.size == labels.size else None
        elif is_int and (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
            layout = "ids"
    else:
        hw = labels.shape[1:]
        if a.shape in ((n, *hw), (n, 1, *hw), (n, *hw, 1)):
            if is_int:
                layout = "labelmap"
            elif is_float and top <= 1:
                layout = "mask" if a.ndim == 3 else ("mask-nchw" if a.shape[1] == 1 else "mask-nhwc")
        elif is_float and a.ndim == 4:
            nchw = a.shape[2:] == hw and a.shape[1] >= 2
            nhwc = a.shape[1:3] == hw and a.shape[3] >= 2
            if nchw and nhwc:  # [N, C, C, C]: the shape rules decide
                nchw = metrics.infer_layout(a) == "nchw"
                nhwc = not nchw
            if nchw and top < a.shape[1]:
                layout = "nchw"
            elif nhwc and top < a.shape[3]:
                layout = "nhwc"
    if layout is not None and task is not None and metrics.layout_task(layout) != metrics.task_family(task):
        return None
    return layout


def _score(arr: np.ndarray, layout: str, labels: np.ndarray) -> tuple[float, int | None]:
    """(the task metric of ``arr`` read as ``layout`` against ``labels`` on the clean run, class count)."""
    threshold = metrics.mask_threshold(arr) if layout in metrics.MASK_LAYOUTS else None
    with np.errstate(invalid="ignore"):
        pred = metrics.decisions(arr, layout, threshold)
    if labels.ndim == 1:
        k = metrics.layout_classes(arr, layout) or metrics.label_map_classes(labels)
        return (float(np.mean(pred == labels)) if labels.size else math.nan), k
    if labels.ndim == 2:
        return sequence.sequence_task_metric(arr, labels, layout, pred)[1], metrics.layout_classes(arr, layout)
    k = metrics.layout_classes(arr, layout) or metrics.label_map_classes(pred, labels)
    return metrics.miou(pred, labels, k), k


# ---------------------------------------------------------------------------------------- the choice


def _decisions(arr: np.ndarray, layout: str) -> np.ndarray:
    threshold = metrics.mask_threshold(arr) if layout in metrics.MASK_LAYOUTS else None
    with np.errstate(invalid="ignore"):
        return metrics.decisions(arr, layout, threshold)


def _same_decisions(outputs: Mapping[str, np.ndarray], a: _Candidate, b: _Candidate) -> bool:
    da, db = _decisions(outputs[a.name], a.layout), _decisions(outputs[b.name], b.layout)
    return da.shape == db.shape and bool(np.array_equal(da, db))


def _pick(
    outputs: Mapping[str, np.ndarray], ranked: list[_Candidate], close: list[_Candidate], listing: str,
    what: Callable[[_Candidate, _Candidate], str],
) -> tuple[_Candidate, list[_Candidate]]:
    """The best of ``ranked`` (best first) and its equivalents; ``close`` are those that tie with it. Ties
    that decide the same on every sample are equivalent (the richest reading wins); any other is an error
    (``what(a, b)`` says why the two tie)."""
    best = ranked[0]
    for c in close:
        if c is not best and not _same_decisions(outputs, best, c):
            raise OnnxfiError(
                f"cannot tell which output to score: {best.name!r} and {c.name!r} {what(best, c)}, and they "
                f"decide differently; outputs: {listing}; choose one with --output NAME"
            )
    same = sorted([best, *[c for c in close if c is not best]], key=lambda c: (_RANK.get(c.layout, 3), c.order))
    return same[0], same[1:]


def choose_output(
    outputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    requested: str | None = None,
    task: str | None = None,
    samples: int | None = None,
) -> OutputChoice:
    """The output to score, from the clean ``outputs`` over the eval data (see the module docstring);
    ``samples``, the eval data's sample count, tells per-sample outputs from states."""
    if not outputs:
        raise OnnxfiError("the model has no outputs to score")
    family = metrics.task_family(task)  # an unknown task names the choices
    names = list(outputs)
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    samples = samples if samples is not None else _samples(arrays, labels)
    listing = describe_outputs(arrays, samples)
    if family == "detection" or (family is None and requested is None):
        det = detection.choose_layout(arrays, task, labels)
        if det is not None:
            return _detection_choice(arrays, labels, det, listing)
    ids = _labels(labels) if labels is not None else None
    kind = metrics.label_rows(labels) if labels is not None else None
    rows = int(np.shape(labels)[1]) if kind is not None and labels is not None else None
    if requested is not None:
        choice = _requested(arrays, requested, ids, task, listing, rows)
    else:
        fits: list[_Candidate] = []
        if ids is not None:
            for i, name in enumerate(names):
                layout = _label_layout(arrays[name], ids, task, rows)
                if layout is not None:
                    score, k = _score(arrays[name], layout, ids)
                    fits.append(_Candidate(name, layout, i, score, k))
        if fits and ids is not None:
            choice = _by_labels(arrays, fits, ids, listing)
        elif labels is not None and len(names) > 1:
            raise OnnxfiError(
                f"labels of shape {list(np.shape(labels))}{_id_range(ids)} fit no output (class scores [N, C] "
                f"with C above every label, class ids [N], segmentation scores / a mask / a label map of the "
                f"labels' [N, H, W], or per-step class scores [N, T, C] for sequences [N, L]); outputs: {listing}; "
                "choose one with --output NAME"
            )
        else:
            why = f"; labels of shape {list(np.shape(labels))} fit it in no layout" if labels is not None else ""
            choice = _by_shape(arrays, task, listing, why, samples)
    if labels is not None and choice.metric is None and choice.layout != "raw":
        # labels that cannot score the output's decisions: say why now, not with a missing accuracy line
        raise OnnxfiError(_misfit(choice, arrays[choice.name], labels, ids, rows))
    if kind is not None and labels is not None and choice.metric is not None:
        choice = replace(choice, reason=f"{choice.reason}; labels {list(np.shape(labels))} are {kind} rows, "
                                        "read as class ids (argmax)")
    return choice


def _detection_choice(arrays: Mapping[str, np.ndarray], labels: np.ndarray | None, det: tuple[str, str, str],
                      listing: str) -> OutputChoice:
    """A detector's choice: its decoder's layout, the first output it reads, and with labels (padded
    ``[N, M, 5]`` rows ``class, x1, y1, x2, y2``, class < 0 = padding) the clean mAP@0.5 against them."""
    layout, name, reason = det
    if labels is None:
        return OutputChoice(name, "detection", layout, reason, None, {}, None, None, listing)
    lab = np.asarray(labels)
    if lab.ndim != 3 or lab.shape[2] != 5 or not np.issubdtype(lab.dtype, np.number):
        raise OnnxfiError(f"detection labels are [N, M, 5] rows class, x1, y1, x2, y2 (class < 0 = padding), "
                          f"got {list(lab.shape)}; outputs: {listing}")
    score = detection.average_precision(detection.decode(layout, arrays), detection.labels_to_detections(lab))
    return OutputChoice(name, "detection", layout, f"{reason}; clean mAP@0.5 against the labels {_fmt(score)}",
                        None, {name: score}, "map50", None, listing)


def _id_range(ids: np.ndarray | None) -> str:
    """`` (class ids in [lo, hi])`` for class-id labels, else ``""``."""
    if ids is None or ids.ndim != 1 or ids.size == 0:
        return ""
    return f" (class ids in [{int(ids.min())}, {int(ids.max())}])"


def _misfit(choice: OutputChoice, arr: np.ndarray, labels: np.ndarray, ids: np.ndarray | None,
            rows: int | None) -> str:
    """One line on why ``labels`` cannot score ``choice``'s output as it reads (``choice.layout``)."""
    head = f"labels of shape {list(np.shape(labels))} do not fit output {choice.name!r} ({choice.layout})"
    tail = f"; outputs: {choice.outputs}"
    k = metrics.layout_classes(arr, choice.layout)
    if ids is None or (ids.ndim == 2 and choice.layout not in metrics.SEQUENCE_LAYOUTS and arr.ndim != 3):
        lab = np.asarray(labels)
        if lab.ndim == 2 and lab.shape[1] >= 2:
            why = ("their rows are neither one-hot nor probabilities (non-negative, summing to 1); give class "
                   "ids [N]")
        else:
            why = "they are not whole class ids"
        return f"{head}: {why}{tail}; --task regression if they are regression targets (not scored)"
    if rows is not None and k is not None and rows != k:
        return f"{head}: one-hot rows over {rows} classes, but the output has {k}{tail}"
    if rows is not None:
        return f"{head}: one-hot or probability rows score class scores [N, C] only; give class ids [N]{tail}"
    valid = _valid(ids)
    if ids.ndim == 1 and choice.layout == "classes" and k is not None:
        return (f"{head}: class ids lie in [{int(ids.min())}, {int(ids.max())}], but the output has {k} classes, "
                f"so ids must lie in [0, {k}){tail}")
    if ids.ndim == 2:
        return (f"{head}: sequence labels [N, L] (ids, negative = padding) score per-step class scores "
                f"[N, T, C] read with --task ctc (any L) or --task tokens (L == T), with every id below C{tail}")
    if ids.ndim == 3 and k is not None and valid.size and int(valid.max()) >= k:
        return (f"{head}: label ids reach {int(valid.max())}, but the output has {k} classes (ids in [0, {k}); "
                f"negative or {metrics.IGNORE_ID} = ignore){tail}")
    return (f"{head}: class ids [N] score class scores [N, C] or ids, label maps [N, H, W] score segmentation "
            f"outputs of that size{tail}")


def _requested(
    arrays: Mapping[str, np.ndarray], name: str, ids: np.ndarray | None, task: str | None, listing: str,
    rows: int | None = None,
) -> OutputChoice:
    if name not in arrays:
        raise OnnxfiError(f"--output {name!r} is not a model output; outputs: {listing}")
    arr = arrays[name]
    fit = _label_layout(arr, ids, task, rows) if ids is not None else None
    if fit is not None and ids is not None:
        score, k = _score(arr, fit, ids)
        return OutputChoice(name, metrics.layout_task(fit), fit, f"--output {name}", None, {name: score},
                            _metric(ids, fit), k, listing)
    try:
        layout = metrics.infer_layout(arr, task)
    except OnnxfiError as e:
        raise OnnxfiError(f"--output {name}: {e}") from None
    return OutputChoice(name, metrics.layout_task(layout), layout, f"--output {name}", None, {}, None,
                        metrics.layout_classes(arr, layout), listing)


def _metric(ids: np.ndarray, layout: str) -> str:
    if ids.ndim == 2:
        return "token_accuracy" if layout == "tokens" else "seq_accuracy"
    return "accuracy" if ids.ndim == 1 else "miou"


def _by_labels(
    arrays: Mapping[str, np.ndarray], fits: list[_Candidate], ids: np.ndarray, listing: str
) -> OutputChoice:
    metric = _metric(ids, fits[0].layout)
    key = {c.name: (c.score if math.isfinite(c.score) else -1.0) for c in fits}
    ranked = sorted(fits, key=lambda c: (-key[c.name], c.order))
    top = key[ranked[0].name]
    close = [c for c in ranked if top - key[c.name] < TIE_MARGIN]
    best, same = _pick(arrays, ranked, close, listing, lambda a, b: (
        f"agree with the labels within {TIE_MARGIN} ({metric} {_fmt(a.score)} and {_fmt(b.score)})"))
    others = [c for c in ranked if c is not best]
    runner = others[0] if others else None
    scores = {c.name: c.score for c in fits}
    if same:
        twins = ", ".join(repr(c.name) for c in same)
        reason = (f"{best.name!r} ({best.layout}) and {twins} make the same decisions on every sample "
                  f"({metric} {_fmt(best.score)}); {best.name!r} is the richer reading")
        rest = [c for c in others if c not in same]
        if rest:
            reason += f"; next {rest[0].name!r} {metric} {_fmt(rest[0].score)}"
    elif runner is not None:
        reason = (f"best agreement with the labels: {best.name!r} ({best.layout}) {metric} {_fmt(best.score)}; "
                  f"runner-up {runner.name!r} {_fmt(runner.score)}")
    else:
        reason = (f"the only output that can carry labels of shape {list(ids.shape)}: {best.name!r} "
                  f"({best.layout}) {metric} {_fmt(best.score)}")
    return OutputChoice(best.name, metrics.layout_task(best.layout), best.layout, reason,
                        runner.name if runner else None, scores, metric, best.num_classes, listing)


def _probabilities(arr: np.ndarray, layout: str) -> bool:
    if layout in metrics.MASK_LAYOUTS:
        return True  # the shape rules read a one-channel output as a mask only when it lies in [0, 1]
    if layout in ("classes", "nchw"):
        return metrics.is_probability(arr, axis=1)
    if layout == "nhwc":
        return metrics.is_probability(arr, axis=3)
    if layout in metrics.SEQUENCE_LAYOUTS:
        return metrics.is_probability(arr, axis=2)
    return False


def _by_shape(arrays: Mapping[str, np.ndarray], task: str | None, listing: str, why: str,
              samples: int | None = None) -> OutputChoice:
    names = list(arrays)
    if len(names) == 1:
        name = names[0]
        layout = metrics.infer_layout(arrays[name], task)
        return OutputChoice(name, metrics.layout_task(layout), layout, f"the model's only output{why}", None, {},
                            None, metrics.layout_classes(arrays[name], layout), listing)
    tiers: list[tuple[int, _Candidate]] = []
    sequences: list[str] = []
    for i, name in enumerate(names):
        try:
            layout = metrics.infer_layout(arrays[name], task)
        except OnnxfiError:
            if task is None and metrics.is_sequence_scores(arrays[name]):
                sequences.append(f"{name!r} {list(np.shape(arrays[name]))}")
            continue  # this output cannot be read as the forced task (or is a sequence whose reading is asked)
        if layout == "raw" and task != "regression":
            continue
        tier = 0 if _probabilities(arrays[name], layout) else 1
        tiers.append((tier, _Candidate(name, layout, i, num_classes=metrics.layout_classes(arrays[name], layout))))
    if not tiers and samples is not None and task in (None, "regression"):
        # only raw outputs: one whose first axis holds the samples, the others states (an RNN's [layers, N, H])
        per_sample = [n for n in names if np.ndim(arrays[n]) and np.shape(arrays[n])[0] == samples]
        if len(per_sample) == 1:
            name = per_sample[0]
            layout = metrics.infer_layout(arrays[name], "regression")
            return OutputChoice(name, metrics.layout_task(layout), layout,
                                f"the only output with one row per sample ({samples}), read as raw values; "
                                "the others do not hold the samples on their first axis (states)", None, {}, None,
                                None, listing)
    if not tiers and sequences:
        raise OnnxfiError(f"{', '.join(sequences)} holds per-step class scores [N, T, C]: read as a CTC sequence "
                          f"(--task ctc) or one class per step (--task tokens); outputs: {listing}; "
                          "add --output NAME to score another")
    if not tiers:
        raise OnnxfiError(
            f"no output looks like class scores, segmentation scores, a mask or class ids; outputs: {listing}; "
            "choose one with --output NAME"
        )
    tiers.sort(key=lambda tc: (tc[0], tc[1].order))
    top = tiers[0][0]
    group = [c for t, c in tiers if t == top]
    if task == "regression":
        what = "are both raw outputs (--task regression)"
        if len(group) > 1:
            raise OnnxfiError(f"cannot tell which output to score: {group[0].name!r} and {group[1].name!r} {what}; "
                              f"outputs: {listing}; choose one with --output NAME")
    kind = "are both probabilities" if top == 0 else "both make decisions"
    best, same = _pick(arrays, group, group, listing, lambda a, b: f"{kind} (no labels to tell them apart)")
    if same:
        reason = (f"{best.name!r} ({best.layout}) and {', '.join(repr(c.name) for c in same)} make the same "
                  f"decisions on every sample (no labels); {best.name!r} is the richer reading")
    else:
        kind = "whose values are probabilities" if top == 0 else "that makes decisions"
        reason = f"the only output {kind} ({best.layout}; no labels)"
    runner = next((c for _, c in tiers if c is not best), None)
    return OutputChoice(best.name, metrics.layout_task(best.layout), best.layout, reason,
                        runner.name if runner else None, {}, None, best.num_classes, listing)


# ---------------------------------------------------------------------------------------- warning


def plausibility(choice: OutputChoice, clean_value: float, num_classes: int | None = None) -> str | None:
    """A warning when the clean metric against the labels is at or below chance (1 / classes), or not a
    number: the sign of scoring the wrong output. None when it looks plausible or there are no labels
    (a metric against the model's own output says nothing here)."""
    if choice.metric is None:
        return None
    k = num_classes if num_classes is not None else choice.num_classes
    where = f"on output {choice.name!r}: is --output right? outputs: {choice.outputs}"
    if not math.isfinite(clean_value):
        return f"clean {choice.metric} is {clean_value} {where}"
    if k is None or k < 2:
        return None
    chance = 1.0 / k
    if clean_value <= chance:
        return f"{choice.metric} {clean_value:.4f} is at or below chance ({chance:.4g}) {where}"
    return None
