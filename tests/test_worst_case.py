"""Worst-case flips (onnxfi.worstcase, onnxfi worst-case): the greedy choice on a hand-built model against an
independent numpy sweep of every flip, the candidate sets, the listed-flips plan form replayed by
``inject --from-plan``, and the acceptance on the zoo's digits_cnn (flips below 20% accuracy, replayed and
run with onnxruntime to exactly the reported accuracy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx.helper as oh
import onnxruntime as ort
import pytest
from conftest import REPO, ZOO, fails, make_model, save, tensor, vi
from onnx import TensorProto

from onnxfi.ber import apply_flips, ber_sizes, draw_flips
from onnxfi.cli import main
from onnxfi.data import make_dataset
from onnxfi.errors import OnnxfiError
from onnxfi.faults import BitFlip
from onnxfi.inject import inject
from onnxfi.model import LoadedModel, load_model
from onnxfi.plan import BER_SITE, Experiment, Plan
from onnxfi.sites import SiteIndex, enumerate_sites
from onnxfi.worstcase import (
    WORST_CASE_SCHEMA,
    candidate_flips,
    default_bits,
    find_worst_case,
    greedy_search,
    reference_probability,
)

MODEL = ZOO / "digits_cnn.onnx"
DATA = ZOO / "data" / "digits_eval.npz"
# float32 sign and exponent bits: the default search space of a float weight
SIGN_EXP = (31, 30, 29, 28, 27, 26, 25, 24, 23)

# the tiny classifier: logits = X @ W + B, X one-hot (x2) of the label; classes 0/1/2 hold 5/3/2 samples
LABELS = np.array([0] * 5 + [1] * 3 + [2] * 2, dtype=np.int64)
X = (np.eye(3, dtype=np.float32)[LABELS] * 2).astype(np.float32)
# diagonal 3.0 (bit 30 set: its flip makes it tiny); off-diagonal 0; bias 0.5 (bit 30 clear: its flip makes
# it 1.7e38, so every sample goes to that class). No single flip gives NaN/Inf.
W0 = np.diag(np.full(3, 3.0, np.float32)).astype(np.float32)
B0 = np.full(3, 0.5, np.float32)


def tiny_model(tmp_path: Path, labels: bool = True) -> tuple[Path, Path]:
    model = make_model([oh.make_node("Gemm", ["x", "W", "B"], ["logits"])],
                       [vi("x", TensorProto.FLOAT, ["N", 3])], [vi("logits", TensorProto.FLOAT, ["N", 3])],
                       [tensor("W", W0), tensor("B", B0)])
    path = save(model, tmp_path / "tiny.onnx")
    data = tmp_path / ("tiny.npz" if labels else "tiny_nolabels.npz")
    np.savez(data, **({"x": X, "labels": LABELS} if labels else {"x": X}))
    return path, data


def flipped(arr: np.ndarray, element: int, bit: int) -> np.ndarray:
    """``arr`` with one bit of one float32 element flipped, by an independent uint32 view."""
    out = np.array(arr, dtype=np.float32, copy=True).reshape(-1)
    out.view(np.uint32)[element] ^= np.uint32(1 << bit)
    return out.reshape(arr.shape)


def numpy_metric(w: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        logits = X @ w + b
    return float(np.mean(np.argmax(logits, axis=1) == reference))


def numpy_sweep(w: np.ndarray, b: np.ndarray, reference: np.ndarray,
                skip: set[tuple[str, int, int]]) -> dict[tuple[str, int, int], float]:
    """The metric of every single sign/exponent flip on top of (w, b): an exhaustive sweep in numpy."""
    out = {}
    for name, arr in (("W", w), ("B", b)):
        for e in range(arr.size):
            for bit in SIGN_EXP:
                if (name, e, bit) in skip:
                    continue
                fw, fb = (flipped(w, e, bit), b) if name == "W" else (w, flipped(b, e, bit))
                out[(name, e, bit)] = numpy_metric(fw, fb, reference)
    return out


def _change(values: np.ndarray, element: int, bit: int) -> float:
    """|new - old| of one flip; a flip to NaN/Inf counts as the largest."""
    d = abs(float(flipped(values, element, bit)[element]) - float(values[element]))
    return d if np.isfinite(d) else np.inf


def _load(path: Path) -> tuple[LoadedModel, SiteIndex]:
    loaded = load_model(path)
    return loaded, enumerate_sites(loaded.model, loaded.value_shapes)


@pytest.mark.parametrize("labels", [True, False], ids=["accuracy", "golden-agreement"])
def test_greedy_choice_is_the_worst_single_flip_of_an_independent_sweep(tmp_path: Path, labels: bool) -> None:
    path, data_path = tiny_model(tmp_path, labels)
    loaded, index = _load(path)
    data = make_dataset(loaded.inputs(), data_path)
    sites = index.select("weights")
    reference = LABELS if labels else np.argmax(X @ W0 + B0, axis=1)
    sweep = numpy_sweep(W0, B0, reference, set())
    best = min(sweep.values())
    assert [k for k, v in sweep.items() if v == best] == [("B", 2, 30)] and best == pytest.approx(0.2)

    result, choice = find_worst_case(loaded, index, sites, data, 0.25, candidates=256, seed=0)
    assert result.metric == ("accuracy" if labels else "golden_agreement") and choice.name == "logits"
    assert result.clean == 1.0 and result.stop == "target" and result.reached
    assert result.flips() == [("B", 2, 30)]
    step = result.steps[0]
    assert step.metric == best and step.old == 0.5 and step.new == float(flipped(B0, 2, 30)[2])
    assert step.source == "every" and step.candidates == 12 * len(SIGN_EXP)  # the whole space: 12 elements x 9 bits
    assert result.runs == 1 + 12 * len(SIGN_EXP) and result.failed == 0
    # the model behind the index keeps the chosen flip
    np.testing.assert_array_equal(index.weight_array(index.get("B")).view(np.uint32),
                                  flipped(B0, 2, 30).view(np.uint32))


def test_greedy_continues_on_top_of_the_chosen_flips_and_stops_when_nothing_lowers(tmp_path: Path) -> None:
    path, data_path = tiny_model(tmp_path)
    loaded, index = _load(path)
    data = make_dataset(loaded.inputs(), data_path)
    result, _ = find_worst_case(loaded, index, index.select("weights"), data, 0.1, candidates=256,
                                max_flips=5)
    # step 2 sweeps every flip on top of B[2] bit 30 (in numpy): none goes below 0.2, so the search stalls
    after = numpy_sweep(W0, flipped(B0, 2, 30), LABELS, {("B", 2, 30)})
    assert min(after.values()) >= 0.2
    assert result.flips() == [("B", 2, 30)] and result.stop == "stalled" and not result.reached
    assert result.runs == 1 + 2 * 12 * len(SIGN_EXP) - 1  # the second step leaves out the chosen flip
    # no flips allowed, or a clean model already below the target: nothing runs but the clean model
    loaded, index = _load(path)
    none, _ = find_worst_case(loaded, index, index.select("weights"), data, 0.5, max_flips=0)
    assert none.steps == [] and none.stop == "max-flips" and none.runs == 1
    digits, digits_index = _load(MODEL)
    clean, _ = find_worst_case(digits, digits_index, digits_index.select("weights"),
                               make_dataset(digits.inputs(), DATA), 1.0)
    assert clean.clean < 1.0 and clean.stop == "clean" and clean.steps == [] and clean.runs == 1 and clean.reached
    with pytest.raises(OnnxfiError, match="target"):
        find_worst_case(loaded, index, index.select("weights"), data, 0.0)


@pytest.mark.parametrize("tie_break", [True, False])
def test_a_plateau_is_crossed_by_the_tie_break_and_stalls_without_it(tmp_path: Path, tie_break: bool) -> None:
    path, _ = tiny_model(tmp_path)
    _, index = _load(path)
    bias = index.get("B")

    def evaluate() -> tuple[float, float]:
        # the metric falls only when B[0] and B[1] both have bit 30 flipped; B[0]'s flip alone lowers the
        # tie-break (a probability) the most, B[1]'s a little
        words = index.weight_array(bias).view(np.uint32) ^ B0.view(np.uint32)
        f0, f1 = bool(words[0] == 1 << 30), bool(words[1] == 1 << 30)
        metric = 0.0 if f0 and f1 else 1.0
        return metric, (1.0 - 0.4 * f0 - 0.1 * f1) if tie_break else float("nan")

    steps, evaluated, failed, stop = greedy_search(index, index.select("weights"), evaluate, evaluate(), 0.5,
                                                   max_flips=5)
    if tie_break:
        assert [(s.site, s.index, s.bit) for s in steps] == [("B", 0, 30), ("B", 1, 30)] and stop == "target"
        assert [s.metric for s in steps] == [1.0, 0.0] and steps[0].probability == pytest.approx(0.6)
        assert evaluated == 108 + 107 and failed == 0
    else:
        assert steps == [] and stop == "stalled" and evaluated == 108


def test_reference_probability_is_the_mean_softmax_of_the_reference_class() -> None:
    scores = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [np.nan, 1.0]], dtype=np.float32)
    assert reference_probability(scores, np.array([0, 0, 1])) == pytest.approx((0.5 + 0.75 + 0.0) / 3)
    assert reference_probability(scores.reshape(3, 2, 1, 1), np.array([1, 1, 0])) == pytest.approx(0.25 / 3 + 0.5 / 3)


def test_candidates_are_deterministic_distinct_and_ranked_then_random() -> None:
    loaded = load_model(MODEL)
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    sites = index.select("weights")
    a, src_a = candidate_flips(index, sites, 64, np.random.default_rng(7))
    b, src_b = candidate_flips(index, sites, 64, np.random.default_rng(7))
    c, _ = candidate_flips(index, sites, 64, np.random.default_rng(8))
    assert a == b and src_a == src_b and len(a) == len(set(a)) == 64
    assert src_a == ["change"] * 32 + ["random"] * 32
    assert a[:32] == c[:32] and a[32:] != c[32:]  # the ranked half does not depend on the seed
    # round-robin: the first 17 are one per weight, each that weight's largest change of a sign/exponent flip
    assert [f[0] for f in a[:17]] == [s.name for s in sites]
    for name, element, bit in a[:17]:
        site = index.get(name)
        assert bit in default_bits(site) == SIGN_EXP
        values = index.weight_array(site).reshape(-1)
        assert _change(values, element, bit) == max(_change(values, e, bb) for e in range(values.size)
                                                    for bb in SIGN_EXP)
    # a chosen flip is never a candidate again; --bits cuts the space
    chosen = [a[0]]
    again, _ = candidate_flips(index, sites, 64, np.random.default_rng(7), exclude=chosen)
    assert a[0] not in again and len(again) == 64
    mant, _ = candidate_flips(index, sites, 40, np.random.default_rng(0), bits=[3, 2])
    assert {f[2] for f in mant} <= {2, 3}
    with pytest.raises(OnnxfiError):
        candidate_flips(index, sites, 0, np.random.default_rng(0))


def test_listed_flips_replay_bit_exactly_as_single_injections(tmp_path: Path) -> None:
    loaded = load_model(MODEL)
    index = enumerate_sites(loaded.model, loaded.value_shapes)
    flips = [("features.7.weight", 9756, 30), ("classifier.2.bias", 2, 31), ("features.7.weight", 9756, 23)]
    exp = Experiment(0, BER_SITE, "weight", 0, None, {"kind": "ber", "rate": 1e-5, "sites": ["features.7.weight",
                     "classifier.2.bias"], "bits": None, "flips": [list(f) for f in flips]}, 0)
    sizes = ber_sizes(index)
    assert draw_flips(exp, sizes) == flips  # listed order, whatever the rate and seed
    apply_flips(index, draw_flips(exp, sizes))
    # the same flips one at a time through onnxfi's single-fault injection
    ref = load_model(MODEL)
    ref_index = enumerate_sites(ref.model, ref.value_shapes)
    for name, element, bit in flips:
        inject(ref, ref_index, name, element, BitFlip((bit,)))
    for name in ("features.7.weight", "classifier.2.bias"):
        got, want = index.weight_array(index.get(name)), ref_index.weight_array(ref_index.get(name))
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    for bad, needle in (([["nope", 0, 30]], "nope"), ([["classifier.2.bias", 10, 30]], "outside"),
                        ([["classifier.2.bias", 0, 32]], "outside"), ([["classifier.2.bias", 0]], "is not \\[site")):
        with pytest.raises(OnnxfiError, match=needle):
            draw_flips(Experiment(0, BER_SITE, "weight", 0, None, {"kind": "ber", "rate": 0.0, "sites": [],
                                                                   "bits": None, "flips": bad}, 0), sizes)


def _ort_accuracy(path: Path, batch: int | None) -> float:
    """The accuracy of a model file on the digits eval set with onnxruntime alone (no onnxfi code)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    d = np.load(DATA)
    x, labels = d["input"], d["labels"]
    step = batch or len(x)
    logits = np.concatenate([sess.run(None, {"input": x[i:i + step]})[0] for i in range(0, len(x), step)])
    return float(np.mean(np.argmax(logits, axis=1) == labels))  # NaN ranks first, as onnxfi's top-1


