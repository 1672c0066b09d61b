"""Sequence outputs: per-step class scores ``[N, T, C]`` (OCR and speech recognizers, taggers) and their decisions.

Two readings (layouts) of one output ``[N, T, C]`` (batch first, time steps, classes):

* ``ctc``: a CTC recognizer's output. The greedy decode takes the argmax class of every step, collapses
  repeats and drops the blank class. ``ctc`` has its blank at class 0 (PaddleOCR, PyTorch's ``CTCLoss``
  default), ``ctc-last`` at class ``C - 1`` (TensorFlow's ``ctc_greedy_decoder``).
* ``tokens``: one decision per step (per-token classification: a tagger, a decoder's logits). The
  decision is the argmax class of every step; nothing is collapsed.

Decisions are ``[N, T]`` int64, each row the decoded ids first and ``-1`` after them (a CTC row holds at
most T ids). Argmax follows numpy (NaN wins, the first tie wins), as for class scores.

Labels for sequences are ``[N, L]`` integer ids, negative entries as padding after the sequence's ids (a
CTC label holds the characters, no blanks; a token label has one id per step, ``L == T``, negative =
ignored step).

Per experiment (:func:`sequence_parts`), a sample is changed (an SDC) when its decoded sequence differs
from the fault-free one; the token-level rate is the edit distance between the decoded sequences over the
fault-free length (at least 1; ``ctc``: a character error rate against golden) or the fraction of steps whose
decision changed (``tokens``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SEQUENCE_LAYOUTS",
    "ctc_blank_layout",
    "decode",
    "edit_distance",
    "rows_equal",
    "sequence_labels",
    "sequence_parts",
    "sequence_task_metric",
]

SEQUENCE_LAYOUTS = ("ctc", "ctc-last", "tokens")

IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


def _argmax(scores: NDArray[Any]) -> IntArray:
    if scores.ndim != 3:
        raise ValueError(f"sequence scores: expected [N, T, C], got {list(scores.shape)}")
    out: IntArray = np.argmax(scores, axis=2).astype(np.int64)
    return out


def ctc_blank_layout(scores: NDArray[Any]) -> str:
    """``ctc`` or ``ctc-last``: the blank is the class 0 or ``C - 1`` that more steps of the fault-free
    output decide (a recognizer outputs blank on most steps); class 0 on a tie (neither decided)."""
    ids = _argmax(scores)
    last = scores.shape[2] - 1
    return "ctc-last" if int(np.count_nonzero(ids == last)) > int(np.count_nonzero(ids == 0)) else "ctc"


def compact(ids: IntArray, keep: BoolArray) -> IntArray:
    """Rows of ``ids`` with the kept entries first (in order) and ``-1`` after them."""
    order = np.argsort(~keep, axis=1, kind="stable")
    out = np.take_along_axis(ids, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = -1
    return out


def decode(scores: NDArray[Any], layout: str) -> IntArray:
    """The decisions ``[N, T]`` of sequence scores ``[N, T, C]`` read as ``layout`` (see the module docstring)."""
    ids = _argmax(scores)
    if layout == "tokens":
        return ids
    if layout not in ("ctc", "ctc-last"):
        raise ValueError(f"not a sequence layout: {layout!r}")
    blank = 0 if layout == "ctc" else scores.shape[2] - 1
    keep = ids != blank
    keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
    return compact(ids, keep)


def sequence_labels(labels: NDArray[Any]) -> IntArray:
    """Labels ``[N, L]`` as int64 rows with their ids first and ``-1`` after (negative entries are padding)."""
    arr = np.asarray(labels).astype(np.int64)
    return compact(arr, arr >= 0)


def rows_equal(a: IntArray, b: IntArray) -> BoolArray:
    """Per row: the same ids before the ``-1`` padding (rows of different widths compared as padded)."""
    w = max(a.shape[1], b.shape[1])
    pa = np.pad(a, ((0, 0), (0, w - a.shape[1])), constant_values=-1) if a.shape[1] < w else a
    pb = np.pad(b, ((0, 0), (0, w - b.shape[1])), constant_values=-1) if b.shape[1] < w else b
    out: BoolArray = np.all(pa == pb, axis=1)
    return out


def edit_distance(a: IntArray, b: IntArray) -> int:
    """Levenshtein distance between two id sequences (1-D, without padding)."""
    x, y = a.tolist(), b.tolist()
    if not x or not y:
        return max(len(x), len(y))
    prev = list(range(len(y) + 1))
    for i, xi in enumerate(x, 1):
        cur = [i]
        for j, yj in enumerate(y, 1):
            cur.append(min(prev[j - 1] + (xi != yj), prev[j] + 1, cur[j - 1] + 1))
        prev = cur
    return prev[-1]


def _valid(row: IntArray) -> IntArray:
    return row[row >= 0]


def sequence_parts(out: NDArray[Any], gold: NDArray[Any], labels: NDArray[Any] | None,
                   layout: str, gold_ids: IntArray | None = None) -> tuple[dict[str, float], BoolArray]:
    """(metrics, changed samples) of a faulty sequence output against the fault-free one.

    Metrics: ``golden_agreement`` (fraction of samples decoded as fault-free), ``token_error_rate``
    (see the module docstring), the changed ``tokens`` count and, with labels, the task value
    (:func:`sequence_task_metric`). ``gold_ids`` are golden's decisions when the caller has them.
    """
    pred = decode(out, layout)
    ref = decode(gold, layout) if gold_ids is None else gold_ids
    changed = ~rows_equal(pred, ref)
    n = len(pred)
    if layout == "tokens":
        diff = int(np.count_nonzero(pred != ref))
        total = int(ref.size)
    else:
        diff = sum(edit_distance(_valid(pred[i]), _valid(ref[i])) for i in np.flatnonzero(changed))
        total = int(np.count_nonzero(ref >= 0))
    m = {"n": float(n), "golden_agreement": float(np.mean(~changed)) if n else float("nan"),
         "tokens_changed": float(diff),
         "token_error_rate": float(diff / max(total, 1))}
    if labels is not None:
        name, value = sequence_task_metric(out, labels, layout, pred)
        m[name] = value
    return m, changed


def sequence_task_metric(out: NDArray[Any], labels: NDArray[Any] | None, layout: str,
                         pred: IntArray | None = None, gold: NDArray[Any] | None = None) -> tuple[str, float]:
    """The task metric of a sequence output: against labels, ``seq_accuracy`` (``ctc``: fraction of
    samples decoded exactly as labelled) or ``token_accuracy`` (``tokens``: fraction of labelled steps
    decided as labelled); without labels, ``golden_agreement`` with ``gold``'s decisions."""
    pred = decode(out, layout) if pred is None else pred
    if labels is None:
        if gold is None:
            raise ValueError("sequence_task_metric: labels or the fault-free output are needed")
        same = rows_equal(pred, decode(gold, layout))
        return "golden_agreement", float(np.mean(same)) if same.size else float("nan")
    lab = np.asarray(labels).astype(np.int64)
    if layout == "tokens":
        valid = lab >= 0
        width = min(lab.shape[1], pred.shape[1])
        hit = (pred[:, :width] == lab[:, :width]) & valid[:, :width]
        count = int(np.count_nonzero(valid))
        return "token_accuracy", float(np.count_nonzero(hit) / count) if count else float("nan")
    same = rows_equal(pred, sequence_labels(lab))
    return "seq_accuracy", float(np.mean(same)) if same.size else float("nan")
