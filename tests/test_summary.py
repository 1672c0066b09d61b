"""The summary contract (onnxfi.summary.aggregate): keys, the design-matched headline over complete rounds,
partial rounds left out and flagged, nothing complete, per-inference rates, group tables, and the helpers
early stopping reads. Rows are synthetic; no model is run."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest

from onnxfi.outcomes import FLAGS, OUTCOMES
from onnxfi.plan import Experiment, Plan, extend_plan, make_plan
from onnxfi.sites import Site
from onnxfi.stats import rate_with_ci, stratified_estimate
from onnxfi.summary import aggregate, headline, headline_halfwidth, layer_bit, progress

RATE_KEYS = {"k", "n", "rate", "lo", "hi", "method"}


def site(name: str, size: int, kind: str = "weight") -> Site:
    return Site(name, kind, ir.DataType.FLOAT, (size,), "initializer", ("Conv",), ("conv",),  # type: ignore[arg-type]
                tensor_name=name)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"make_plan only hashes it")
    return p


def row(e: Experiment, outcome: str, changed: float | None = None) -> dict[str, Any]:
    sdc = outcome in ("sdc1", "sdc5", "critical")
    return {"id": e.id, "site": e.site, "kind": e.kind, "idx": e.index, "bit": e.bit, "fault": "flip",
            "outcome": outcome, "masked": outcome == "masked", "sdc1": sdc, "sdc5": outcome == "sdc5",
            "critical": outcome == "critical", "due": outcome == "due", "crash": outcome == "crash",
            "images_changed": (0.25 if sdc else 0.0) if changed is None and outcome != "crash" else changed,
            "metrics": {}, "path": "cone"}


def rows_by(plan: Plan, outcome: Callable[[Experiment], str], changed: Callable[[Experiment], float] | None = None,
            ) -> list[dict[str, Any]]:
    return [row(e, outcome(e), None if changed is None else changed(e)) for e in plan.experiments]


def by_bit(e: Experiment) -> str:
    return "sdc1" if e.bit == 31 else "due" if e.bit == 30 else "masked"


# ------------------------------------------------------------------------------------------ contract


def test_contract_keys(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 100), site("b", 1000)], bits=[29, 30, 31], n_faults=120, seed=1)
    s = aggregate(plan, rows_by(plan, by_bit))
    assert "rates_weighted" not in s
    for key in ("experiments", "planned", "confidence", "design", "outcomes", "rates", "rates_raw", "per_inference",
                "progress", "strata", "images_changed_mean", "layers", "bits", "layer_bit", "metrics_mean", "paths"):
        assert key in s, key
    assert s["design"] == "proportional" and s["confidence"] == plan.confidence
    assert set(s["rates"]) == set(FLAGS) == set(s["rates_raw"])
    for flag in FLAGS:
        assert set(s["rates"][flag]) == RATE_KEYS and set(s["rates_raw"][flag]) == RATE_KEYS
    assert set(s["per_inference"]) == {"sdc1"} and set(s["per_inference"]["sdc1"]) == {"rate", "lo", "hi", "method"}
    assert set(s["progress"]) == {"planned", "stored", "used", "rounds", "rounds_complete", "partial_rows",
                                  "complete", "fraction"}
    assert s["progress"] == {"planned": 120, "stored": 120, "used": 120, "rounds": 2, "rounds_complete": 2,
                             "partial_rows": 0, "complete": True, "fraction": 1.0}
    assert set(s["outcomes"]) == set(OUTCOMES) and s["paths"] == {"cone": 120}
    for entry in s["layers"] + s["bits"]:
        assert {"key", "n", "images_changed_mean", "per_inference", *FLAGS} <= set(entry)
        assert all(set(entry[f]) == RATE_KEYS for f in FLAGS)
    for cell in s["layer_bit"]:
        assert set(cell) == {"site", "bit"} | RATE_KEYS


def test_proportional_headline_is_wilson_on_k_over_n(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 64), site("b", 5000)], n_faults=400, seed=2)
    rows = rows_by(plan, by_bit)
    s = aggregate(plan, rows, 0.95)
    for flag in FLAGS:
        k = sum(bool(r[flag]) for r in rows)
        want = rate_with_ci(k, 400, 0.95)
        got = s["rates"][flag]
        assert (got["k"], got["n"], got["rate"], got["lo"], got["hi"], got["method"]) == (
            k, 400, want.rate, want.lo, want.hi, "wilson")
        assert s["rates_raw"][flag] == got  # self-weighting: the raw rate is the model's
    # groups: the same estimator on the group's rows
    a = next(e for e in s["layers"] if e["key"] == "a")
    rows_a = [r for r in rows if r["site"] == "a"]
    assert a["n"] == len(rows_a) and a["sdc1"]["k"] == sum(r["sdc1"] for r in rows_a)
    assert a["sdc1"]["method"] == "wilson"
    assert headline(plan, rows, confidence=0.95) == s["rates"]["sdc1"]
    half = (s["rates"]["sdc1"]["hi"] - s["rates"]["sdc1"]["lo"]) / 2
    assert half > 0 and headline_halfwidth(plan, rows, confidence=0.95) == pytest.approx(half)


def test_census_is_exact(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 4)], bits=[30, 31], n_faults=100)
    assert plan.mode == "exhaustive"
    s = aggregate(plan, rows_by(plan, by_bit))
    assert s["rates"]["sdc1"]["rate"] == 0.5 == s["rates"]["sdc1"]["lo"] == s["rates"]["sdc1"]["hi"]
    assert s["rates"]["sdc1"]["method"] == "census"


# --------------------------------------------------------------------------------------- partial rounds


def test_partial_round_is_left_out_and_flagged(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 500), site("b", 20_000)], n_faults=400, rounds=8, seed=3)
    rows = rows_by(plan, by_bit)
    per_round = sum(e.round == 0 for e in plan.experiments)
    assert per_round == 50
    kept = [r for r, e in zip(rows, plan.experiments) if e.round < 3 or (e.round == 3 and e.index % 2)]
    s = aggregate(plan, kept)
    partial = sum(1 for e in plan.experiments if e.round == 3 and e.index % 2)
    assert 0 < partial < 50
    assert s["progress"] == {"planned": 400, "stored": 150 + partial, "used": 150, "rounds": 8, "rounds_complete": 3,
                             "partial_rows": partial, "complete": False, "fraction": 150 / 400}
    assert s["experiments"] == 150 + partial
    used = [r for r, e in zip(rows, plan.experiments) if e.round < 3]
    for flag in FLAGS:
        assert s["rates"][flag]["n"] == 150
        assert s["rates"][flag]["k"] == sum(bool(r[flag]) for r in used)
        assert s["rates_raw"][flag]["n"] == 150 + partial  # the raw rate counts every stored row
    assert sum(e["n"] for e in s["layers"]) == 150
    assert progress(plan, kept) == s["progress"]
    # a later round complete while an earlier one is not: any complete round counts (proportional)
    gap = [r for r, e in zip(rows, plan.experiments) if e.round in (0, 5)]
    assert aggregate(plan, gap)["progress"]["rounds_complete"] == 2


def test_no_complete_round_reports_nothing(model_file: Path) -> None:
    """A campaign killed inside its first round: the stored rows are a few sites' (round order groups sites),
    so no rate is reported for the model."""
    plan = make_plan(model_file, [site("a", 500), site("b", 20_000)], n_faults=400, rounds=4, seed=4)
    first = [e for e in plan.experiments if e.round == 0]
    rows = [row(e, by_bit(e)) for e in first[:30]]
    s = aggregate(plan, rows)
    for flag in FLAGS:
        r = s["rates"][flag]
        assert math.isnan(r["rate"]) and (r["lo"], r["hi"], r["n"], r["method"]) == (0.0, 1.0, 0, "none")
    per = s["per_inference"]["sdc1"]
    assert math.isnan(per["rate"]) and (per["lo"], per["hi"]) == (0.0, 1.0)
    assert s["progress"]["used"] == 0 and s["progress"]["rounds_complete"] == 0
    assert s["progress"]["partial_rows"] == 30 and s["progress"]["fraction"] == 0.0
    assert s["layers"] == [] and s["bits"] == [] and s["layer_bit"] == []
    assert s["rates_raw"]["sdc1"]["n"] == 30 and s["experiments"] == 30
    assert headline_halfwidth(plan, rows) == 0.5
    empty = aggregate(plan, [])
    assert empty["progress"]["stored"] == 0 and math.isnan(empty["rates"]["sdc1"]["rate"])


def test_rows_of_another_plan_are_not_the_models(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 100)], bits=[31], n_faults=20, rounds=1)
    rows = rows_by(plan, by_bit)
    stranger = dict(rows[0], id=999)
    s = aggregate(plan, rows + [stranger])
    assert s["rates"]["sdc1"]["n"] == 20 and s["experiments"] == 21 and s["progress"]["stored"] == 20


# ------------------------------------------------------------------------------------- other designs


def test_per_stratum_headline_is_stratified(model_file: Path) -> None:
    """Per-stratum: a (64-element, 31) stratum that always fails gets the same 10 faults as the 5000-element
    strata; the headline weights it by its 64 / 10,128 share, the raw rate does not."""
    sites = [site("bn", 64), site("conv", 5000)]
    plan = make_plan(model_file, sites, bits=[0, 31], per_stratum=10, rounds=2, seed=5)
    assert plan.design == "per-stratum"
    rows = rows_by(plan, lambda e: "sdc1" if (e.site, e.bit) == ("bn", 31) else "masked")
    s = aggregate(plan, rows, 0.95)
    want = stratified_estimate([10, 10, 10, 10], [0, 10, 0, 0], [0, 10, 0, 0], [64, 64, 5000, 5000], 0.95)
    got = s["rates"]["sdc1"]
    assert got["rate"] == pytest.approx(64 / 10_128) == pytest.approx(want.rate)
    assert (got["lo"], got["hi"], got["method"]) == pytest.approx((want.lo, want.hi, "wilson-neff"))
    assert (got["k"], got["n"]) == (10, 40)
    assert s["rates_raw"]["sdc1"]["rate"] == 0.25
    assert s["design"] == "per-stratum"
    # the bit-31 group weights bn against conv; the bn layer weights its two bits equally
    bit31 = next(e for e in s["bits"] if e["key"] == 31)
    assert bit31["sdc1"]["rate"] == pytest.approx(64 / 5064)
    bn = next(e for e in s["layers"] if e["key"] == "bn")
    assert bn["sdc1"]["rate"] == pytest.approx(0.5)
    # round 0 complete only: every stratum is in it, 5 each
    half = [r for r, e in zip(rows, plan.experiments) if e.round == 0]
    assert aggregate(plan, half)["rates"]["sdc1"]["rate"] == pytest.approx(64 / 10_128)


def test_per_stratum_with_unsampled_strata_is_bounded(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 100), site("b", 100)], bits=[0, 31], n_faults=2, design="per-stratum",
                     seed=0)
    assert sum(s.n > 0 for s in plan.strata) == 2
    s = aggregate(plan, rows_by(plan, lambda e: "masked"))
    r = s["rates"]["sdc1"]
    assert r["rate"] == 0.0 and r["method"] == "wilson-neff-bounded" and r["hi"] >= 0.5
    assert s["strata"] == {"total": 4, "sampled": 2}


def test_adaptive_headline_matches_extend_plans_decision(model_file: Path) -> None:
    sites = [site("bn", 64), site("conv", 20_000)]
    plan = make_plan(model_file, sites, margin=0.02, confidence=0.95, design="adaptive", seed=6)

    def outcome(e: Experiment) -> str:
        u = np.random.default_rng([e.id, e.index]).random()
        return "sdc1" if (e.bit == 30 or (e.bit is not None and e.bit >= 23 and u < 0.4)) else "masked"

    for _ in range(6):
        rows = rows_by(plan, outcome)
        s = aggregate(plan, rows)
        assert s["design"] == "adaptive" and s["rates"]["sdc1"]["method"].startswith("wilson-neff")
        hw = headline_halfwidth(plan, rows)
        assert hw == pytest.approx((s["rates"]["sdc1"]["hi"] - s["rates"]["sdc1"]["lo"]) / 2)
        nxt = extend_plan(plan, rows)
        at_cap = len(plan.experiments) >= plan.requested
        assert (nxt is None) == (hw <= 0.02 or at_cap)
        if nxt is None:
            break
        plan = nxt
    assert hw <= 0.02


# -------------------------------------------------------------------------------------- per inference


def test_per_inference_is_the_mean_fraction_of_inferences_changed(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 300), site("b", 3000)], bits=[30, 31], n_faults=200, seed=7)
    changed = {30: 0.8, 31: 0.05}
    rows = rows_by(plan, lambda e: "sdc1" if e.bit in (30, 31) and e.index % 3 else "masked",
                   lambda e: changed[int(e.bit or 0)] if e.index % 3 else 0.0)
    rows[0] = dict(rows[0], outcome="crash", crash=True, sdc1=False, images_changed=None)  # a crash changes none
    s = aggregate(plan, rows, 0.95)
    y = np.array([r["images_changed"] or 0.0 for r in rows])
    per = s["per_inference"]["sdc1"]
    assert per["rate"] == pytest.approx(float(y.mean()))
    want = stratified_estimate([200], [y.sum()], [(y * y).sum()], [plan.population], 0.95)
    assert (per["lo"], per["hi"], per["method"]) == pytest.approx((want.lo, want.hi, "wilson-neff"))
    assert per["lo"] < per["rate"] < per["hi"] < s["rates"]["sdc1"]["hi"]
    # per layer too
    a = next(e for e in s["layers"] if e["key"] == "a")
    ya = [r["images_changed"] or 0.0 for r in rows if r["site"] == "a"]
    assert a["images_changed_mean"] == pytest.approx(float(np.mean(ya))) == pytest.approx(a["per_inference"]["rate"])


def test_per_inference_is_stratified_in_a_per_stratum_plan(model_file: Path) -> None:
    plan = make_plan(model_file, [site("bn", 64), site("conv", 6336)], bits=[31], per_stratum=8, seed=8)
    rows = rows_by(plan, lambda e: "sdc1", lambda e: 1.0 if e.site == "bn" else 0.1)
    per = aggregate(plan, rows)["per_inference"]["sdc1"]
    assert per["rate"] == pytest.approx(0.01 * 1.0 + 0.99 * 0.1)


# ------------------------------------------------------------------------------------------- layer_bit


def test_layer_bit_with_and_without_the_plan(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", 200), site("b", 200)], bits=[30, 31], per_stratum=10, rounds=1)
    rows = rows_by(plan, by_bit)
    s = aggregate(plan, rows)
    cells = {(c["site"], c["bit"]): c for c in s["layer_bit"]}
    assert set(cells) == {(x, b) for x in "ab" for b in (30, 31)}
    assert all(c["rate"] == 1.0 and c["n"] == 10 for c in cells.values())  # sdc1 or due: bits 30 and 31 fail
    with_plan = {(c["site"], c["bit"]): c for c in layer_bit(rows, plan.confidence, ("sdc1",), plan=plan)}
    assert with_plan[("a", 31)]["rate"] == 1.0 and with_plan[("a", 30)]["rate"] == 0.0
    raw = {(c["site"], c["bit"]): c for c in layer_bit(rows, 0.95, ("sdc1",))}
    assert raw[("a", 31)]["k"] == 10 and raw[("a", 31)]["method"] == "wilson"
