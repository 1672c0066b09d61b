"""Critical-bit search (onnxfi.critical, onnxfi critical-bits): the search logic against synthetic oracles
(monotone, non-monotone, integer), then on a zoo CNN against an exhaustive sweep through the same engine,
the CLI, its JSON document and the store."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, ZOO, fails

from onnxfi.cli import main
from onnxfi.critical import (
    CRITICAL_BITS_SCHEMA,
    bit_chains,
    find_critical_bits,
    flipped_values,
    is_harmful,
    run_critical_bits,
    search_element,
    stored_pairs,
)
from onnxfi.engine import Engine, EngineConfig
from onnxfi.store import Store

MODEL = ZOO / "digits_cnn.onnx"
DATA = ZOO / "data" / "digits_eval.npz"


class Oracle:
    """``harmful(bit)`` from a rule, counting the calls and refusing a bit asked twice."""

    def __init__(self, rule: Callable[[int], bool]) -> None:
        self.rule, self.asked = rule, []  # type: ignore[var-annotated]

    def __call__(self, bit: int) -> bool:
        assert bit not in self.asked, f"bit {bit} asked twice"
        self.asked.append(bit)
        return bool(self.rule(bit))


def _change(value: np.ndarray, bit: int) -> float:
    """|new - old| of one flip, computed independently of onnxfi (struct words), inf for NaN/Inf."""
    v = np.asarray(value, dtype=np.float32).reshape(1)
    w = v.view(np.uint32).copy()
    w ^= np.uint32(1 << bit)
    with np.errstate(invalid="ignore", over="ignore"):
        d = abs(float(w.view(np.float32)[0]) - float(v[0]))
    return d if math.isfinite(d) else math.inf


def _monotone_rule(value: np.ndarray, up: float, down: float, sign: bool) -> Callable[[int], bool]:
    """Harmful where the change is at least ``up`` (flips away from zero) or ``down`` (toward zero); the sign
    bit as ``sign``: a model whose outcome is monotone in |new - old| per direction."""
    word = int(np.asarray(value, dtype=np.float32).reshape(1).view(np.uint32)[0])

    def rule(bit: int) -> bool:
        if bit == 31:
            return sign
        return _change(value, bit) >= (down if word >> bit & 1 else up)

    return rule


def _truth(rule: Callable[[int], bool], bits: int = 32) -> set[int]:
    return {b for b in range(bits) if rule(b)}


# ------------------------------------------------------------------------------------- the search logic


def test_chains_split_by_direction_and_order_by_change() -> None:
    v = np.float32(0.05)
    away, toward = bit_chains(np.array(v))
    word = int(np.array([v]).view(np.uint32)[0])
    assert sorted(away + toward) == list(range(31))  # every bit but the sign, once
    assert all(not word >> b & 1 for b in away) and all(word >> b & 1 for b in toward)
    for chain in (away, toward):
        changes = [_change(np.array(v), b) for b in chain]
        assert changes == sorted(changes) and chain == sorted(chain)  # |change| order is bit order here
    assert away[-1] == 30  # the largest change away from zero: the top exponent bit (0.05 -> 1.7e37)
    assert flipped_values(np.array(v))[31] == np.float32(-0.05)


@pytest.mark.parametrize("value", [0.05, -0.73, 1.5, 3e-5, -2.0, 0.0])
@pytest.mark.parametrize(("up", "down", "sign"), [(1.0, 0.02, True), (1e30, 1e30, False), (1e-9, 0.01, False),
                                                  (0.0, 0.0, True), (math.inf, math.inf, False)])
def test_monotone_oracle_gives_the_exact_answer_with_few_flips(value: float, up: float, down: float,
                                                               sign: bool) -> None:
    v = np.array(np.float32(value))
    rule = _monotone_rule(v, up, down, sign)
    oracle = Oracle(rule)
    res = search_element(v, oracle, index=7)
    assert res.method == "search" and res.index == 7
    assert set(res.harmful) == _truth(rule)
    assert tuple(oracle.asked) == res.ran and len(res.ran) <= 16


def test_random_monotone_elements_are_exact() -> None:
    rng = np.random.default_rng(5)
    asked = 0
    for _ in range(200):
        v = np.array(np.float32(rng.normal(0.0, 0.3)))
        up, down = (float(10.0 ** rng.uniform(-8, 3)) for _ in range(2))
        rule = _monotone_rule(v, up, down, bool(rng.integers(2)))
        oracle = Oracle(rule)
        res = search_element(v, oracle)
        assert res.method == "search" and set(res.harmful) == _truth(rule)
        asked += len(oracle.asked)
    assert asked <= 200 * 32 // 2


def test_a_non_monotone_element_falls_back_to_every_bit_and_is_exact() -> None:
    """Away from zero, the largest change is harmful, the next harmless and the one below harmful again (a
    hole): the search's check runs that third flip, sees the contradiction and runs every bit."""
    v = np.array(np.float32(0.05))
    away, _ = bit_chains(v)
    bad = {away[-1], away[-3]}
    oracle = Oracle(lambda b: b in bad)
    res = search_element(v, oracle)
    assert res.method == "fallback" and f"bit {away[-3]} harmful below" in res.reason
    assert set(res.harmful) == bad
    assert sorted(oracle.asked) == list(range(32))  # every bit run exactly once


