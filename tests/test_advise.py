"""The hardening advisor (issue 19): attribution of weights to activations, the budgeted choice, recipes."""

from __future__ import annotations

import json
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
