"""Bit error rate campaigns: exact flips against independent numpy, the Binomial draw, reproducible draws, plan
structure, the runner on a zoo model, the per-rate summary, inject replay through the CLI, the report."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import REPO, ZOO, file_tensors, words
from rich.console import Console
from scipy import stats as sps

import onnxfi.ber
from onnxfi.ber import (
    MAX_EXPECTED_FLIPS,
    apply_flips,
    ber_sizes,
    ber_summary,
    draw_flips,
    make_ber_plan,
    restore_weights,
    t_quantile,
)
from onnxfi.cli import main
from onnxfi.commands._ber import ber_table
from onnxfi.engine import EngineConfig
from onnxfi.engine.ber import BerRunner
from onnxfi.engine.context import Context
from onnxfi.errors import OnnxfiError
from onnxfi.model import load_model, save_model
from onnxfi.outcomes import classify, crash_row, experiment_row, fault_spec
from onnxfi.plan import BER_SITE, Experiment, Plan
from onnxfi.report.html import render_report
from onnxfi.sites import SiteIndex, enumerate_sites
from onnxfi.store import Store

DIGITS = ZOO / "digits_cnn.onnx"
DIGITS_DATA = ZOO / "data" / "digits_eval.npz"
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
FLAG_KEYS = ("masked", "sdc1", "sdc5", "critical", "due", "crash")


def _index(path: Path) -> tuple[Any, SiteIndex]:
    loaded = load_model(path, check=False)
    return loaded, enumerate_sites(loaded.model, loaded.value_shapes)


def _plan(path: Path, rates: list[float], per_rate: int, **kw: Any) -> Plan:
    _, index = _index(path)
    return make_ber_plan(path, index.select("weights"), rates, per_rate, **kw)


def _expected(before: dict[str, np.ndarray], flips: list[tuple[str, int, int]]) -> dict[str, np.ndarray]:
    """``before``'s storage words with every flip XORed in, element by element in plain numpy."""
    out = {k: words(v).reshape(-1).copy() for k, v in before.items()}
    for name, element, bit in flips:
        w = out[name]
        w[element] = w[element] ^ w.dtype.type(1 << bit)
    return {k: out[k].reshape(before[k].shape) for k in out}


def _exp(rate: float, sites: list[str], seed: int, bits: list[int] | None = None) -> Experiment:
    return Experiment(0, BER_SITE, "weight", 0, None, {"kind": "ber", "rate": rate, "sites": sites, "bits": bits}, seed)


# ------------------------------------------------------------------------------------------ (a) exact flips


@pytest.mark.parametrize("model", ["digits_cnn.onnx", "fashion_cnn_int8_qdq.onnx", "fashion_cnn_fp16.onnx"])
def test_ber_experiment_flips_exactly_the_drawn_bits(model: str, tmp_path: Path) -> None:
    path = ZOO / model
    before = file_tensors(path)
    plan = _plan(path, [2e-3], 1, seed=5)
    exp = plan.experiments[0]
    loaded, index = _index(path)
    flips = draw_flips(exp, ber_sizes(index))
    assert len(flips) > 100  # ~0.2% of 0.8-1.7M bits
    if "int8" in model:  # the draw reaches the int8, uint8, int32 and float32 tensors of a QDQ model
        dtypes = {index.get(s).dtype_name for s, _, _ in flips}
        assert {"int8", "float32", "int32"} <= dtypes
    originals = apply_flips(index, flips)
    assert sorted(originals) == sorted({s for s, _, _ in flips})
    out = save_model(loaded.model, tmp_path / "faulty.onnx")[0]
    after = file_tensors(out)
    want = _expected(before, flips)
    assert sorted(after) == sorted(before)
    for name in before:  # every tensor, flipped or not, bit for bit
        assert after[name].dtype == before[name].dtype and after[name].shape == before[name].shape
        np.testing.assert_array_equal(words(after[name]), want[name], err_msg=name)
    restore_weights(index, originals)
    back = save_model(loaded.model, tmp_path / "restored.onnx")[0]
    restored = file_tensors(back)
    for name in before:
        np.testing.assert_array_equal(words(restored[name]), words(before[name]), err_msg=name)