def test_the_check_is_local() -> None:
    """What the check cannot see, said plainly: a harmful flip far below a chain's boundary, with harmless
    flips around it, is not run, so the search misses it (measured agreement on real layers: tests below)."""
    v = np.array(np.float32(0.05))
    away, _ = bit_chains(v)
    bad = {away[-1], away[2]}
    res = search_element(v, Oracle(lambda b: b in bad))
    assert res.method == "search" and set(res.harmful) == {away[-1]}


def test_a_start_from_earlier_elements_changes_the_cost_never_the_answer() -> None:
    v = np.array(np.float32(0.8))
    rule = _monotone_rule(v, 0.3, 0.3, True)
    plain, hinted = Oracle(rule), Oracle(rule)
    a = search_element(v, plain)
    b = search_element(v, hinted, thresholds=a.boundaries)  # type: ignore[arg-type]
    assert set(a.harmful) == set(b.harmful) == _truth(rule)
    assert len(hinted.asked) <= len(plain.asked)
    wrong = Oracle(rule)
    assert set(search_element(v, wrong, thresholds=(1e-30, math.inf)).harmful) == _truth(rule)


def test_integer_and_non_finite_elements_run_every_bit() -> None:
    rule: Callable[[int], bool] = lambda b: b in (7, 6)  # noqa: E731
    res = search_element(np.array(np.int8(3)), Oracle(rule))
    assert res.method == "exhaustive" and "int8" in res.reason and set(res.harmful) == {6, 7}
    assert len(res.ran) == 8
    res = search_element(np.array(np.float32(np.nan)), Oracle(lambda b: False))
    assert res.method == "exhaustive" and "NaN" in res.reason and len(res.ran) == 32


def test_float16_elements_are_searched() -> None:
    v = np.array(np.float16(0.3))
    away, toward = bit_chains(v)
    assert sorted(away + toward) == list(range(15)) and away[-1] == 14
    res = search_element(v, Oracle(lambda b: b == 14))
    assert res.method == "search" and res.harmful == (14,) and len(res.ran) < 16


def test_outcome_thresholds() -> None:
    assert is_harmful("sdc1") and is_harmful("critical") and is_harmful("due") and is_harmful("crash")
    assert not is_harmful("tolerable") and not is_harmful("masked")
    assert not is_harmful("sdc5", "critical") and is_harmful("due", "critical")
    assert not is_harmful("critical", "due") and is_harmful("crash", "due")


# ------------------------------------------------------------------------------------ on a zoo CNN


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(model_path=str(MODEL), data_path=str(DATA)))


@pytest.mark.parametrize(("site", "elements"), [("classifier.2.bias", None), ("features.8.bias", 16)])
def test_search_agrees_with_an_exhaustive_sweep_at_a_quarter_of_the_cost(engine: Engine, site: str,
                                                                          elements: int | None) -> None:
    """The acceptance: every element x every bit of the searched elements run through the same engine
    (a separate sweep, not the search's rows): >= 99% of the pairs agree, with <= 1/4 of the flips."""
    sites = [engine.ctx.index.get(site)]
    found = find_critical_bits(engine, sites, elements=elements, seed=3)
    sweep = find_critical_bits(engine, sites, elements=elements, seed=3, exhaustive=True)
    a, b = found.sites[0], sweep.sites[0]
    assert [e.index for e in a.elements] == [e.index for e in b.elements]
    pairs = a.exhaustive_experiments
    assert b.experiments == pairs == len(a.elements) * 32
    agree = sum((bit in set(x.harmful)) == (bit in set(y.harmful))
                for x, y in zip(a.elements, b.elements) for bit in range(32))
    assert agree / pairs >= 0.99, (agree, pairs)
    assert a.experiments * 4 <= pairs, (a.experiments, pairs)
    assert any(e.harmful for e in b.elements)  # the layer has critical bits to find
    # the flips the search ran have the sweep's outcomes (same engine, same experiment)
    for (idx, bit), row in a.rows.items():
        assert row["outcome"] == b.rows[(idx, bit)]["outcome"]