# the acceptance (sign/exponent bits: one flip is enough on digits_cnn), and a search held to one mantissa
# bit of the first BatchNorm, which takes several flips and stops at --max-flips: every prefix replays
@pytest.mark.parametrize("extra, reached", [([], True),
                                            (["--sites", "^features[.]1[.]", "--bits", "22", "--max-flips", "3"], False)],
                         ids=["acceptance", "three-mantissa-flips"])
def test_digits_cnn_below_20_percent_and_inject_replays_the_reported_accuracy(tmp_path: Path, extra: list[str],
                                                                              reached: bool) -> None:
    plan_path, doc_path = tmp_path / "wc.plan.json", tmp_path / "wc.json"
    rc = main(["worst-case", "digits_cnn", "--target-accuracy", "0.2", "--candidates", "48", "--seed", "1", *extra,
               "-o", str(plan_path), "--json", str(doc_path)])
    assert rc == 0
    doc = json.loads(doc_path.read_text())
    assert doc["schema"] == WORST_CASE_SCHEMA and doc["metric"] == "accuracy"
    assert doc["reached"] is reached and (doc["final"] < 0.2) is reached
    assert doc["stop"] == ("target" if reached else "max-flips")
    assert doc["clean"] == pytest.approx(0.997222, abs=1e-6)
    n = doc["n_flips"]
    assert n == len(doc["flips"]) == (n if reached else 3) >= 1 and doc["experiment"] == n - 1
    assert doc["runs"] == 1 + sum(f["candidates"] for f in doc["flips"])
    metrics = [f["metric"] for f in doc["flips"]]
    assert all(x > y for x, y in zip([doc["clean"], *metrics], metrics)) and metrics[-1] == doc["final"]
    plan = Plan.load(plan_path)
    assert len(plan.experiments) == n and plan.experiments[-1].fault["flips"] == [
        [f["site"], f["index"], f["bit"]] for f in doc["flips"]]
    # every prefix replays to the accuracy reported after its last flip, through inject and onnxruntime
    for k in range(n):
        faulty = tmp_path / f"worst{k}.onnx"
        assert main(["inject", "digits_cnn", "--from-plan", str(plan_path), "--experiment", str(k),
                     "-o", str(faulty), "--json", str(tmp_path / f"inject{k}.json")]) == 0
        rec = json.loads((tmp_path / f"inject{k}.json").read_text())
        assert rec["n_flips"] == k + 1 and rec["fault"]["spec"] == f"flips:{k + 1}"
        assert [(f["site"], f["index"], f["bit"]) for f in rec["flips"]] == [
            (f["site"], f["index"], f["bit"]) for f in doc["flips"][:k + 1]]
        assert _ort_accuracy(faulty, 64) == metrics[k]
    final = tmp_path / f"worst{n - 1}.onnx"
    assert _ort_accuracy(final, None) == doc["final"]  # one batch of 360: the same decisions
    run_json = tmp_path / "run.json"
    assert main(["run", str(final), "--data", str(DATA), "--repeat", "1", "--json", str(run_json)]) == 0
    assert json.loads(run_json.read_text())["accuracy"] == doc["final"]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, data = tiny_model(tmp_path)
    fails(capsys, ["worst-case", path, "--data", data, "--target-accuracy", "0"], "--target-accuracy")
    fails(capsys, ["worst-case", path, "--data", data, "--target-accuracy", "0.5", "--candidates", "0"], "--candidates")
    fails(capsys, ["worst-case", path, "--data", data, "--target-accuracy", "0.5", "--sites", "nothing"], "--sites")
    fails(capsys, ["worst-case", path, "--data", data, "--target-accuracy", "0.5", "-o", tmp_path / "p.txt"], ".json")


def test_cli_end_to_end_as_a_subprocess(tmp_path: Path) -> None:
    path, data = tiny_model(tmp_path)
    plan = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, "-m", "onnxfi", "worst-case", str(path), "--data", str(data),
                           "--target-accuracy", "0.25", "-o", str(plan), "--json", "-"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == WORST_CASE_SCHEMA and doc["n_flips"] == 1 and doc["final"] == pytest.approx(0.2)
    assert doc["flips"][0] == {
        "site": "B", "index": 2, "coords": [2], "bit": 30, "dtype": "float32", "old_value": 0.5,
        "new_value": float(flipped(B0, 2, 30)[2]), "metric": doc["final"], "ref_probability": pytest.approx(0.2),
        "candidates": 108, "source": "every"}
    assert "flips needed: 1" in proc.stderr and "model runs: 109" in proc.stderr
    assert Plan.load(plan).experiments[0].fault["flips"] == [["B", 2, 30]]