def test_several_bits_of_one_element_flip_together() -> None:
    _, index = _index(DIGITS)
    site = index.get("features.0.weight")
    old = np.array(index.weight_array(site), copy=True)
    flips = [("features.0.weight", 3, 31), ("features.0.weight", 3, 30), ("features.0.weight", 3, 0),
             ("classifier.2.bias", 9, 22)]
    originals = apply_flips(index, flips)
    new = index.weight_array(site)
    w_old, w_new = words(old).reshape(-1), words(new).reshape(-1)
    assert int(w_new[3]) == int(w_old[3]) ^ (1 << 31 | 1 << 30 | 1)
    assert np.array_equal(np.delete(w_new, 3), np.delete(w_old, 3))
    np.testing.assert_array_equal(originals["features.0.weight"], old)
    with pytest.raises(OnnxfiError, match="bit out of range"):
        apply_flips(index, [("features.0.weight", 0, 32)])
    with pytest.raises(OnnxfiError, match="element out of range"):
        apply_flips(index, [("features.0.weight", 144, 0)])


# ---------------------------------------------------------------------------------------- (b) the Binomial draw


def test_flip_count_is_binomial_and_positions_distinct_and_uniform() -> None:
    sizes = {"a": (1000, 32), "b": (37, 8)}
    rate, draws = 0.01, 400
    total = 1000 * 32 + 37 * 8
    counts, per_bit, in_b = [], Counter(), 0
    for seed in range(draws):
        flips = draw_flips(_exp(rate, ["a", "b"], seed), sizes)
        assert len(set(flips)) == len(flips) and flips == sorted(flips)
        for site, element, bit in flips:
            assert 0 <= element < sizes[site][0] and 0 <= bit < sizes[site][1]
            if site == "a":
                per_bit[bit] += 1
            else:
                in_b += 1
        counts.append(len(flips))
    mean, var = total * rate, total * rate * (1 - rate)
    assert abs(np.mean(counts) - mean) < 4 * math.sqrt(var / draws)  # 4 standard errors of the mean
    assert abs(np.var(counts, ddof=1) / var - 1) < 4 * math.sqrt(2 / (draws - 1))
    # every bit of site a equally likely (chi-square, 31 df; 70 is p ~ 1e-4)
    seen = np.array([per_bit[b] for b in range(32)], dtype=float)
    assert ((seen - seen.mean()) ** 2 / seen.mean()).sum() < 70
    share_b = in_b / sum(counts)
    assert abs(share_b - 296 / total) < 4 * math.sqrt(296 / total / sum(counts))


def test_selected_bits_only_and_a_huge_space_is_not_materialised() -> None:
    sizes = {"w": (5000, 32), "q": (5000, 8)}
    flips = draw_flips(_exp(0.01, ["w", "q"], 3, bits=[0, 7, 30]), sizes)
    assert {b for s, _, b in flips if s == "w"} == {0, 7, 30}
    assert {b for s, _, b in flips if s == "q"} == {0, 7}  # bit 30 is beyond int8
    # 8e9 bits: positions are drawn without building the space (Floyd's algorithm in numpy's choice)
    big = {"big": (250_000_000, 32)}
    flips = draw_flips(_exp(1e-7, ["big"], 1), big)
    assert 600 < len(flips) < 1000 and len(set(flips)) == len(flips)
    assert all(0 <= e < 250_000_000 and 0 <= b < 32 for _, e, b in flips)


def test_a_missing_site_is_a_user_error() -> None:
    with pytest.raises(OnnxfiError, match="does not have"):
        draw_flips(_exp(0.1, ["a", "nope"], 0), {"a": (10, 8)})


# --------------------------------------------------------------------------------------- (c) reproducible draws


