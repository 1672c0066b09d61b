"""The outcome vocabulary, defined once: outcome names and labels, the flags counted as rates, the
classification of one experiment's outputs against golden, and the result row every executor stores.

Outcomes (one per experiment, first match wins): ``crash`` (runtime error, dead worker, timeout),
``due`` (NaN/Inf in an output the golden run had finite), ``critical`` (task metric drops by more than
the threshold), ``sdc5`` (golden top-1 leaves the top-5 on some image), ``sdc1`` (top-1 changes on
some image; for segmentation: some pixel's class; for a sequence: some sample's decoded sequence,
:mod:`onnxfi.sequence`), ``tolerable`` (outputs differ, no decision does),
``masked`` (every output bitwise equal to golden). The flags are kept separately, so the SDC-1 rate
counts every experiment that changed a decision, SDC-5 and critical ones included.

Which output is scored and how it is read (its layout: class scores, NCHW/NHWC segmentation scores,
a binary mask, ids) comes from :func:`onnxfi.scoring.choose_output`; ``classify`` takes that layout. DUE
is NaN/Inf in any float output, every float type included (bfloat16 and float8: :func:`onnxfi.bits.is_float_dtype`).

This module imports only numpy, :mod:`onnxfi.metrics`, :mod:`onnxfi.sequence` and :mod:`onnxfi.bits`: the store, the summary, the
gate and the report use it without loading ONNX Runtime.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxfi import detection, metrics, sequence
from onnxfi.bits import is_float_dtype
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:
    from onnxfi.plan import Experiment

__all__ = [
    "OUTCOMES", "FLAGS", "FAILURE_FLAGS", "OUTCOME_LABELS", "FLAG_LABELS", "FLAG_DESCRIPTIONS", "ROW_FIELDS",
    "classify", "classify_samples", "task_metric", "output_metric", "detection_task_metric", "flag_description",
    "decision_words", "shown_flags", "load_metric", "experiment_row", "crash_row", "fault_spec",
]

# exclusive outcomes, least to most severe
OUTCOMES = ("masked", "tolerable", "sdc1", "sdc5", "critical", "due", "crash")
# per-experiment flags counted as rates (they overlap: a critical fault is also an SDC-1)
FLAGS = ("sdc1", "sdc5", "critical", "due", "crash", "masked")
# the flags a gate limits and the population-weighted estimate covers
FAILURE_FLAGS = ("sdc1", "sdc5", "critical", "due", "crash")
OUTCOME_LABELS: Mapping[str, str] = {
    "masked": "masked", "tolerable": "tolerable", "sdc1": "SDC-1", "sdc5": "SDC-5", "critical": "critical",
    "due": "DUE", "crash": "crash",
}
FLAG_LABELS: Mapping[str, str] = {k: OUTCOME_LABELS[k] for k in FLAGS}
FLAG_DESCRIPTIONS: Mapping[str, str] = {
    "sdc1": "SDC-1 (top-1 changed on some input)",
    "sdc5": "SDC-5 (golden top-1 left the top-5)",
    "critical": "critical (task metric drop > {critical})",
    "due": "DUE (NaN/Inf in outputs)",
    "crash": "crash / timeout",
    "masked": "masked (outputs bitwise equal)",
}
# what SDC-1 means where the decision is not a top-1 class
_SDC1_BY_TASK: Mapping[str, str] = {
    "sequence": "SDC-1 (decoded sequence changed on some input)",
    "detection": "SDC-1 (a detection lost, added, relabelled or moved on some image)",
    "regression": "SDC-1 (an output value changed on some input: raw values, no decision)",
}
_DECISION_BY_TASK: Mapping[str, str] = {"sequence": "decoded sequence", "detection": "detections",
                                        "regression": "output values"}


def flag_description(flag: str, task: str | None, critical: float) -> str:
    """The line that names ``flag`` in tables, in the words of ``task`` (a sequence's SDC-1 is a changed
    decoded sequence)."""
    if flag == "sdc1" and task is not None and task in _SDC1_BY_TASK:
        return _SDC1_BY_TASK[task]
    return FLAG_DESCRIPTIONS[flag].format(critical=critical)


def shown_flags(task: str | None) -> tuple[str, ...]:
    """The flags a rate table shows for ``task``: SDC-5 (golden top-1 out of the top-5) only where there are
    class scores to rank, so not for sequences, detectors and raw values (regression)."""
    return tuple(f for f in FLAGS if not (f == "sdc5" and task in ("sequence", "detection", "regression")))


def decision_words(task: str | None) -> str:
    """What one inference decides, for the per-inference line: ``top-1 decision``, ``decoded sequence`` or
    ``detections``."""
    return _DECISION_BY_TASK.get(task or "", "top-1 decision")


# one stored row per experiment; ``path`` is how the engine executed it (see onnxfi.engine.paths)
ROW_FIELDS = (
    "id", "site", "kind", "idx", "bit", "fault", "outcome", "masked", "sdc1", "sdc5", "critical", "due",
    "crash", "images_changed", "metrics", "time_s", "worker", "error", "path", "image",
)


def experiment_row(
    exp: Experiment, result: Mapping[str, Any], *, time_s: float | None, worker: int | None,
    error: str | None = None, path: str | None = None,
) -> dict[str, Any]:
    """The stored row of one experiment: its address, ``result`` (from :func:`classify`) and bookkeeping."""
    row = dict(result)
    row.update({"id": exp.id, "site": exp.site, "kind": exp.kind, "idx": exp.index, "bit": exp.bit,
                "fault": fault_spec(exp), "image": exp.image, "time_s": time_s, "worker": worker, "error": error,
                "path": path if path is not None else row.get("path")})
    return row


def fault_spec(exp: Experiment) -> str:
    """The stored text of ``exp``'s fault: its spec (``flip:30``), or ``ber:RATE`` for a fault-rate draw."""
    if exp.fault.get("kind") == "ber":
        return f"ber:{float(exp.fault['rate']):g}"
    return exp.fault_obj().spec()