def test_check_option_reports_agreement_and_sampled_layers_have_intervals(engine: Engine) -> None:
    sites = [engine.ctx.index.get("features.8.bias")]
    res = find_critical_bits(engine, sites, elements=8, seed=1, check=True)
    again = find_critical_bits(engine, sites, elements=8, seed=1)
    assert [e.index for e in res.sites[0].elements] == [e.index for e in again.sites[0].elements]
    doc = res.to_dict()
    assert doc["check"]["pairs"] == 8 * 32 and doc["check"]["agreement"] >= 0.99
    assert doc["check"]["experiments"] == 8 * 32 - doc["experiments"]
    rate = doc["layers"][0]["rate"]
    assert rate["method"] == "wilson-neff" and rate["lo"] <= rate["rate"] <= rate["hi"] and rate["hi"] > rate["lo"]
    assert doc["layers"][0]["searched"] == 8 and doc["layers"][0]["elements"] == 64


def test_quantized_weights_run_every_bit_and_say_so() -> None:
    """An int8 weight of a QDQ model through the programmatic entry: every bit of each element, named."""
    cfg = EngineConfig(model_path=str(ZOO / "fashion_cnn_int8_qdq.onnx"), data_path=str(ZOO / "data" / "fashion_eval.npz"))
    res = run_critical_bits(cfg, r"^onnx::Conv_36_quantized$", elements=2, seed=0)
    [layer] = res.to_dict()["layers"]
    assert layer["dtype"] == "int8" and layer["exhaustive_elements"] == 2 and "int8" in layer["exhaustive_reason"]
    assert layer["experiments"] == layer["exhaustive_experiments"] == 16
    assert res.clean["samples"] > 0
    assert all(e.method == "exhaustive" for e in res.sites[0].elements)


# ------------------------------------------------------------------------------------- the command


def _documented() -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", (REPO / "docs" / "json.md").read_text()))


def _keys(obj: Any, skip: frozenset[str] = frozenset({"clean"})) -> set[str]:
    """Every key of a document, nested objects and lists of objects included (``clean`` is the shared Clean
    run, documented once)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            if k not in skip:
                out |= _keys(v)
    elif isinstance(obj, list):
        for v in obj:
            out |= _keys(v)
    return out


def test_cli_stores_prints_and_writes_a_documented_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, out = tmp_path / "cb.db", tmp_path / "cb.json"
    rc = main(["critical-bits", str(MODEL), "--data", str(DATA), "--sites", r"^classifier\.2\.bias$", "--check",
               "--db", str(db), "--json", str(out), "--top", "3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    for needle in ("classifier.2.bias", "experiments:", "agrees on", "Most severe flips", f"wrote {out}"):
        assert needle in text, needle
    doc = json.loads(out.read_text())
    assert next(iter(doc)) == "schema" and doc["schema"] == CRITICAL_BITS_SCHEMA
    assert f"`{CRITICAL_BITS_SCHEMA}`" in (REPO / "docs" / "json.md").read_text()
    missing = _keys(doc) - _documented()
    assert not missing, f"docs/json.md does not name: {sorted(missing)}"
    assert len(doc["top"]) == 3 and doc["check"]["agreement"] >= 0.99
    assert doc["experiments"] < doc["exhaustive_experiments"] == 320
    # read back from the store: the same search, one record per (element, bit), the same critical pairs
    with Store(db, readonly=True) as store:
        [(sid, stored)] = store.critical_bit_searches()
        records = store.critical_bits(sid)
    assert sid == doc["search"] and stored == doc
    assert len(records) == 320 and {r["source"] for r in records} == {"run"}  # --check ran every bit
    assert sum(len(v) for v in stored_pairs(records).values()) == doc["layers"][0]["critical"]
    # a second search is added beside the first
    assert main(["critical-bits", str(MODEL), "--data", str(DATA), "--sites", r"^classifier\.2\.bias$",
                 "--elements", "2", "--db", str(db)]) == 0
    with Store(db, readonly=True) as store:
        searches = store.critical_bit_searches()
        assert [s for s, _ in searches] == [1, 2]
        recs = store.critical_bits(2)
    assert len(recs) == 64 and {r["source"] for r in recs} == {"run", "inferred"}


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    fails(capsys, ["critical-bits", MODEL, "--data", DATA, "--sites", "nonexistent_xyz"], "no weight sites match")
    fails(capsys, ["critical-bits", MODEL, "--data", DATA, "--elements", "0"], "--elements")


def test_cli_end_to_end_json_on_stdout() -> None:
    proc = subprocess.run([sys.executable, "-m", "onnxfi", "critical-bits", "digits_cnn", "--sites",
                           r"^features\.1\.bias$", "--elements", "3", "--json", "-"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == CRITICAL_BITS_SCHEMA and doc["layers"][0]["searched"] == 3
    assert "Critical bits per weight" in proc.stderr