def test_draws_are_reproducible_and_differ_across_seeds(tmp_path: Path) -> None:
    plan = _plan(DIGITS, [1e-3], 3, seed=11)
    _, index = _index(DIGITS)
    sizes = ber_sizes(index)
    exp = plan.experiments[0]
    first = draw_flips(exp, sizes)
    assert first == draw_flips(exp, sizes)
    plan.save(tmp_path / "p.json")
    again = Plan.load(tmp_path / "p.json").experiments[0]
    assert draw_flips(again, sizes) == first
    others = [draw_flips(e, sizes) for e in plan.experiments[1:]]
    assert all(o != first for o in others) and others[0] != others[1]
    assert len({e.seed for e in plan.experiments}) == 3
    # another process draws the same flips
    code = ("import json, sys; from onnxfi.plan import Plan; from onnxfi.ber import draw_flips, ber_sizes; "
            "from onnxfi.model import load_model; from onnxfi.sites import enumerate_sites; "
            f"l = load_model({str(DIGITS)!r}, check=False); i = enumerate_sites(l.model, l.value_shapes); "
            f"e = Plan.load({str(tmp_path / 'p.json')!r}).experiments[0]; print(json.dumps(draw_flips(e, ber_sizes(i))))")
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120, check=True)
    assert [tuple(f) for f in json.loads(proc.stdout)] == first
    # the plan's seed decides the experiments' seeds
    assert _plan(DIGITS, [1e-3], 3, seed=11).experiments == plan.experiments
    assert _plan(DIGITS, [1e-3], 3, seed=12).experiments != plan.experiments


# --------------------------------------------------------------------------------------------- (d) plan structure


def test_make_ber_plan_structure() -> None:
    _, index = _index(DIGITS)
    weights = index.select("weights")
    plan = make_ber_plan(DIGITS, weights, [1e-4, 1e-6, 1e-5], 5, seed=2)
    rates = [1e-6, 1e-5, 1e-4]
    assert plan.fault_model == "ber" and plan.design == "proportional" and plan.mode == "fixed"
    assert plan.population == sum(s.elements * 32 for s in weights) == 838464
    assert plan.requested == len(plan.experiments) == 15
    assert [e.id for e in plan.experiments] == list(range(15))
    assert len(plan.strata) == len(weights) * 32
    assert all(st.kind == "weight" and st.fault == "flip" and st.n == 0 for st in plan.strata)
    assert plan.options["ber"] == {"rates": rates, "per_rate": 5}
    for e in plan.experiments:
        assert e.site == BER_SITE and e.kind == "weight" and e.index == 0 and e.bit is None
        assert e.fault["kind"] == "ber" and e.fault["sites"] == [s.name for s in weights] and e.fault["bits"] is None
        assert fault_spec(e) == f"ber:{e.fault['rate']:g}"
    assert [e.round for e in plan.experiments] == sorted(e.round for e in plan.experiments)  # round-major
    for r in range(5):
        assert sorted(e.fault["rate"] for e in plan.experiments if e.round == r) == rates
    # more replicates than rounds: at most 20 rounds, each with every rate equally often
    big = make_ber_plan(DIGITS, weights, rates, 45)
    by_round: dict[int, Counter[float]] = {}
    for e in big.experiments:
        by_round.setdefault(e.round, Counter())[e.fault["rate"]] += 1
    assert sorted(by_round) == list(range(20))
    for c in by_round.values():
        assert sorted(c) == rates and len(set(c.values())) == 1
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_make_ber_plan_refuses_bad_input_and_notes_what_it_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    _, index = _index(DIGITS)
    weights = index.select("weights")
    for bad in (0.0, 1.0, -1e-5, float("nan"), "x"):
        with pytest.raises(OnnxfiError, match="bit error rate"):
            make_ber_plan(DIGITS, weights, [1e-5, bad], 2)  # type: ignore[list-item]
    with pytest.raises(OnnxfiError, match=">= 1"):
        make_ber_plan(DIGITS, weights, [1e-5], 0)
    with pytest.raises(OnnxfiError, match="activations are not supported yet"):
        make_ber_plan(DIGITS, index.select("all"), [1e-5], 2)
    plan = make_ber_plan(DIGITS, index.select("all"), [1e-5], 2, target="all")
    acts = [s.name for s in index.select("activations")]
    assert plan.options["left_out_not_weights"] == acts and acts
    assert plan.experiments[0].fault["sites"] == [s.name for s in weights]
    with pytest.raises(OnnxfiError, match="no selected bit"):
        make_ber_plan(DIGITS, weights, [1e-5], 2, bits=[40])
    assert MAX_EXPECTED_FLIPS >= 1e6
    monkeypatch.setattr(onnxfi.ber, "MAX_EXPECTED_FLIPS", 1000)  # 838464 bits at 1e-2: 8385 flips expected
    with pytest.raises(OnnxfiError, match="8,385 of 838,464 bits .* at most 1,000"):
        make_ber_plan(DIGITS, weights, [1e-3, 1e-2], 1)
    make_ber_plan(DIGITS, weights, [1e-3], 1)
    _, q = _index(ZOO / "fashion_cnn_int8_qdq.onnx")
    qplan = make_ber_plan(ZOO / "fashion_cnn_int8_qdq.onnx", q.select("weights"), [1e-5], 1, bits=[30, 31])
    only32 = [s.name for s in q.select("weights") if s.bits == 32]
    assert qplan.experiments[0].fault["sites"] == only32
    assert sorted(qplan.options["left_out_no_bits"]) == sorted(s.name for s in q.select("weights") if s.bits < 31)
    assert qplan.population == sum(s.elements * 2 for s in q.select("weights") if s.bits == 32)


