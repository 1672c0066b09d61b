"""Sequence outputs [N, T, C] (issue 20): greedy CTC and per-token decisions, their outcomes, and the
reading chosen from evidence or asked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from conftest import fails
from onnx import TensorProto

from onnxfi import metrics, sequence
from onnxfi.cli import main
from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import classify, task_metric
from onnxfi.scoring import choose_output


def _naive_ctc(scores: np.ndarray, blank: int) -> list[list[int]]:
    """Greedy CTC decode written out step by step (the reference)."""
    out = []
    for row in scores:
        ids, prev = [], None
        for step in row:
            k = int(np.argmax(step))
            if k != blank and k != prev:
                ids.append(k)
            prev = k
        out.append(ids)
    return out


def _onehot(ids: list[list[int]], c: int, hot: float = 0.9) -> np.ndarray:
    """Probability rows [N, T, C] whose argmax per step is ``ids``."""
    n, t = len(ids), len(ids[0])
    out = np.full((n, t, c), (1.0 - hot) / (c - 1), np.float32)
    for i, row in enumerate(ids):
        for j, k in enumerate(row):
            out[i, j, k] = hot
    return out


def _unpad(row: np.ndarray) -> list[int]:
    return [int(v) for v in row if v >= 0]


def test_ctc_decode_matches_a_step_by_step_reference() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random((64, 25, 5)).astype(np.float32)
    scores[:, :, 0] += 0.6  # blank-heavy, as a recognizer's output
    for layout, blank in (("ctc", 0), ("ctc-last", 4)):
        got = sequence.decode(scores, layout)
        assert got.shape == (64, 25)
        assert [_unpad(r) for r in got] == _naive_ctc(scores, blank)
    assert np.array_equal(sequence.decode(scores, "tokens"), np.argmax(scores, axis=2))


def test_ctc_collapses_repeats_only_between_blanks() -> None:
    # steps: a a - a b b -  ->  a a b  (the blank separates the two a's)
    scores = _onehot([[1, 1, 0, 1, 2, 2, 0]], 3)
    assert _unpad(sequence.decode(scores, "ctc")[0]) == [1, 1, 2]
    assert _unpad(sequence.decode(scores, "tokens")[0]) == [1, 1, 0, 1, 2, 2, 0]


def test_edit_distance_hand_cases() -> None:
    d = sequence.edit_distance
    a = np.array
    assert d(a([1, 2, 3]), a([1, 2, 3])) == 0
    assert d(a([1, 2, 3]), a([1, 3])) == 1  # deletion
    assert d(a([1, 2, 3]), a([1, 4, 3])) == 1  # substitution
    assert d(a([1, 2, 3]), a([3, 2, 1])) == 2
    assert d(a([], dtype=np.int64), a([5, 6])) == 2
    assert d(a([7, 8, 9, 1]), a([8, 9, 1, 2])) == 2  # kitten/sitting-like shift: delete 7, insert 2


def test_blank_comes_from_the_evidence_of_the_clean_output() -> None:
    first = _onehot([[0, 0, 2, 0, 1, 0]], 4)
    last = _onehot([[3, 3, 2, 3, 1, 3]], 4)
    assert metrics.infer_layout(first, "ctc") == "ctc"
    assert metrics.infer_layout(last, "ctc") == "ctc-last"
    assert metrics.infer_layout(last, "tokens") == "tokens"


def test_per_step_probabilities_without_a_task_are_asked_for() -> None:
    probs = _onehot([[0, 1, 0, 2]] * 2, 3)
    with pytest.raises(OnnxfiError, match="--task ctc.*--task tokens"):
        metrics.infer_layout(probs)
    with pytest.raises(OnnxfiError, match="--task ctc"):
        metrics.infer_layout(probs, "sequence")
    with pytest.raises(OnnxfiError, match="--task ctc"):
        choose_output({"probs": probs}, None)
    # logits (not probabilities) [N, T, H] keep today's reading: raw values (an encoder's hidden states)
    assert metrics.infer_layout(np.random.default_rng(1).normal(size=(2, 4, 3)).astype(np.float32)) == "raw"
    with pytest.raises(OnnxfiError, match="unknown task"):
        metrics.infer_layout(probs, "ocr")


def test_sequence_labels_choose_ctc_or_tokens_from_evidence() -> None:
    steps = [[0, 1, 1, 0, 2, 0], [2, 2, 0, 1, 0, 0]]
    probs = _onehot(steps, 3)
    # CTC labels: the characters, padded with -1 (L != T: only CTC can carry them)
    ctc_labels = np.array([[1, 2], [2, 1]], np.int64)
    choice = choose_output({"probs": probs}, ctc_labels)
    assert (choice.layout, choice.task, choice.metric) == ("ctc", "sequence", "seq_accuracy")
    assert choice.scores["probs"] == 1.0
    # per-step labels (L == T) that only the per-token reading reproduces
    tok_labels = np.array(steps, np.int64)
    choice = choose_output({"probs": probs}, tok_labels)
    assert (choice.layout, choice.metric) == ("tokens", "token_accuracy")
    assert choice.scores["probs"] == 1.0
    # L == T labels that both readings score alike: asked, not guessed
    both = np.array([[1, 2, -1, -1, -1, -1], [2, 1, -1, -1, -1, -1]])
    alike = _onehot([[1, 2, 0, 0, 0, 0], [2, 1, 0, 0, 0, 0]], 3)
    with pytest.raises(OnnxfiError, match="choose --task ctc or --task tokens"):
        choose_output({"probs": alike}, both)
    assert choose_output({"probs": alike}, both, task="ctc").layout == "ctc"
    # labels with an id the output cannot produce do not fit
    with pytest.raises(OnnxfiError, match="sequence labels"):
        choose_output({"probs": probs}, np.array([[1, 7], [2, 1]]), task="ctc")


def test_outcomes_of_a_ctc_output() -> None:
    gold_steps = [[0, 1, 1, 0, 2, 0], [2, 2, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]]
    gold = _onehot(gold_steps, 3)
    labels = np.array([[1, 2], [2, 1], [1, -1]])
    # a repeated step changes the argmax path but not the decoded sequence: tolerable
    faulty = _onehot([[0, 1, 1, 1, 2, 0], [2, 2, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0]], 3)
    row = classify({"y": gold}, {"y": faulty}, "y", "sequence", labels, 0.01, layout="ctc")
    assert row["outcome"] == "tolerable" and not row["sdc1"]
    assert row["metrics"]["token_error_rate"] == 0.0 and row["metrics"]["seq_accuracy"] == 1.0
    # sample 1 decodes "2 2 1" instead of "2 1": one of three samples, one insertion over 5 golden tokens
    faulty = _onehot([[0, 1, 1, 0, 2, 0], [2, 0, 2, 1, 0, 0], [1, 0, 0, 0, 0, 0]], 3)
    row = classify({"y": gold}, {"y": faulty}, "y", "sequence", labels, 0.01, layout="ctc")
    assert row["sdc1"] and row["outcome"] == "critical"  # seq_accuracy 1 -> 2/3
    assert row["images_changed"] == pytest.approx(1 / 3)
    assert row["metrics"]["token_error_rate"] == pytest.approx(1 / 5)
    assert row["metrics"]["task_value"] == pytest.approx(2 / 3) and row["metrics"]["clean_value"] == 1.0
    assert task_metric("sequence", faulty, gold, None, "ctc") == ("golden_agreement", pytest.approx(2 / 3))


def test_outcomes_of_a_per_token_output() -> None:
    gold = _onehot([[0, 1, 1, 2], [2, 2, 0, 1]], 3)
    faulty = _onehot([[0, 1, 2, 2], [2, 2, 0, 1]], 3)  # one step of eight changes its class
    row = classify({"y": gold}, {"y": faulty}, "y", "sequence", None, 0.9, layout="tokens")
    assert row["outcome"] == "sdc1" and row["images_changed"] == 0.5
    assert row["metrics"]["token_error_rate"] == pytest.approx(1 / 8)
    assert row["metrics"]["golden_agreement"] == 0.5


def _ctc_model(path: Path, t: int = 12, f: int = 6, c: int = 5) -> None:
    """x [N, T, F] -> MatMul W [F, C] (+ blank bias) -> Softmax over C: a tiny CTC head."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1.0, (f, c)).astype(np.float32)
    b = np.zeros(c, np.float32)
    b[0] = 1.5  # blank-heavy
    g = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W"], ["h"]), oh.make_node("Add", ["h", "B"], ["z"]),
         oh.make_node("Softmax", ["z"], ["probs"], axis=-1)],
        "ctc", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t, f])],
        [oh.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", t, c])],
        [onh.from_array(w, "W"), onh.from_array(b, "B")])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    x = rng.normal(0, 1.0, (16, t, f)).astype(np.float32)
    np.savez(path.with_suffix(".npz"), x=x)


def test_analyze_a_ctc_model_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "ctc.onnx"
    _ctc_model(model)
    data = model.with_suffix(".npz")
    fails(capsys, ["analyze", model, "--data", data, "--faults", 10, "--db", tmp_path / "a.db"],
          "--task ctc", "--task tokens")
    capsys.readouterr()
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "300", "--db", str(tmp_path / "c.db"),
               "--task", "ctc", "--bits", "30,29,28,27", "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "decoded sequence changed" in out and "Per token:" in out
    doc = json.loads((tmp_path / "c.json").read_text())
    s = doc["summary"]
    assert doc["clean"]["task"] == "sequence" and doc["clean"]["metric"] == "golden_agreement"
    assert s["rates"]["sdc1"]["k"] > 0  # exponent flips of the head's weights change decoded sequences
    tok = s["per_token"]["error_rate"]
    assert 0.0 < tok["rate"] and tok["lo"] <= tok["rate"] <= tok["hi"]
