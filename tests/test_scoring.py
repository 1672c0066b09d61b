"""onnxfi.scoring: the scored output is chosen from evidence (labels on the clean run) or documented shape
rules, ambiguity is an error naming --output, layouts (NCHW/NHWC, binary masks) decide SDC-1, and the CLIs
(run, harden, analyze) score the chosen output and say why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from onnx import TensorProto

from onnxfi import metrics
from onnxfi.cli import main
from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import classify
from onnxfi.scoring import TIE_MARGIN, choose_output, plausibility

N = 8
RNG = np.random.default_rng(21)
X = RNG.normal(size=(N, 3)).astype(np.float32)
W_SCORES = np.array([[1.0, -1.0], [0.5, 0.25], [-0.75, 1.0]], dtype=np.float32)
W_BOXES = RNG.normal(size=(3, 4)).astype(np.float32)
# boxes' last two coordinates are large: read as class scores, they always "predict" class 2 or 3
BOX_BIAS = np.array([0.0, 0.0, 10.0, 10.0], dtype=np.float32)
LABELS = np.argmax(X @ W_SCORES, axis=1).astype(np.int64)


def _detector() -> onnx.ModelProto:
    """x[N,3] -> boxes = x @ Wb + c [N,4] (first output), scores = x @ Ws [N,2] (second)."""
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "Wb"], ["bm"], name="mm_boxes"),
         oh.make_node("Add", ["bm", "c"], ["boxes"], name="add_boxes"),
         oh.make_node("MatMul", ["x", "Ws"], ["scores"], name="mm_scores")],
        "detector",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [oh.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
         oh.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        initializer=[onh.from_array(W_BOXES, "Wb"), onh.from_array(BOX_BIAS, "c"), onh.from_array(W_SCORES, "Ws")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def _twins() -> onnx.ModelProto:
    """x[N,2] -> a = x @ I, b = x @ -I: two class outputs that decide oppositely."""
    eye = np.eye(2, dtype=np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "Wa"], ["a"], name="mm_a"), oh.make_node("MatMul", ["x", "Wn"], ["b"], name="mm_b")],
        "twins",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [oh.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
         oh.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2])],
        initializer=[onh.from_array(eye, "Wa"), onh.from_array(-eye, "Wn")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


TWIN_X = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.float32)
TWIN_LABELS = np.array([0, 1, 1, 0])  # a is right on the first two, b on the last two: 0.5 each


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("detector")
    onnx.save(_detector(), d / "det.onnx")
    np.savez(d / "data.npz", x=X, labels=LABELS)
    return d / "det.onnx", d / "data.npz"


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("twins")
    onnx.save(_twins(), d / "twins.onnx")
    np.savez(d / "data.npz", x=TWIN_X, labels=TWIN_LABELS)
    return d / "twins.onnx", d / "data.npz"


def _clean() -> dict[str, np.ndarray]:
    return {"boxes": X @ W_BOXES + BOX_BIAS, "scores": X @ W_SCORES}


# ------------------------------------------------------------------------------------ with labels


def test_labels_pick_the_output_that_agrees_and_name_the_runner_up() -> None:
    choice = choose_output(_clean(), LABELS)
    assert (choice.name, choice.task, choice.layout) == ("scores", "classification", "classes")
    assert choice.runner_up == "boxes"
    assert choice.scores == {"boxes": 0.0, "scores": 1.0} and choice.metric == "accuracy"
    assert "'scores' (classes) accuracy 1.0000" in choice.reason and "runner-up 'boxes' 0.0000" in choice.reason
    assert plausibility(choice, 1.0) is None


def test_requested_output_wins_and_an_implausible_metric_warns() -> None:
    choice = choose_output(_clean(), LABELS, requested="boxes")
    assert choice.name == "boxes" and choice.reason == "--output boxes" and choice.scores == {"boxes": 0.0}
    assert plausibility(choice, 0.0) == (
        "accuracy 0.0000 is at or below chance (0.25) on output 'boxes': is --output right? "
        "outputs: boxes [N,4], scores [N,2]"
    )
    with pytest.raises(OnnxfiError, match=r"--output 'logits' is not a model output; outputs: boxes \[N,4\], "
                                          r"scores \[N,2\]"):
        choose_output(_clean(), LABELS, requested="logits")


def test_a_tie_that_decides_differently_is_an_error_listing_the_outputs() -> None:
    outs = {"a": TWIN_X, "b": -TWIN_X}
    with pytest.raises(OnnxfiError) as e:
        choose_output(outs, TWIN_LABELS)
    msg = str(e.value)
    assert "'a' and 'b' agree with the labels within" in msg and "decide differently" in msg
    assert "outputs: a [N,2], b [N,2]" in msg and "--output NAME" in msg
    # a clear winner is not a tie: the labels of output a
    assert choose_output(outs, np.array([0, 1, 0, 1])).name == "a"
    assert TIE_MARGIN > 0


def test_outputs_that_decide_the_same_are_equivalent_and_scores_beat_ids() -> None:
    probs = metrics.softmax(X @ W_SCORES)
    outs = {"label": LABELS.copy(), "probabilities": probs}
    choice = choose_output(outs, LABELS)  # skl2onnx's classifier outputs: argmax ids and probabilities
    assert choice.name == "probabilities" and choice.layout == "classes"
    assert "make the same decisions on every sample" in choice.reason
    assert choose_output(outs, None).name == "probabilities"


def test_labels_that_fit_no_output_of_several_are_an_error() -> None:
    with pytest.raises(OnnxfiError, match=r"labels of shape \[8, 5, 5\] fit no output.*--output NAME"):
        choose_output(_clean(), np.zeros((N, 5, 5), dtype=np.int64))
    # a single output that makes decisions: labels that cannot score it are an error saying why (the
    # accuracy line would otherwise be missing without a word)
    with pytest.raises(OnnxfiError, match=r"labels of shape \[8, 5, 5\] do not fit output 'y' \(classes\)"):
        choose_output({"y": X}, np.zeros((N, 5, 5), dtype=np.int64))
    # read as regression (raw values) labels score nothing, and the shape rules read it
    only = choose_output({"y": X}, np.zeros((N, 5, 5), dtype=np.int64), task="regression")
    assert only.name == "y" and only.layout == "raw" and "fit it in no layout" in only.reason


# ------------------------------------------------------------------------------------ without labels


def test_without_labels_probability_rows_win_and_two_decision_outputs_are_ambiguous() -> None:
    clean = _clean()
    probs = {"boxes": clean["boxes"], "scores": metrics.softmax(clean["scores"])}
    choice = choose_output(probs, None)
    assert choice.name == "scores" and "whose values are probabilities" in choice.reason and choice.metric is None
    assert plausibility(choice, 0.0) is None  # no labels: nothing to judge
    with pytest.raises(OnnxfiError, match=r"'boxes' and 'scores' both make decisions.*outputs: boxes \[N,4\], "
                                          r"scores \[N,2\]; choose one with --output NAME"):
        choose_output(clean, None)
    with pytest.raises(OnnxfiError, match="no output looks like class scores"):
        choose_output({"d1": np.zeros((N, 3, 3)), "d2": np.zeros((N, 5))[:, :1]}, None)


def test_single_output_keeps_todays_reading() -> None:
    assert choose_output({"y": X}, None).layout == "classes"
    assert choose_output({"y": np.zeros((2, 11, 8, 8), np.float32)}, None).layout == "nchw"
    assert choose_output({"y": np.zeros((2, 5), np.float32)}, None, task="regression").layout == "raw"


# ------------------------------------------------------------------------------------ layouts


def _person_mask(n: int = 2, h: int = 6, w: int = 6) -> np.ndarray:
    rng = np.random.default_rng(3)
    # values in [0, 1] away from the 0.5 threshold except one pixel per image
    m = np.where(rng.random((n, h, w, 1)) > 0.5, 0.9, 0.1).astype(np.float32)
    m[:, 0, 0, 0] = 0.51
    return m


def test_nhwc_single_channel_mask_is_a_binary_mask_not_256_classes() -> None:
    mask = _person_mask()
    labels = (mask[..., 0] > 0.5).astype(np.int64)
    choice = choose_output({"mask": mask}, labels)
    assert (choice.layout, choice.task, choice.num_classes) == ("mask-nhwc", "segmentation", 2)
    assert choice.scores == {"mask": 1.0}
    big = np.full((1, 256, 256, 1), 0.2, np.float32)
    assert metrics.infer_layout(big) == "mask-nhwc" and choose_output({"m": big}, None).layout == "mask-nhwc"
    assert metrics.mask_threshold(mask) == 0.5 and metrics.mask_threshold(mask * 8 - 4) == 0.0


def test_mask_sdc1_comes_from_pixel_flips_only() -> None:
    mask = _person_mask()
    labels = (mask[..., 0] > 0.5).astype(np.int64)
    golden = {"mask": mask}
    small = mask.copy()
    small[1, 2, 3, 0] += np.float32(1e-4)  # a tiny change that flips no pixel
    row = classify(golden, {"mask": small}, "mask", "segmentation", labels, 0.01, layout="mask-nhwc")
    assert row["outcome"] == "tolerable" and not row["sdc1"] and row["images_changed"] == 0.0
    assert row["metrics"]["task_metric"] == "miou" and row["metrics"]["clean_value"] == 1.0
    assert row["metrics"]["err_max_abs"] == pytest.approx(1e-4, rel=1e-2)
    flip = mask.copy()
    flip[1, 0, 0, 0] = np.float32(0.49)  # the one pixel near the threshold crosses it
    row = classify(golden, {"mask": flip}, "mask", "segmentation", labels, 0.5, layout="mask-nhwc")
    assert row["sdc1"] and row["outcome"] == "sdc1" and row["images_changed"] == 0.5
    assert row["metrics"]["pixel_change_frac"] == pytest.approx(1 / (2 * 36))
    nan = mask.copy()
    nan[0, 3, 3, 0] = np.nan
    assert classify(golden, {"mask": nan}, "mask", "segmentation", labels, 0.01, layout="mask-nhwc")["due"]


def test_nchw_and_nhwc_multiclass_segmentation() -> None:
    rng = np.random.default_rng(4)
    nchw = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    labels = np.argmax(nchw, axis=1)
    nhwc = np.ascontiguousarray(np.moveaxis(nchw, 1, -1))
    assert choose_output({"seg": nchw, "aux": rng.normal(size=(2, 3, 4, 5))}, labels).name == "seg"
    assert choose_output({"seg": nhwc}, labels).layout == "nhwc"
    assert metrics.infer_layout(np.zeros((1, 64, 64, 21), np.float32)) == "nhwc"
    faulty = nchw.copy()
    faulty[1, :, 2, 2] = faulty[1, ::-1, 2, 2] + 10  # pixel (2, 2) of image 1 changes class
    for layout, gold, out in (("nchw", nchw, faulty), ("nhwc", nhwc, np.moveaxis(faulty, 1, -1))):
        row = classify({"s": gold}, {"s": out}, "s", "segmentation", labels, 0.9, layout=layout)
        assert row["sdc1"] and row["images_changed"] == 0.5, layout
        assert row["metrics"]["num_classes"] == 3 and row["metrics"]["task_metric"] == "miou"


# ------------------------------------------------------------------------------------ CLIs


def _run(capsys: pytest.CaptureFixture[str], argv: list[object]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_run_scores_the_chosen_output_and_says_why(
    detector: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = detector
    rc, out, err = _run(capsys, ["run", model, "--data", data, "--repeat", "1"])
    assert rc == 0, err
    assert "scored output: scores (classes): best agreement with the labels" in out
    assert "runner-up 'boxes' 0.0000" in out and "accuracy  1.0000 (8 labelled samples)" in out
    assert err == ""
    rc, out, _ = _run(capsys, ["run", model, "--data", data, "--repeat", "1", "--json"])
    rec = json.loads(out)
    assert rc == 0 and rec["accuracy"] == 1.0 and rec["output_choice"]["name"] == "scores"
    assert rec["output_choice"]["runner_up"] == "boxes" and rec["warning"] is None
    rc, out, err = _run(capsys, ["run", model, "--data", data, "--repeat", "1", "--output", "boxes"])
    assert rc == 0 and "accuracy  0.0000" in out
    assert "warning:" in err and "is at or below chance (0.25) on output 'boxes': is --output right?" in err


def test_run_exits_2_on_ambiguity(twins: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, data = twins
    rc, _, err = _run(capsys, ["run", model, "--data", data, "--repeat", "1"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("onnxfi: error: cannot tell which output")
    assert "outputs: a [N,2], b [N,2]" in lines[0] and "--output NAME" in lines[0]
    rc, out, _ = _run(capsys, ["run", model, "--data", data, "--repeat", "1", "--output", "b"])
    assert rc == 0 and "accuracy  0.5000" in out


def test_harden_scores_the_chosen_output(
    detector: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = detector
    rc, out, err = _run(capsys, ["harden", model, "--method", "protect", "--eval", data, "-o", tmp_path / "h.onnx",
                                 "--repeat", "1"])
    assert rc == 0, err
    assert "scored output: scores (classes)" in out and "runner-up 'boxes'" in out
    assert "accuracy: 1.0000 -> 1.0000" in out and "(output scores)" in out
    rc, out, _ = _run(capsys, ["harden", model, "--method", "protect", "--eval", data, "--out", tmp_path / "j.onnx",
                               "--repeat", "1", "--json"])
    report = json.loads(out)
    assert rc == 0 and report["comparison"]["output"] == "scores" and report["output_choice"]["runner_up"] == "boxes"
    assert report["output"] == str(tmp_path / "j.onnx")


@pytest.mark.parametrize(("argv", "needle"), [
    (["--output", "hardened.onnx"], "use -o for the hardened file"),
    (["--output", "hardened.onnx", "-o", "OUT"], "use -o for the hardened file"),
    (["--output", "logits", "-o", "OUT"], "--output 'logits' is not a model output (outputs: boxes [N,4], scores [N,2])"),
    ([], "-o OUT.onnx is required"),
])
def test_harden_output_flag_errors(
    detector: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    model, data = detector
    argv = [str(tmp_path / "x.onnx") if a == "OUT" else a for a in argv]
    rc, _, err = _run(capsys, ["harden", model, "--method", "protect", "--eval", data, *argv])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "x.onnx").exists()


def test_harden_exits_2_on_ambiguity_before_writing(
    twins: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = twins
    rc, _, err = _run(capsys, ["harden", model, "--method", "protect", "--eval", data, "-o", tmp_path / "t.onnx"])
    assert rc == 2 and "cannot tell which output" in err and not (tmp_path / "t.onnx").exists()


def test_analyze_scores_the_output_the_labels_fit(
    detector: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = detector
    report = tmp_path / "r.json"
    rc, _, err = _run(capsys, ["analyze", model, "--data", data, "--faults", "24", "--seed", "1",
                               "--db", tmp_path / "r.db", "--json", report])
    assert rc == 0, err
    clean = json.loads(report.read_text())["clean"]
    assert clean["primary_output"] == "scores" and clean["metric"] == "accuracy" and clean["value"] == 1.0
    assert clean["output_choice"]["runner_up"] == "boxes" and clean["output_choice"]["layout"] == "classes"
    assert "runner-up 'boxes'" in clean["output_choice"]["reason"] and clean["warning"] is None
    rc, _, err = _run(capsys, ["analyze", model, "--data", data, "--faults", "8", "--output", "boxes",
                               "--db", tmp_path / "b.db", "--json", tmp_path / "b.json"])
    clean = json.loads((tmp_path / "b.json").read_text())["clean"]
    assert rc == 0 and clean["primary_output"] == "boxes"
    assert "at or below chance (0.25) on output 'boxes'" in clean["warning"]


def test_analyze_exits_2_on_ambiguity(
    twins: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = twins
    rc, _, err = _run(capsys, ["analyze", model, "--data", data, "--faults", "8", "--db", tmp_path / "t.db"])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "cannot tell which output" in lines[0] and "--output NAME" in lines[0]


def test_raw_values_are_not_described_as_top1_decisions() -> None:
    """Read as regression, SDC-1 flags any changed output value (there is no decision): the tables say so,
    and show no SDC-5 row (a top-5 needs class scores; it would read 0% whatever the faults did)."""
    from onnxfi.outcomes import decision_words, flag_description, shown_flags

    gold = np.linspace(-1, 1, 40, dtype=np.float32).reshape(4, 10)
    out = gold.copy()
    out[2, 3] = np.nextafter(out[2, 3], np.float32(2))  # one value, one ulp: no class could change
    row = classify({"y": gold}, {"y": out}, "y", "regression", None, 0.01, layout="raw")
    assert row["sdc1"] and not row["masked"]
    assert "top-1" not in flag_description("sdc1", "regression", 0.01)
    assert "sdc5" not in shown_flags("regression") and "sdc5" in shown_flags("classification")
    assert decision_words("regression") == "output values"