# ------------------------------------------------------------------------------------------------ (e) the runner


@pytest.fixture(scope="module")
def digits_ctx() -> Context:
    return Context(EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA)))


def _accuracy(ctx: Context, golden: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> float:
    row = classify(golden, out, ctx.primary, ctx.choice.task, ctx.data.labels, 0.01, layout=ctx.choice.layout)
    return float(row["metrics"]["task_value"])


def test_ber_runner_collapses_at_a_huge_rate_and_is_golden_at_a_tiny_one(digits_ctx: Context) -> None:
    runner = BerRunner(digits_ctx)
    assert runner.path == "ber" and runner.describe()["site"] == BER_SITE
    plan = _plan(DIGITS, [1e-9, 1e-5, 1e-2], 1, seed=4)
    tiny, mid, huge = sorted(plan.experiments, key=lambda e: e.fault["rate"])
    clean = _accuracy(digits_ctx, runner.golden, runner.golden)
    assert clean > 0.99
    res = runner.result(tiny)
    assert res.extra == {"n_flips": 0.0} and res.path == "ber"
    assert res.outputs.keys() == res.golden.keys()
    for k in res.golden:
        assert np.array_equal(res.outputs[k], res.golden[k])
    hit = runner.result(huge)
    assert hit.extra["n_flips"] > 5000  # ~8400 of 838464 bits
    assert _accuracy(digits_ctx, hit.golden, hit.outputs) < 0.5
    # the weights were put back: the same draw again gives the same outputs (a second XOR would undo it)
    again = runner.result(huge)
    for k in hit.outputs:
        np.testing.assert_array_equal(hit.outputs[k], again.outputs[k])
    some = runner.result(mid)
    assert some.extra["n_flips"] == len(draw_flips(mid, ber_sizes(runner.index))) > 0


# --------------------------------------------------------------------------------------------- (f) the summary


def _row(exp: Experiment, task_value: float, flips: int, sdc1: bool = False, due: bool = False,
         critical: bool = False) -> dict[str, Any]:
    outcome = "critical" if critical else "due" if due else "sdc1" if sdc1 else "masked" if flips == 0 else "tolerable"
    result = {"outcome": outcome, "masked": outcome == "masked", "sdc1": sdc1 or critical, "sdc5": False,
              "critical": critical, "due": due, "crash": False, "images_changed": 0.1 if sdc1 else 0.0,
              "metrics": {"task_value": task_value, "n_flips": float(flips)}, "path": "ber"}
    return experiment_row(exp, result, time_s=0.01, worker=0)


def _synthetic_rows(plan: Plan) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows = []
    for e in plan.experiments:
        r = float(e.fault["rate"])
        if r >= 1e-3 and e.round == 0:
            rows.append(crash_row(e, "worker died", 0))
            continue
        acc = float(np.clip(0.99 - 300 * r + rng.normal(0, 0.02), 0, 1)) if r > 1e-6 else 0.99
        flips = int(round(r * plan.population))
        rows.append(_row(e, acc, flips, sdc1=r >= 1e-4, due=r >= 1e-3 and e.round == 1, critical=r >= 1e-3))
    return rows


def test_ber_summary_per_rate(tmp_path: Path) -> None:
    plan = _plan(DIGITS, [1e-3, 1e-7, 1e-4], 6, seed=1)
    rows = _synthetic_rows(plan)
    rows.append({**rows[0], "id": 10_000})  # not in the plan: ignored
    s = ber_summary(plan, rows, 0.95, clean={"metric": "accuracy", "value": 0.99})
    assert s["fault_model"] == "ber" and s["confidence"] == 0.95 and s["metric"] == "accuracy"
    assert s["clean_value"] == 0.99 and s["progress"] == {"stored": 18, "planned": 18, "complete": True}
    assert [e["rate"] for e in s["ber"]] == [1e-7, 1e-4, 1e-3]
    for e in s["ber"]:
        mine = [r for r in rows if r["id"] < 10_000 and r["fault"] == f"ber:{e['rate']:g}"]
        values = [r["metrics"]["task_value"] for r in mine if not r["crash"]]
        m = e["metric"]
        assert e["n"] == e["planned"] == 6 and m["n"] == len(values)
        assert m["mean"] == pytest.approx(np.mean(values))
        assert m["lo"] <= m["mean"] <= m["hi"]
        if np.std(values) > 0:
            lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
            assert (m["lo"], m["hi"]) == pytest.approx((max(lo, 0.0), min(hi, 1.0)), abs=1e-9)
        assert e["expected_flips"] == pytest.approx(e["rate"] * plan.population)
        for f in FLAG_KEYS:
            k = sum(1 for r in mine if r[f])
            assert (e["rates"][f]["k"], e["rates"][f]["n"]) == (k, 6)
            assert e["rates"][f]["lo"] <= e["rates"][f]["rate"] <= e["rates"][f]["hi"]
    top = s["ber"][-1]
    assert top["left_out"] == {"crash": 1, "not_finite": 0} and top["metric"]["n"] == 5
    assert top["rates"]["crash"]["k"] == 1 and top["rates"]["due"]["k"] == 1
    low = s["ber"][0]["metric"]
    assert low["mean"] == pytest.approx(0.99) and (low["lo"], low["hi"]) == pytest.approx((0.99, 0.99))  # no spread
    # partial: a rate with nothing stored; clean value from a draw that flipped no bit
    part = ber_summary(plan, [r for r in rows if r["fault"] == "ber:1e-07"], None)
    assert part["confidence"] == plan.confidence and part["clean_value"] == 0.99 and part["metric"] == "task metric"
    assert part["progress"]["complete"] is False and [e["n"] for e in part["ber"]] == [6, 0, 0]
    assert math.isnan(part["ber"][1]["metric"]["mean"]) and math.isnan(part["ber"][1]["rates"]["sdc1"]["rate"])
    # without the clean record: the metric's name and clean value as classify stores them in each row
    named = [{**r, "metrics": {**r["metrics"], "task_metric": "accuracy", "clean_value": 0.97}} if not r["crash"] else r
             for r in rows]
    inferred = ber_summary(plan, named)
    assert inferred["metric"] == "accuracy" and inferred["clean_value"] == 0.97


def test_t_quantile_matches_scipy() -> None:
    for conf in (0.8, 0.95, 0.99, 0.999):
        for df in (1, 2, 4, 9, 30, 1000):
            assert t_quantile(conf, df) == pytest.approx(sps.t.ppf((1 + conf) / 2, df), rel=1e-9)


def test_ber_table_lists_every_rate() -> None:
    plan = _plan(DIGITS, [1e-3, 1e-7, 2.5e-4], 3)
    s = ber_summary(plan, _synthetic_rows(plan), 0.99, clean={"metric": "accuracy", "value": 0.99})
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(ber_table(s))
    text = console.export_text()
    for rate in ("1e-07", "0.00025", "0.001"):
        assert rate in text
    assert "accuracy mean" in text and "SDC-1" in text and "left out of the metric means" in text


# ----------------------------------------------------------------------------------------- (g) inject replay


def test_inject_replays_a_ber_experiment(tmp_path: Path, digits_ctx: Context,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    plan = _plan(DIGITS, [1e-5, 2e-4], 2, seed=9)
    plan_path = tmp_path / "run.plan.json"
    plan.save(plan_path)
    exp = next(e for e in plan.experiments if e.fault["rate"] == 2e-4)
    _, index = _index(DIGITS)
    flips = draw_flips(exp, ber_sizes(index))
    out = tmp_path / "faulty.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "onnxfi", "inject", str(DIGITS), "--from-plan", str(plan_path), "--experiment",
         str(exp.id), "-o", str(out), "--json", "-"], env=ENV, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "onnxfi.inject/1" and doc["experiment"] == exp.id
    assert doc["n_flips"] == len(flips) > 50 and doc["fault"]["spec"] == "ber:0.0002"
    assert [(f["site"], f["index"], f["bit"]) for f in doc["flips"]] == flips[:len(doc["flips"])]
    assert doc["bits_total"] == plan.population and doc["output"] == [str(out)]
    want = _expected(file_tensors(DIGITS), flips)
    got = file_tensors(out)
    for name in want:
        np.testing.assert_array_equal(words(got[name]), want[name], err_msg=name)
    # the written model computes what the runner computed for the same experiment
    res = BerRunner(digits_ctx).result(exp)
    x = np.load(DIGITS_DATA, allow_pickle=False)["input"].astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x})[0]
    np.testing.assert_allclose(logits, res.outputs[digits_ctx.primary], rtol=1e-5, atol=1e-5, equal_nan=True)
    # in process: the text says how many flips and where
    assert main(["inject", str(DIGITS), "--from-plan", str(plan_path), "--experiment", str(exp.id),
                 "-o", str(tmp_path / "f2.onnx")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"flips {len(flips):,}" in text and f"{flips[0][0]}[" in text and f"bit {flips[0][2]}" in text
    assert main(["inject", str(DIGITS), "--from-plan", str(plan_path), "--experiment", str(exp.id),
                 "--image", "0", "-o", str(tmp_path / "f3.onnx")]) == 2
    assert "--image" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the report


def _ber_store(path: Path, plan: Plan, rows: list[dict[str, Any]], model: str, metric: str = "accuracy") -> Path:
    with Store(path) as store:
        store.set_meta("plan", plan.to_dict())
        store.set_meta("clean", {"task": "classification", "metric": metric, "value": 0.99, "samples": 360})
        store.set_meta("config", {"model_path": model})
        store.add(rows)
    return path


def test_report_shows_metric_vs_ber(tmp_path: Path) -> None:
    plan = _plan(DIGITS, [1e-3, 1e-7, 1e-4], 4, seed=3)
    rows = _synthetic_rows(plan)
    db = _ber_store(tmp_path / "run.db", plan, rows, str(DIGITS))
    page = render_report(db)
    assert "Bit error rate" in page and 'id="ber"' in page
    for rate in ("1e-07", "0.0001", "0.001"):
        assert f"<td>{rate}</td>" in page
    assert "Per-layer vulnerability" not in page and "Layer × bit" not in page
    assert page.count("<svg") == 1 and "accuracy mean" in page
    assert "1 experiment(s) without a finite accuracy" in page  # the crashed row at 1e-3
    # compared model: the same plan on another model, one line each, names escaped
    hostile = "<img src=x onerror=alert(1)>.onnx"
    other_rows = [{**r, "metrics": {**(r.get("metrics") or {}), "task_value": 0.5}} if not r["crash"] else r
                  for r in rows]
    other = _ber_store(tmp_path / "run.db.compare.db", plan, other_rows, str(tmp_path / hostile), metric="<b>acc</b>")
    with Store(db) as store:
        store.set_meta("compare", {"db": str(other), "model": str(tmp_path / hostile)})
    page = render_report(db)
    assert "<img src=x" not in page and "<b>acc" not in page
    assert html_escaped(hostile) in page and "digits_cnn.onnx" in page
    for name in ("digits_cnn.onnx", html_escaped(hostile)):  # one table row per rate and model
        assert page.count(f"<tr><td><code>{name}</code></td><td>") == 3


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)
