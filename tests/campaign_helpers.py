"""Helpers for the campaign-engine tests: tiny models whose fault outcomes are computable by hand,
an independent (numpy-only) outcome classifier, and custom metrics that crash or hang a worker.

Custom metrics run inside the spawned worker processes (``--metric campaign_helpers:NAME``); the
workers get the parent's ``sys.path``, and the subprocess tests put ``tests/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
from executor_helpers import planted  # the planted experiment: only y[0, 0] negated
from onnx import TensorProto

OPSET = 17
IR_VERSION = 8

# ------------------------------------------------------------------------------------------ models

# Known-answer classifier: y = x @ W + b, 6 classes, 2 samples. Each sample has exactly one non-zero
# input (1.0), so every output is one exact product (plus zeros) plus a bias: numpy and ONNX Runtime
# agree bit for bit whatever the flipped bit. Row 2 of W only ever meets inputs of exactly 0.
KAT_X = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
KAT_W = np.array(
    [
        [1.0, 0.75, 0.5, 0.25, -0.5, -1.0],  # sample 0: class 0 wins
        [0.5, 1.0, 0.875, 0.25, 0.125, 0.0625],  # sample 1: class 1 wins
        [1.5, -0.75, 0.375, 3.0, -2.5, 0.625],  # multiplied by 0 only
    ],
    dtype=np.float32,
)
KAT_B = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
# sample 0 is labelled correctly (an SDC there costs accuracy: critical); sample 1 is labelled with a
# class it only reaches after some faults (an SDC there does not lower accuracy).
KAT_LABELS = np.array([0, 5], dtype=np.int64)


def kat_model(w: np.ndarray = KAT_W, b: np.ndarray = KAT_B) -> onnx.ModelProto:
    """x[N,3] -> MatMul(W) -> h -> Add(b) -> y[N,6]."""
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            oh.make_node("Add", ["h", "b"], ["y"], name="add"),
        ],
        "kat",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        initializer=[onh.from_array(w, "W"), onh.from_array(b, "b")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def save_kat(tmp: Path, x: np.ndarray = KAT_X, labels: np.ndarray | None = KAT_LABELS,
             w: np.ndarray = KAT_W, b: np.ndarray = KAT_B, name: str = "kat") -> tuple[Path, Path]:
    """The known-answer model and its data (.npz with ``x`` and optional ``labels``) under ``tmp``."""
    model_path = tmp / f"{name}.onnx"
    onnx.save_model(kat_model(w, b), str(model_path))
    data_path = tmp / f"{name}_data.npz"
    if labels is not None:
        np.savez(data_path, x=x, labels=labels)
    else:
        np.savez(data_path, x=x)
    return model_path, data_path


def mul_model(n_classes: int) -> onnx.ModelProto:
    """x[N,C] -> Mul(w[C]) -> y[N,C]: every bit of every weight reaches the output unmasked."""
    w = np.linspace(0.5, 1.5, n_classes, dtype=np.float32)
    graph = oh.make_graph(
        [oh.make_node("Mul", ["x", "w"], ["y"], name="mul")],
        "mul",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_classes])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_classes])],
        initializer=[onh.from_array(w, "w")],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------- independent reference


def fault_words(values: np.ndarray, flat_index: int, fault: Mapping[str, Any]) -> np.ndarray:
    """A float32 copy of ``values`` with ``fault`` (a plan's fault dict) applied to element ``flat_index``.

    Works on the uint32 storage words: flip XORs the bits, stuck-0/1 clears/sets them, zero/value
    replace the word.
    """
    words = np.ascontiguousarray(values, dtype=np.float32).copy().view(np.uint32)
    flat = words.reshape(-1)
    kind = fault["kind"]
    mask = 0
    for b in fault.get("bits", ()):
        mask |= 1 << int(b)
    if kind == "flip":
        flat[flat_index] ^= np.uint32(mask)
    elif kind == "stuck" and fault["value"] == 0:
        flat[flat_index] &= np.uint32(~mask & 0xFFFFFFFF)
    elif kind == "stuck":
        flat[flat_index] |= np.uint32(mask)
    elif kind == "zero":
        flat[flat_index] = np.uint32(0)
    elif kind == "value":
        flat[flat_index] = np.array(fault["value"], dtype=np.float32).view(np.uint32)
    else:
        raise AssertionError(f"no reference for fault {fault}")
    return words.view(np.float32)


def flip(bit: int) -> dict[str, Any]:
    return {"kind": "flip", "bits": [bit]}


def _rank_before(scores: np.ndarray, target: int) -> int:
    """How many classes rank ahead of ``target`` (higher score, or equal score and lower index)."""
    v = scores[target]
    idx = np.arange(scores.shape[0])
    return int(np.sum((scores > v) | ((scores == v) & (idx < target))))


def expected_outcome(golden: np.ndarray, faulty: np.ndarray, labels: np.ndarray | None,
                     critical: float = 0.01) -> str:
    """The documented outcome of a classification experiment, from plain numpy.

    Order: due (non-finite where golden was finite), critical (accuracy vs labels -- or agreement with
    golden -- drops by more than ``critical``), sdc5 (golden top-1 not in the faulty top-5), sdc1 (top-1
    changed on some sample), tolerable (outputs differ), masked (bitwise equal).
    """
    assert np.all(np.isfinite(golden))
    if faulty.tobytes() == golden.tobytes():
        return "masked"
    if not np.all(np.isfinite(faulty)):
        return "due"
    g_top = np.argmax(golden, axis=1)
    f_top = np.argmax(faulty, axis=1)
    if labels is not None:
        drop = float(np.mean(g_top == labels) - np.mean(f_top == labels))
    else:
        drop = float(1.0 - np.mean(f_top == g_top))
    if drop > critical:
        return "critical"
    k = min(5, golden.shape[1])
    if any(_rank_before(faulty[i], int(g_top[i])) >= k for i in range(golden.shape[0])):
        return "sdc5"
    if np.any(f_top != g_top):
        return "sdc1"
    return "tolerable"


def kat_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y = x @ W + b in float32 (exact here: one non-zero product per output)."""
    h = (x[:, :, None] * w[None, :, :]).sum(axis=1, dtype=np.float32)
    return (h + b).astype(np.float32)


def kat_expected(site: str, index: int, fault: Mapping[str, Any], x: np.ndarray = KAT_X,
                 w: np.ndarray = KAT_W, b: np.ndarray = KAT_B, labels: np.ndarray | None = KAT_LABELS,
                 critical: float = 0.01) -> str:
    """Outcome of ``fault`` at element ``index`` of a site (W, b, h or y) of the known-answer model.

    Activation faults (h, y) hit the same element of every sample.
    """
    with np.errstate(all="ignore"):
        golden = kat_forward(x, w, b)
        if site == "W":
            faulty = kat_forward(x, fault_words(w, index, fault), b)
        elif site == "b":
            faulty = kat_forward(x, w, fault_words(b, index, fault))
        elif site == "h":
            h = kat_forward(x, w, np.zeros_like(b))
            h = np.stack([fault_words(row, index, fault) for row in h])
            faulty = (h + b).astype(np.float32)
        elif site == "y":
            faulty = np.stack([fault_words(row, index, fault) for row in golden])
        else:
            raise AssertionError(site)
    return expected_outcome(golden, faulty, labels, critical)


# --------------------------------------------------------------------- custom metrics (in workers)


def crash_on_negated_first(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                           labels: np.ndarray | None) -> float:
    """Kill the worker (SIGKILL, as a runtime crash would) on the planted experiment; else 0."""
    if planted(faulty, golden):
        os.kill(os.getpid(), signal.SIGKILL)
    return 0.0


def abort_on_negated_first(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                           labels: np.ndarray | None) -> float:
    """``os.abort()`` (SIGABRT) on the planted experiment; else 0."""
    if planted(faulty, golden):
        os.abort()
    return 0.0


def raise_on_negated_first(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                           labels: np.ndarray | None) -> float:
    """An ordinary Python error on the planted experiment (the worker survives it); else 0."""
    if planted(faulty, golden):
        raise RuntimeError("planted failure")
    return 0.0


def kill_or_hang(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                 labels: np.ndarray | None) -> float:
    """SIGKILL on the planted experiment (y[0, 0] negated), hang when only y[1, 1] is negated; else 0."""
    if planted(faulty, golden):
        os.kill(os.getpid(), signal.SIGKILL)
    f, g = faulty["y"], golden["y"]
    other = np.ones(g.shape, bool)
    other[1, 1] = False
    if f[1, 1] == -g[1, 1] and g[1, 1] != 0 and np.array_equal(f[other], g[other]):
        time.sleep(600)
    return 0.0


def row_key(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row without the fields that legitimately vary between runs (time, worker id)."""
    return {k: v for k, v in row.items() if k not in ("time_s", "worker")}
