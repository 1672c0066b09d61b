"""The hardening advisor (issue 19): attribution of weights to activations, the budgeted choice, recipes."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import fails
from harden_helpers import fill, ops, parse

from onnxfi import advise
from onnxfi.cli import main
from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError
from onnxfi.harden import HardenOptions

TWO_LAYERS = """
two (float[N,4] x) => (float[N,3] y) <float[4,4] w1 = {@W1}, float[4,3] w2 = {@W2}> {
  a = MatMul(x, w1)
  r1 = Relu(a)
  b = MatMul(r1, w2)
  y = Relu(b)
}
"""


def _model():  # type: ignore[no-untyped-def]
    return parse(fill(TWO_LAYERS, W1=np.linspace(-1, 1, 16), W2=np.linspace(-0.5, 0.7, 12)))


def test_weights_are_attributed_to_the_first_activation_downstream() -> None:
    model = _model()
    units = advise.activation_units(model)
    assert len(units) == 2
    find = advise.downstream_units(model, units)
    assert find("w1") == units[0] and find("w2") == units[1]
    assert find("nothing") is None


def test_the_choice_is_the_best_assignment_within_the_budget() -> None:
    units, methods = ["u1", "u2"], ["ranger", "clipact"]
    base = {0: 0.5, 1: 0.5, 2: 0.2, 3: 0.0}
    under = {"ranger": {0: 0.3, 1: 0.3, 2: 0.0, 3: 0.0}, "clipact": {0: 0.0, 1: 0.0, 2: 0.1, 3: 0.0}}
    attributed = {"u1": [0, 1], "u2": [2]}
    cost = {("u1", "ranger"): 0.01, ("u1", "clipact"): 0.04, ("u2", "ranger"): 0.01, ("u2", "clipact"): 0.02}
    # budget 5%: clipact at u1 (gain 1.0/4) + ranger at u2 (gain 0.2/4) costs exactly 5%
    c = advise.choose(units, methods, attributed, base, under, cost, 0.05)
    assert c.assignment == {"u1": "clipact", "u2": "ranger"} and c.exact
    assert c.baseline == pytest.approx(0.3) and c.predicted == pytest.approx(0.0)
    assert c.cost == pytest.approx(0.05)
    # budget 2%: only the cheap ones fit
    c = advise.choose(units, methods, attributed, base, under, cost, 0.02)
    assert c.assignment == {"u1": "ranger", "u2": "ranger"}
    assert c.predicted == pytest.approx((0.3 + 0.3 + 0.0 + 0.0) / 4)
    # brute force over every assignment agrees at several budgets
    for budget in (0.0, 0.01, 0.03, 0.06):
        best = min(
            sum(under[m][f] if m else base[f] for u, m in zip(units, pick) for f in attributed[u]) + base[3]
             for pick in [(a, b) for a in (None, *methods) for b in (None, *methods)]
             if sum(cost[(u, m)] for u, m in zip(units, pick) if m) <= budget + 1e-12)
        assert advise.choose(units, methods, attributed, base, under, cost, budget).predicted == pytest.approx(best / 4)


def test_a_recipe_hardens_only_its_units(tmp_path: Path) -> None:
    model = _model()
    units = advise.activation_units(model)
    recipe = advise.Recipe((("relumax", (units[1],)),))
    data = Dataset({"x": np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)}, None, "random")
    hardened = advise.apply_recipe(model, recipe, data, HardenOptions()).model
    assert ops(model) == ["MatMul", "Relu", "MatMul", "Relu"]
    assert ops(hardened)[:3] == ["MatMul", "Relu", "MatMul"] and len(ops(hardened)) > 4
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe.to_dict("m.onnx")))
    assert advise.load_recipe(path) == recipe
    path.write_text(json.dumps({"schema": "onnxfi.recipe/1", "steps": [{"method": "nope", "units": []}]}))
    with pytest.raises(OnnxfiError, match="unknown hardening method"):
        advise.load_recipe(path)
    path.write_text("{")
    with pytest.raises(OnnxfiError, match="not JSON"):
        advise.load_recipe(path)


def test_advise_writes_a_recipe_that_harden_applies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "digits.recipe.json"
    assert main(["advise", "digits_cnn", "--faults", "60", "--repeat", "10", "--no-verify", "-o", str(recipe),
                 "--budget-latency", "100"]) == 0
    out = capsys.readouterr().out
    assert "predicted per-inference SDC" in out
    doc = json.loads(recipe.read_text())
    assert doc["schema"] == "onnxfi.recipe/1"
    assert main(["harden", "digits_cnn", "--recipe", str(recipe), "-o", str(tmp_path / "h.onnx")]) == 0
    fails(capsys, ["harden", "digits_cnn", "--recipe", str(recipe), "--method", "ranger", "-o", str(tmp_path / "x.onnx")],
          "--recipe")
    fails(capsys, ["harden", "digits_cnn", "-o", str(tmp_path / "x.onnx")], "--method")
    fails(capsys, ["advise", "digits_cnn", "--methods", "protect"], "advise chooses among")
    # verify the written recipe again, on another plan, without choosing
    out_json = tmp_path / "v.json"
    assert main(["advise", "digits_cnn", "--recipe", str(recipe), "--verify-faults", "30", "--repeat", "5",
                 "--against", "ranger", "--verify-all", "--json", str(out_json)]) == 0
    v = json.loads(out_json.read_text())
    assert "choice" not in v and v["recipe"]["steps"] == doc["steps"]
    assert v["verification"]["recipe"]["sdc1"]["n"] == 30 and "recipe_minus_this" in v["verification"]["ranger"]
    fails(capsys, ["advise", "digits_cnn", "--recipe", str(recipe), "--no-verify"], "--no-verify")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "onnxfi.recipe/1", "steps": [{"method": "ranger", "units": ["nope"]}]}))
    fails(capsys, ["advise", "digits_cnn", "--recipe", str(bad)], "'nope' is not a layer or weight")


def test_weight_checks_join_the_choice_and_the_lower_outcome_counts_where_both_cover_a_fault() -> None:
    units, methods = ["u1", "u2"], ["ranger"]
    wc = advise.WEIGHT_METHOD
    # faults 0-1 in weight a (downstream u1), 2-3 in weight b (no activation downstream), 4 in weight c (u2)
    base = {0: 0.5, 1: 0.4, 2: 0.6, 3: 0.1, 4: 0.3}
    under = {"ranger": {0: 0.1, 1: 0.4, 2: 0.6, 3: 0.1, 4: 0.0},
             wc: {0: 0.2, 1: 0.0, 2: 0.0, 3: 0.1, 4: 0.3}}
    attributed = {"u1": [0, 1], "u2": [4]}
    weights = {"a": [0, 1], "b": [2, 3], "c": [4]}
    cost = {("u1", "ranger"): 0.02, ("u2", "ranger"): 0.02, ("a", wc): 0.01, ("b", wc): 0.0, ("c", wc): 0.03}
    memory = {("a", wc): 0.001, ("b", wc): 0.001, ("c", wc): 0.001}

    def brute(budget: float, mem_budget: float) -> float:
        best = math.inf
        for a1, a2, on_a, on_b, on_c in itertools.product((None, "ranger"), (None, "ranger"), *[(False, True)] * 3):
            pick = {"u1": a1, "u2": a2, "a": wc if on_a else None, "b": wc if on_b else None, "c": wc if on_c else None}
            c = sum(cost[(k, m)] for k, m in pick.items() if m)
            mu = sum(memory.get((k, m), 0.0) for k, m in pick.items() if m)
            if c > budget + 1e-12 or mu > mem_budget + 1e-12:
                continue
            act = {0: a1, 1: a1, 4: a2, 2: None, 3: None}
            chk = {0: on_a, 1: on_a, 2: on_b, 3: on_b, 4: on_c}
            total = 0.0
            for f in base:
                outs = [under[act[f]][f]] if act[f] else []
                if chk[f]:
                    outs.append(under[wc][f])
                total += min(outs) if outs else base[f]
            best = min(best, total / len(base))
        return best

    for budget in (0.0, 0.01, 0.02, 0.03, 0.05, 0.1):
        for mem_budget in (0.0, 0.0015, 1.0):
            c = advise.choose(units, methods, attributed, base, under, cost, budget, weights=weights, memory=memory,
                              memory_budget=mem_budget)
            assert c.exact and c.predicted == pytest.approx(brute(budget, mem_budget)), (budget, mem_budget)
            assert c.cost <= budget + 1e-12 and c.memory <= mem_budget + 1e-12
    c = advise.choose(units, methods, attributed, base, under, cost, 0.1, weights=weights, memory=memory)
    assert c.assignment == {"u1": "ranger", "u2": "ranger", "a": wc, "b": wc}  # c's check adds nothing
    assert c.predicted == pytest.approx((0.1 + 0.0 + 0.0 + 0.1 + 0.0) / 5)
    assert [m for m, _ in c.recipe().steps] == ["ranger", wc]


def test_many_weight_checks_are_chosen_greedily_within_the_budgets() -> None:
    wc = advise.WEIGHT_METHOD
    # 14 weights, one fault each: weight k's check removes an SDC of (k + 1) / 100 and costs k / 200 latency;
    # weight 0's check makes its fault worse. 13 candidates: more than the exact subset search takes
    base = {k: (k + 1) / 100 for k in range(14)}
    under = {wc: {k: 0.0 for k in range(14)}}
    under[wc][0] = 0.5
    weights = {f"w{k}": [k] for k in range(14)}
    cost = {(f"w{k}", wc): k / 200 for k in range(14)}
    c = advise.choose([], [], {}, base, under, cost, 0.10, weights=weights)
    assert not c.exact
    # by gain per cost (2 (k + 1) / k: w1 first) while the budget lasts: w1..w5 cost 0.075, w6 would pass 0.10
    chosen = sorted(int(w[1:]) for w in c.assignment)
    assert chosen == [1, 2, 3, 4, 5] and c.cost == pytest.approx(0.075)
    assert c.predicted == pytest.approx((sum(base.values()) - sum((k + 1) / 100 for k in chosen)) / 14)


def test_the_paired_difference_interval_covers_the_population_difference() -> None:
    # a population of faults with per-inference outcomes on two models (mostly 0, a few large), sampled without
    # replacement as a proportional plan draws it; the 99% interval must cover the true mean difference
    rng = np.random.default_rng(7)
    size = 20_000
    a = np.where(rng.random(size) < 0.03, rng.random(size), 0.0)
    b = np.where(rng.random(size) < 0.5, a, np.where(rng.random(size) < 0.02, rng.random(size), 0.0))
    truth = float((a - b).mean())
    hits, reps = 0, 400
    for _ in range(reps):
        idx = rng.choice(size, 800, replace=False)
        d, lo, hi = advise.paired_difference({int(i): float(a[i]) for i in idx}, {int(i): float(b[i]) for i in idx},
                                             size, 0.99)
        assert lo <= d <= hi
        hits += lo <= truth <= hi
    assert hits / reps >= 0.97
    same = {i: 0.25 for i in range(50)}
    d, lo, hi = advise.paired_difference(same, same, 1000, 0.99)
    assert d == 0.0 and lo < 0 < hi
    with pytest.raises(OnnxfiError, match="no fault"):
        advise.paired_difference({1: 0.0}, {2: 0.0}, 10, 0.99)


def test_advise_chooses_weight_checks_and_verifies_only_the_methods_within_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "a.json"
    assert main(["advise", "digits_cnn", "--faults", "60", "--verify-faults", "40", "--repeat", "10",
                 "--methods", "ranger,weight-clip", "--against", "ranger,weight-clip", "--budget-latency", "30",
                 "--json", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["budget_memory"] == 0.02 and "classifier.2.weight" in doc["weights"]
    ver = doc["verification"]
    assert set(ver) >= {"recipe", "ranger", "weight-clip", "original"}
    for key in ("ranger", "weight-clip"):
        entry = ver[key]
        assert ("per_inference" in entry) == entry["within_budget"]  # over the budget: not run
        if entry["within_budget"]:
            d = entry["recipe_minus_this"]
            assert d["lo"] <= d["rate"] <= d["hi"]
    out = capsys.readouterr().out
    over = [k for k in ("ranger", "weight-clip") if not ver[k]["within_budget"]]
    assert ("over the budget: not run" in out) == bool(over)
    for key in ("ranger", "weight-clip"):  # each method that ran prints its paired difference as stored
        if key not in over:
            d = ver[key]["recipe_minus_this"]
            assert f"{100 * d['rate']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]" in out


def test_parameter_bytes_count_initializers_and_constant_nodes() -> None:
    model = parse("""
    g (float[N,2] x) => (float[N,2] y) <float[2] b = {1, 2}> {
      w = Constant <value = float[2,2] {1, 2, 3, 4}> ()
      a = MatMul(x, w)
      y = Add(a, b)
    }
    """)
    assert advise.parameter_bytes(model) == 4 * 4 + 2 * 4  # a Paddle export holds every weight in Constant nodes