def crash_row(exp: Experiment, reason: str, worker: int | None, path: str | None = None) -> dict[str, Any]:
    """The row of an experiment that crashed, hung or killed its worker (``reason`` says which)."""
    result = {"outcome": "crash", "masked": False, "sdc1": False, "sdc5": False, "critical": False,
              "due": False, "crash": True, "images_changed": None, "metrics": {}}
    return experiment_row(exp, result, time_s=None, worker=worker, error=reason[:500], path=path)


def load_metric(spec: str) -> Callable[..., Any]:
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise OnnxfiError(f"bad --metric {spec!r}: use module:function")
    try:
        return getattr(importlib.import_module(mod), fn)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as e:
        raise OnnxfiError(f"cannot load --metric {spec!r}: {e}") from None


def task_metric(
    task: str, out: np.ndarray, golden: np.ndarray, labels: np.ndarray | None, layout: str | None = None
) -> tuple[str, float]:
    """The metric that decides 'critical': accuracy / mIoU vs labels, else agreement with golden.

    ``layout`` is how the output is read (:data:`onnxfi.metrics.LAYOUTS`; left out: inferred from
    ``golden`` and ``task`` by :func:`onnxfi.metrics.infer_layout`). Classification: ``accuracy`` against
    the labels, else ``golden_agreement`` (fraction of samples with golden's decision). Segmentation:
    ``miou`` of the pixel decisions against the labels, else against golden's decisions. Sequence:
    ``seq_accuracy`` (CTC) / ``token_accuracy`` (tokens) against the labels, else ``golden_agreement``
    (:func:`onnxfi.sequence.sequence_task_metric`). Regression: ``max_abs_error`` against golden.
    """
    layout = layout or metrics.infer_layout(golden, task)
    if metrics.layout_task(layout) == "detection":
        raise ValueError("a detector's task metric reads every output: use output_metric")
    if layout == "classes":
        if labels is not None:
            return "accuracy", metrics.accuracy(out, labels)
        return "golden_agreement", float(np.mean(metrics.top1(out) == metrics.top1(golden)))
    if layout == "ids":
        pred = metrics.decisions(out, layout)
        ref = metrics.decisions(labels if labels is not None else golden, "ids")
        name = "accuracy" if labels is not None else "golden_agreement"
        return name, float(np.mean(pred == ref)) if pred.size else float("nan")
    if layout in metrics.SEQUENCE_LAYOUTS:
        return sequence.sequence_task_metric(out, labels, layout, metrics.decisions(out, layout), golden)
    if metrics.layout_task(layout) == "segmentation":
        threshold = metrics.mask_threshold(golden) if layout in metrics.MASK_LAYOUTS else None
        pred = metrics.decisions(out, layout, threshold)
        gold = metrics.decisions(golden, layout, threshold)
        ref = gold if labels is None else labels
        k = metrics.layout_classes(golden, layout) or metrics.label_map_classes(gold, ref)
        return "miou", metrics.miou(pred, ref, k)
    return "max_abs_error", metrics.error_stats(out, golden)["max_abs"]


