"""Engine acceptance: known-answer campaigns on a tiny classifier whose every fault outcome is
computable by hand (and recomputed independently with numpy), in port mode and in naive mode, and the
outcome classifier on hand-made outputs.

The model (``campaign_helpers.kat_model``) is ``y = x @ W + b`` with 6 classes and 2 samples, each with
one input of exactly 1.0: every output is one exact product plus a bias, so numpy reproduces ONNX
Runtime bit for bit. Row 2 of ``W`` only meets inputs of exactly 0.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from campaign_helpers import (
    KAT_B,
    KAT_W,
    KAT_X,
    expected_outcome,
    flip,
    kat_expected,
    kat_forward,
    row_key,
    save_kat,
)

from onnxfi.campaign import run_campaign
from onnxfi.engine import Engine, EngineConfig
from onnxfi.model import load_model
from onnxfi.outcomes import OUTCOMES, classify
from onnxfi.plan import Experiment, Plan, make_plan
from onnxfi.sites import enumerate_sites
from onnxfi.store import Store

ALL_SITES = "^(W|b|h|y)$"
NAIVE_BITS = [0, 22, 23, 30, 31]


def _plan(model: Path, pattern: str, faults: tuple[str, ...] = ("flip",), bits: list[int] | None = None) -> Plan:
    loaded = load_model(str(model))
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("all", pattern)
    plan = make_plan(model, sites, faults=faults, bits=bits, n_faults=10**9, seed=3)
    assert plan.mode == "exhaustive"
    return plan


def _run(plan: Plan, cfg: EngineConfig, db: Path) -> list[dict[str, Any]]:
    with Store(db) as store:
        result = run_campaign(plan, cfg, store)
        rows = list(store.rows())
    assert result.executed == len(plan.experiments)
    assert not result.interrupted and not result.early_stopped
    return rows


def _expected(row: dict[str, Any], plan: Plan) -> str:
    exp = plan.experiment(row["id"])
    return kat_expected(exp.site, exp.index, exp.fault)


@pytest.fixture(scope="module")
def kat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_kat(tmp_path_factory.mktemp("kat"))


@pytest.fixture(scope="module")
def port_run(kat: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Plan, list[dict[str, Any]]]:
    """Every bit of every element of W, b (weights) and h, y (activations): 36 x 32 experiments."""
    model, data = kat
    plan = _plan(model, ALL_SITES)
    rows = _run(plan, EngineConfig(str(model), data_path=str(data)), tmp_path_factory.mktemp("port") / "r.db")
    return plan, rows


# ------------------------------------------------------------------------------------- reference


def test_reference_model_matches_onnxruntime(kat: tuple[Path, Path]) -> None:
    """The numpy reference reproduces ONNX Runtime exactly, so hand-computed outcomes are meaningful."""
    model, _ = kat
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (y,) = sess.run(["y"], {"x": KAT_X})
    assert y.tobytes() == kat_forward(KAT_X, KAT_W, KAT_B).tobytes()
    assert np.argmax(y, axis=1).tolist() == [0, 1]


@pytest.mark.parametrize(
    ("site", "index", "bit", "outcome"),
    [
        ("W", 0, 30, "due"),  # W[0,0] = 1.0 -> +inf
        ("W", 5, 30, "due"),  # W[0,5] = -1.0 -> -inf
        ("W", 12, 30, "due"),  # W[2,0] = 1.5 -> NaN, and 0 * NaN = NaN although its input is 0
        ("W", 0, 31, "critical"),  # W[0,0] = -1: sample 0 (correctly labelled) changes class
        ("W", 7, 31, "sdc5"),  # W[1,1] = -1: sample 1's class drops to last place
        ("W", 11, 30, "sdc1"),  # W[1,5] = 2^124: sample 1 becomes class 5 (its label: no accuracy loss)
        ("W", 13, 31, "masked"),  # W[2,1] sign: multiplied by 0, then absorbed by the sum
        ("W", 1, 0, "tolerable"),  # W[0,1] LSB: output differs, no decision does
        ("W", 2, 31, "tolerable"),  # W[0,2] = -0.5: still below class 0
        ("b", 0, 31, "masked"),  # b[0] = -0.0: x + (-0) == x bitwise
        ("b", 5, 30, "sdc1"),  # b[5] = 2.0: sample 1 becomes class 5
        ("h", 0, 31, "critical"),  # activation h[:, 0] negated in both samples
        ("y", 1, 31, "sdc5"),  # output y[:, 1] negated: sample 1's class drops to last place
    ],
)
def test_reference_outcomes_by_hand(site: str, index: int, bit: int, outcome: str) -> None:
    assert kat_expected(site, index, flip(bit)) == outcome


# ---------------------------------------------------------------------------------- port mode


def test_port_mode_every_row_matches_hand_computed_outcome(port_run: tuple[Plan, list[dict[str, Any]]]) -> None:
    plan, rows = port_run
    assert plan.population == 36 * 32 == len(plan.experiments) == len(rows)
    assert sorted(r["id"] for r in rows) == list(range(len(rows)))
    wrong = [(r["site"], r["idx"], r["bit"], r["outcome"], _expected(r, plan)) for r in rows
             if r["outcome"] != _expected(r, plan)]
    assert wrong == []
    seen = Counter(r["outcome"] for r in rows)
    # the model is built so that every outcome but crash occurs, at weights and at activations
    assert set(seen) == set(OUTCOMES) - {"crash"}
    for kind in ("weight", "activation"):
        kinds = {r["outcome"] for r in rows if r["kind"] == kind}
        assert {"masked", "tolerable", "sdc1", "sdc5", "critical", "due"} - kinds <= {"masked"}


def test_port_mode_rows_describe_their_experiment(port_run: tuple[Plan, list[dict[str, Any]]]) -> None:
    plan, rows = port_run
    for r in rows:
        exp = plan.experiment(r["id"])
        assert (r["site"], r["kind"], r["idx"], r["bit"]) == (exp.site, exp.kind, exp.index, exp.bit)
        assert r["fault"] == f"flip:{exp.bit}"
        assert r["kind"] == ("weight" if exp.site in ("W", "b") else "activation")
        assert r["error"] is None and r["crash"] is False
        assert r["time_s"] is not None and r["time_s"] >= 0


def test_port_mode_flags_are_consistent_with_outcomes(port_run: tuple[Plan, list[dict[str, Any]]]) -> None:
    plan, rows = port_run
    for r in rows:
        o = r["outcome"]
        assert r["masked"] == (o == "masked")
        assert r["due"] == (o == "due")
        assert r["critical"] == (o == "critical") or o == "due"
        if o in ("sdc1", "sdc5", "critical"):
            assert r["sdc1"], r  # the SDC-1 flag counts every changed decision
        if o == "sdc5":
            assert r["sdc5"]
        if o in ("masked", "tolerable"):
            assert not (r["sdc1"] or r["sdc5"] or r["critical"] or r["due"])
            assert r["images_changed"] == 0.0
        if o == "masked":
            assert r["metrics"]["task_value"] == r["metrics"]["clean_value"] == 0.5


def test_port_mode_images_changed_is_the_fraction_of_samples(port_run: tuple[Plan, list[dict[str, Any]]]) -> None:
    plan, rows = port_run
    by_key = {(r["site"], r["idx"], r["bit"]): r for r in rows}
    assert by_key[("W", 0, 31)]["images_changed"] == 0.5  # only sample 0 changes class
    assert by_key[("h", 0, 31)]["images_changed"] == 0.5  # y[:,0] negated: only sample 0 changes
    assert by_key[("W", 7, 31)]["images_changed"] == 0.5
    # accuracy vs labels [0, 5]: clean 0.5; W[0,0] sign flip loses sample 0 -> 0.0
    assert by_key[("W", 0, 31)]["metrics"]["task_metric"] == "accuracy"
    assert by_key[("W", 0, 31)]["metrics"]["task_value"] == 0.0
    # W[1,5] huge: sample 1 becomes class 5, its label -> accuracy 1.0
    assert by_key[("W", 11, 30)]["metrics"]["task_value"] == 1.0


def test_value_and_stuck_faults_known_answers(kat: tuple[Path, Path], tmp_path: Path) -> None:
    """zero (a value fault: the Where/select port) and stuck-at-0/1 at weights and activations."""
    model, data = kat
    plan = _plan(model, "^(W|h)$", faults=("zero", "stuck-0", "stuck-1"), bits=[23, 30, 31])
    assert len(plan.experiments) == 24 + 24 * 3 * 2
    rows = _run(plan, EngineConfig(str(model), data_path=str(data)), tmp_path / "v.db")
    wrong = [(r["site"], r["idx"], r["fault"], r["outcome"], _expected(r, plan)) for r in rows
             if r["outcome"] != _expected(r, plan)]
    assert wrong == []
    by_key = {(r["site"], r["idx"], r["fault"]): r["outcome"] for r in rows}
    assert by_key[("W", 0, "zero")] == "critical"  # sample 0 loses its class
    assert by_key[("W", 13, "zero")] == "masked"  # a zero input times zero
    assert by_key[("W", 0, "stuck-1:31")] == "critical"
    assert by_key[("W", 1, "stuck-0:31")] == "masked"  # already 0: positive weight
    assert by_key[("h", 0, "stuck-1:30")] == "due"  # 1.0 -> inf in both samples
    assert Counter(r["outcome"] for r in rows)["masked"] > 0


# --------------------------------------------------------------------------------- naive mode


def test_naive_mode_gives_the_same_rows_as_port_mode(
    kat: tuple[Path, Path], port_run: tuple[Plan, list[dict[str, Any]]], tmp_path: Path
) -> None:
    model, data = kat
    plan = _plan(model, ALL_SITES, bits=NAIVE_BITS)
    rows = _run(plan, EngineConfig(str(model), data_path=str(data), mode="naive"), tmp_path / "n.db")
    assert len(rows) == 36 * len(NAIVE_BITS)
    wrong = [(r["site"], r["idx"], r["bit"], r["outcome"], _expected(r, plan)) for r in rows
             if r["outcome"] != _expected(r, plan)]
    assert wrong == []
    port_rows = {(r["site"], r["idx"], r["fault"]): row_key(r) for r in port_run[1]}
    for r in rows:
        want = dict(port_rows[(r["site"], r["idx"], r["fault"])])
        got = row_key(r)
        want.pop("id")
        got.pop("id")
        assert got.pop("path") == "naive" and want.pop("path") != "naive"
        assert got == want
    assert {r["outcome"] for r in rows} >= {"masked", "tolerable", "sdc1", "sdc5", "critical", "due"}


# --------------------------------------------------------------------------- engine in-process


def test_engine_golden_of_every_port_session_is_the_clean_output(kat: tuple[Path, Path]) -> None:
    model, data = kat
    engine = Engine(EngineConfig(str(model), data_path=str(data)))
    clean = kat_forward(KAT_X, KAT_W, KAT_B)
    for site in ("W", "b", "h", "y"):
        for bits, values in ((True, False), (False, True), (True, True)):
            r = engine.runner(site, bits, values)
            assert r.golden["y"].tobytes() == clean.tobytes(), (site, bits, values)
    summary = engine.clean_summary()
    assert summary["task"] == "classification"
    assert summary["metric"] == "accuracy" and summary["value"] == 0.5
    assert summary["samples"] == 2


def test_engine_run_in_process_matches_reference(kat: tuple[Path, Path]) -> None:
    model, data = kat
    engine = Engine(EngineConfig(str(model), data_path=str(data)))
    for i, (site, kind, index, bit) in enumerate(
        [("W", "weight", 0, 30), ("W", "weight", 7, 31), ("h", "activation", 3, 31), ("y", "activation", 1, 0)]
    ):
        exp = Experiment(i, site, kind, index, bit, flip(bit), seed=0)
        row = engine.run(exp, True, False)
        assert row["outcome"] == kat_expected(site, index, flip(bit))


def test_engine_without_labels_uses_agreement_with_golden(tmp_path: Path) -> None:
    """No labels: 'critical' is a drop in top-1 agreement with the golden run (> 1% by default)."""
    model, data = save_kat(tmp_path, labels=None)
    engine = Engine(EngineConfig(str(model), data_path=str(data)))
    for site, index, bit in [("W", 0, 31), ("W", 7, 31), ("W", 11, 30), ("W", 13, 31)]:
        exp = Experiment(0, site, "weight", index, bit, flip(bit), seed=0)
        row = engine.run(exp, True, False)
        assert row["outcome"] == kat_expected(site, index, flip(bit), labels=None)
        assert row["metrics"]["task_metric"] == "golden_agreement"
    # without labels any changed decision among 2 samples is a 50% agreement drop: critical
    assert kat_expected("W", 7, flip(31), labels=None) == "critical"


# ------------------------------------------------------------------------------ classify alone


def _cls(golden: np.ndarray, faulty: np.ndarray, labels: np.ndarray | None = None, task: str = "classification",
         critical: float = 0.01) -> dict[str, Any]:
    return classify({"y": golden}, {"y": faulty}, "y", task, labels, critical)


def test_classify_masked_is_bitwise() -> None:
    g = np.array([[1.0, 0.0, 0.5]], np.float32)
    assert _cls(g, g.copy())["outcome"] == "masked"
    f = g.copy()
    f[0, 1] = -0.0  # equal as numbers, different bits
    res = _cls(g, f)
    assert res["outcome"] == "tolerable" and not res["masked"]


def test_classify_due_wins_over_every_other_flag() -> None:
    g = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]], np.float32)
    f = g.copy()
    f[0, 2] = np.nan  # also changes sample 0's top-1 (NaN wins argmax)
    res = _cls(g, f, labels=np.array([0, 1]))
    assert res["outcome"] == "due" and res["due"]
    f = g.copy()
    f[1, 0] = np.inf
    assert _cls(g, f)["outcome"] == "due"
    # golden already non-finite there: not a new DUE
    g2 = g.copy()
    g2[1, 2] = np.inf
    f2 = g2.copy()
    f2[1, 1] = 2.0
    assert _cls(g2, f2)["outcome"] != "due"


def test_classify_critical_threshold() -> None:
    rng = np.random.default_rng(0)
    g = rng.random((200, 10)).astype(np.float32)
    top = g.argmax(1)
    f = g.copy()
    f[0, (top[0] + 1) % 10] = 5.0  # one sample of 200 changes class: agreement drops 0.005
    assert _cls(g, f, critical=0.01)["outcome"] == "sdc1"
    assert _cls(g, f, critical=0.001)["outcome"] == "critical"
    for i in range(1, 3):  # three of 200: 0.015 > 0.01
        f[i, (top[i] + 1) % 10] = 5.0
    assert _cls(g, f, critical=0.01)["outcome"] == "critical"
    assert _cls(g, f, critical=0.01)["images_changed"] == pytest.approx(3 / 200)


def test_classify_sdc5_needs_the_golden_class_out_of_the_top5() -> None:
    g = np.array([[6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.5]], np.float32)
    f = g.copy()
    f[0, 0] = 0.75  # 5 classes above it: sdc5
    res = _cls(g, f, critical=1.0)
    assert res["outcome"] == "sdc5" and res["sdc5"] and res["sdc1"]
    f[0, 0] = 1.5  # 4 classes above it: sdc1 only
    res = _cls(g, f, critical=1.0)
    assert res["outcome"] == "sdc1" and res["sdc1"] and not res["sdc5"]
    f[0, 0] = 1.0  # tie with class 5: the lower index ranks first, so 5th, still in the top 5
    assert _cls(g, f, critical=1.0)["outcome"] == "sdc1"
    f[0, 0] = np.nextafter(np.float32(1.0), np.float32(0.0))  # just below: 6th
    assert _cls(g, f, critical=1.0)["outcome"] == "sdc5"


def test_classify_regression_any_change_is_sdc() -> None:
    g = np.array([[1.0], [2.0]], np.float32)
    f = g.copy()
    f[1, 0] = np.nextafter(np.float32(2.0), np.float32(3.0))
    res = _cls(g, f, task="regression")
    assert res["outcome"] == "sdc1" and res["sdc1"]
    assert res["metrics"]["err_max_abs"] > 0
    assert _cls(g, g.copy(), task="regression")["outcome"] == "masked"


def test_expected_outcome_reference_agrees_with_classify_on_random_faults() -> None:
    """Random bit flips of random logits: the library and the numpy reference agree on every outcome."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 8, size=4)
    for _ in range(300):
        g = rng.normal(size=(4, 8)).astype(np.float32)
        words = g.copy().view(np.uint32)
        words[rng.integers(4), rng.integers(8)] ^= np.uint32(1 << int(rng.integers(32)))
        f = words.view(np.float32)
        with np.errstate(all="ignore"):
            want = expected_outcome(g, f, labels)
            got = _cls(g, f, labels)["outcome"]
        assert got == want, (g, f)