def _golden_detections(layout: str, golden: Mapping[str, np.ndarray]) -> list[detection.Detections]:
    """The fault-free detections (remembered by the golden run's first output: the same for every
    experiment of a site)."""
    key = next(iter(golden.values()))
    out: list[detection.Detections] = metrics.remembered("detections", key, layout,
                                                          lambda: detection.decode(layout, golden))
    return out


def _truth(labels: np.ndarray) -> list[detection.Detections]:
    out: list[detection.Detections] = metrics.remembered("detection_labels", labels, None,
                                                          lambda: detection.labels_to_detections(labels))
    return out


def detection_task_metric(layout: str, outputs: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                          labels: np.ndarray | None) -> tuple[str, float]:
    """A detector's task metric over one run's outputs (every output: the decoder reads them together):
    ``map50`` (mAP@0.5 against the labels, padded ``[N, M, 5]``), else ``map50_golden`` (against the
    fault-free detections as the truth; NaN when golden detects nothing)."""
    found = detection.decode(layout, outputs)
    if labels is not None:
        return "map50", detection.average_precision(found, _truth(labels))
    return "map50_golden", detection.average_precision(found, _golden_detections(layout, golden))


def output_metric(task: str, layout: str | None, outputs: Mapping[str, np.ndarray],
                  golden: Mapping[str, np.ndarray], name: str, labels: np.ndarray | None) -> tuple[str, float]:
    """:func:`task_metric` of whole runs: the scored output ``name``, or for a detector every output."""
    if layout is not None and metrics.layout_task(layout) == "detection":
        return detection_task_metric(layout, outputs, golden, labels)
    return task_metric(task, outputs[name], golden[name], labels, layout)


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape and the same bytes (NaN payloads and the sign of zero included), without copying to
    bytes objects (a segmentation output is tens of MB)."""
    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        return bool(a.tobytes() == b.tobytes())
    return bool(np.array_equal(np.ascontiguousarray(a).reshape(-1).view(np.uint8),
                               np.ascontiguousarray(b).reshape(-1).view(np.uint8)))


def classify(
    golden: Mapping[str, np.ndarray],
    faulty: Mapping[str, np.ndarray],
    primary: str,
    task: str,
    labels: np.ndarray | None,
    critical: float,
    custom: Callable[..., Any] | None = None,
    layout: str | None = None,
) -> dict[str, Any]:
    """Outcome flags and metrics of one experiment (see the module docstring).

    ``primary`` is the scored output and ``layout`` how it is read (:data:`onnxfi.metrics.LAYOUTS`; left
    out: inferred from golden's shape and ``task``). Decisions, images changed and the task metric come
    from that layout: a pixel flip of a binary mask is an SDC-1, a small change that flips no pixel is not.
    """
    masked = all(_same_bytes(faulty[k], g) for k, g in golden.items())
    out, gold = faulty[primary], golden[primary]
    layout = layout or metrics.infer_layout(gold, task)
    task = metrics.layout_task(layout)
    due = False
    for k, g in golden.items():
        f = faulty[k]
        if is_float_dtype(f.dtype) and not np.all(np.isfinite(f)) and np.all(np.isfinite(g)):
            due = True
    m: dict[str, Any] = {}
    sdc1 = sdc5 = False
    changed_frac = 0.0
    if masked:
        pass
    elif layout == "classes":
        m, s1, s5 = metrics.classification_parts(out, gold, labels)
        sdc1 = bool(s1.any())
        sdc5 = bool(s5.any())
        changed_frac = float(s1.mean())
    elif layout == "ids":
        changed = metrics.decisions(out, layout) != metrics.decisions(gold, layout)
        m = {"n": float(changed.size), "golden_agreement": float(np.mean(~changed)) if changed.size else float("nan")}
        sdc1 = bool(changed.any())
        changed_frac = float(changed.mean()) if changed.size else 0.0
    elif task == "detection":
        gdets = _golden_detections(layout, golden)
        fdets = detection.decode_changed(layout, faulty, golden, gdets)
        m, changed, _ = detection.detection_parts(gdets, fdets, with_map=labels is None)
        if labels is not None:
            m["map50_labels"] = detection.average_precision(fdets, _truth(labels))
        sdc1 = bool(changed.any())
        changed_frac = float(changed.mean()) if changed.size else 0.0
    elif task == "sequence":
        m, changed = sequence.sequence_parts(out, gold, labels, layout, metrics.decisions(gold, layout))
        sdc1 = bool(changed.any())
        changed_frac = float(changed.mean()) if changed.size else 0.0
    elif task == "segmentation":
        m = metrics.segmentation_metrics(out, gold, labels, layout=layout)
        sdc1 = m.get("pixel_change_frac", 0.0) > 0
        threshold = metrics.mask_threshold(gold) if layout in metrics.MASK_LAYOUTS else None
        pred, gpred = metrics.decisions(out, layout, threshold), metrics.decisions(gold, layout, threshold)
        changed_frac = float(np.mean(np.any((pred != gpred).reshape(len(pred), -1), axis=1))) if len(pred) else 0.0
    else:
        m = {f"err_{k}": v for k, v in metrics.error_stats(out, gold).items()}
        sdc1 = True
        changed_frac = float(np.mean(np.any((out != gold).reshape(len(out), -1), axis=1))) if out.ndim else 1.0
    # the fault-free value: the same for every experiment of a site (remembered by the golden array)
    _, name, clean = metrics.remembered("clean_task_metric", gold, (id(labels), task, layout),
                                        lambda: ([labels], *output_metric(task, layout, golden, golden, primary,
                                                                          labels)))
    if masked:
        value = clean
    elif layout == "classes":  # what task_metric computes, taken from the metrics above
        value = m["accuracy"] if labels is not None else m["golden_agreement"]
    elif task == "detection":  # what detection_task_metric computes, from the matches above
        value = m["map50_labels"] if labels is not None else m["map50"]
    elif task == "sequence":  # sequence_parts holds the task metric (golden_agreement, or against the labels)
        value = m[name]
    else:
        value = task_metric(task, out, gold, labels, layout)[1]
    m["task_metric"] = name
    m["task_value"] = float(value)
    m["clean_value"] = float(clean)
    drop = (value - clean) if name == "max_abs_error" else (clean - value)
    is_critical = (not masked) and (not np.isfinite(value) or drop > critical) and name != "max_abs_error"
    if task == "detection" and not np.isfinite(clean):
        is_critical = False  # no fault-free detection to lose: lost, added or relabelled boxes are SDCs
    if custom is not None:
        res = custom(faulty, golden, labels)
        if isinstance(res, dict):
            m.update({f"custom_{k}": float(v) for k, v in res.items()})
        else:
            m["custom"] = float(res)
    return _row(masked, due, bool(is_critical), sdc1, sdc5, changed_frac, m)


def _row(masked: bool, due: bool, is_critical: bool, sdc1: bool, sdc5: bool, changed_frac: float,
         m: Mapping[str, Any]) -> dict[str, Any]:
    """The row of one classified experiment: its outcome (first match wins) and flags; non-finite metrics
    are stored as None."""
    if due:
        outcome = "due"
    elif is_critical:
        outcome = "critical"
    elif sdc5:
        outcome = "sdc5"
    elif sdc1:
        outcome = "sdc1"
    elif masked:
        outcome = "masked"
    else:
        outcome = "tolerable"
    clean_m = {k: (float(v) if isinstance(v, (int, float, np.floating)) and np.isfinite(v) else
                   (None if isinstance(v, (int, float, np.floating)) else v)) for k, v in m.items()}
    return {
        "outcome": outcome, "masked": masked, "sdc1": sdc1 or sdc5, "sdc5": sdc5,
        "critical": is_critical, "due": due, "crash": False, "images_changed": changed_frac,
        "metrics": clean_m,
    }


def _stack(outputs: Sequence[Mapping[str, np.ndarray]], keys: Sequence[str]) -> dict[str, np.ndarray] | None:
    """One-sample outputs stacked on their sample axis, or None where they do not stack (no sample axis,
    shapes that differ, non-numeric values)."""
    out: dict[str, np.ndarray] = {}
    for k in keys:
        parts = [np.asarray(o[k]) for o in outputs]
        first = parts[0]
        numeric = first.dtype.kind in "biufc" or is_float_dtype(first.dtype)
        if first.ndim == 0 or first.shape[0] != 1 or first.size == 0 or not numeric:
            return None
        if any(a.shape != first.shape or a.dtype != first.dtype for a in parts):
            return None
        out[k] = np.ascontiguousarray(np.concatenate(parts))
    return out


def _row_bytes(a: np.ndarray) -> np.ndarray:
    """Each sample's stored bytes as one row of ``uint8``."""
    return a.view(np.uint8).reshape(a.shape[0], -1)


def classify_samples(
    golden: Sequence[Mapping[str, np.ndarray]],
    faulty: Sequence[Mapping[str, np.ndarray]],
    primary: str,
    task: str,
    labels: np.ndarray | None,
    critical: float,
    custom: Callable[..., Any] | None = None,
    layout: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`classify` of many one-sample experiments (transient faults: each output cut to the faulty
    sample), computed together: ``golden[i]``/``faulty[i]`` are experiment i's outputs and ``labels[i]`` its
    label (``labels`` stacked over the experiments, or None).

    The rows are those :func:`classify` gives one experiment at a time (the per-sample reductions are the
    same numpy reductions along the class axis); the float metrics of a row whose output is only partly
    finite may differ from it in the last bit. Other layouts than class scores, a custom metric and outputs
    that do not stack are classified one experiment at a time."""
    n = len(golden)
    if n == 0:
        return []
    keys = list(golden[0])
    gold = _stack(golden, keys)
    out = _stack(faulty, keys) if gold is not None and all(list(f) == keys for f in faulty) else None
    lay = layout or metrics.infer_layout(np.asarray(golden[0][primary]), task)
    if (gold is None or out is None or custom is not None or lay != "classes"
            or any(out[k].shape != gold[k].shape or out[k].dtype != gold[k].dtype for k in keys)
            or out[primary].size // n > metrics._CHUNK):
        return [classify(g, f, primary, task, None if labels is None else labels[i:i + 1], critical, custom,
                         layout=layout) for i, (g, f) in enumerate(zip(golden, faulty))]
    masked = np.ones(n, dtype=bool)
    due = np.zeros(n, dtype=bool)
    for k in keys:
        masked &= np.all(_row_bytes(out[k]) == _row_bytes(gold[k]), axis=1)
        if is_float_dtype(out[k].dtype):
            due |= metrics.nonfinite_mask(out[k]) & ~metrics.nonfinite_mask(gold[k])
    f = metrics._scores(out[primary], "output")
    g = metrics._scores(gold[primary], "golden")
    c = f.shape[1]
    top_f, top_g = metrics.top1(f), metrics.top1(g)
    sdc1 = top_f != top_g
    sdc5 = ~metrics.topk_contains(f, top_g, 5)
    bad = metrics.nonfinite_mask(f)
    probs = np.where(metrics.probability_slices(g)[:, None], f, metrics.softmax(f, axis=1))
    entropy = metrics.predictive_entropy(probs)
    msp = metrics.max_softmax_probability(probs)
    t = metrics._labels(labels, n, c) if labels is not None else None
    err = metrics.error_stats_rows(out[primary], gold[primary])
    rows = []
    nan = float("nan")
    for i in range(n):
        m: dict[str, Any] = {}
        if not masked[i]:
            ok = not bad[i]
            m = {"n": 1.0, "num_classes": float(c), "due_frac": float(bad[i]), "sdc1_frac": float(sdc1[i] and ok),
                 "sdc5_frac": float(sdc5[i] and ok), "golden_agreement": float(not sdc1[i]),
                 "mean_entropy": float(entropy[i]) if ok and np.isfinite(entropy[i]) else nan,
                 "mean_msp": float(msp[i]) if ok and np.isfinite(msp[i]) else nan}
            if t is not None:
                m["accuracy"] = float(top_f[i] == t[i])
                m["top5_accuracy"] = float(metrics.topk_contains(f[i:i + 1], t[i:i + 1], 5)[0])
                p_i = probs[i]
                m["ece"] = (abs(float(np.argmax(p_i) == t[i]) - float(np.max(p_i)))
                            if ok and np.all(np.isfinite(p_i)) else nan)
            m.update({f"err_{key}": v[i] for key, v in err.items()})
        if t is not None:
            name, clean = "accuracy", float(top_g[i] == t[i])
            value = clean if masked[i] else float(top_f[i] == t[i])
        else:
            name, clean = "golden_agreement", 1.0
            value = clean if masked[i] else float(not sdc1[i])
        m["task_metric"], m["task_value"], m["clean_value"] = name, value, clean
        is_critical = bool(not masked[i] and (not np.isfinite(value) or clean - value > critical))
        s1, s5 = (False, False) if masked[i] else (bool(sdc1[i]), bool(sdc5[i]))
        rows.append(_row(bool(masked[i]), bool(due[i]), is_critical, s1, s5, float(s1), m))
    return rows

