"""Transient faults (one activation element of one inference): plans over (sample, element, bit), a fault that
changes exactly one element of one sample (checked against numpy), the packed cone path equal to the naive
reference experiment by experiment (fp32, int8 QDQ, fp16 zoo models; a model that mixes its batch), rows that
do not depend on which experiments share a run, rows classified many at once equal to one at a time, the
store, and the CLI."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx.helper as oh
import pytest
from conftest import OLD_STORE_SQL, ZOO, make_model, save, vi, words
from onnx import TensorProto

from onnxfi.campaign import run_campaign
from onnxfi.cli import main
from onnxfi.cut import forward_cone
from onnxfi.engine import Engine, EngineConfig
from onnxfi.engine.transient import (
    TransientConeRunner,
    TransientNaiveRunner,
    TransientOutputRunner,
    locate,
    sample_slice,
)
from onnxfi.model import load_model
from onnxfi.outcomes import classify, classify_samples
from onnxfi.plan import Experiment, Plan, extend_plan, make_plan
from onnxfi.sites import enumerate_sites
from onnxfi.store import Store
from onnxfi.summary import aggregate

DIGITS = ZOO / "digits_cnn.onnx"
DIGITS_DATA = ZOO / "data" / "digits_eval.npz"
FASHION_DATA = ZOO / "data" / "fashion_eval.npz"


def _sites(path: Path, target: str = "activations") -> list:
    loaded = load_model(str(path))
    return enumerate_sites(loaded.model, loaded.value_shapes).select(target, None, None, False)


def _transient_plan(path: Path, n: int, images: int, seed: int = 0, **kw: object) -> Plan:
    return make_plan(str(path), _sites(path), ["flip"], None, n, None, seed=seed, target="activations",
                     fault_model="transient", images=images, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ plans


def test_transient_plan_samples_sample_element_bit() -> None:
    plan = _transient_plan(DIGITS, 400, 360, seed=3)
    assert plan.fault_model == "transient" and plan.options["images"] == 360
    sites = {s.name: s for s in _sites(DIGITS)}
    for st in plan.strata:  # the population counts every sample
        assert st.population == sites[st.site].elements * 360
    assert plan.population == sum(st.population for st in plan.strata)
    assert len(plan.experiments) == 400
    for e in plan.experiments:
        assert e.image is not None and 0 <= e.image < 360
        assert 0 <= e.index < sites[e.site].elements
    images = Counter(e.image for e in plan.experiments)
    assert len(images) > 200  # uniform over samples, not one sample
    keys = {(e.site, e.image, e.index, e.bit) for e in plan.experiments}
    assert len(keys) == 400  # drawn without replacement
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.experiments == plan.experiments and again.fault_model == "transient"


def test_old_plans_load_as_persistent() -> None:
    plan = make_plan(str(DIGITS), _sites(DIGITS, "weights"), ["flip"], None, 20, None, seed=0)
    d = plan.to_dict()
    del d["fault_model"]
    for e in d["experiments"]:
        del e["image"]
    old = Plan.from_dict(d)
    assert old.fault_model == "persistent" and all(e.image is None for e in old.experiments)


def test_transient_plan_refusals() -> None:
    from onnxfi.errors import OnnxfiError

    with pytest.raises(OnnxfiError, match="activation"):
        make_plan(str(DIGITS), _sites(DIGITS, "weights"), ["flip"], None, 10, None, fault_model="transient",
                  images=360)
    with pytest.raises(OnnxfiError, match="number of eval samples"):
        make_plan(str(DIGITS), _sites(DIGITS), ["flip"], None, 10, None, fault_model="transient")
    mixed = make_plan(str(DIGITS), _sites(DIGITS, "all"), ["flip"], None, 50, None, fault_model="transient",
                      images=360)
    assert mixed.options["left_out_not_per_inference"]  # the weights
    assert all(e.kind == "activation" for e in mixed.experiments)
    unbatched = [replace(s, batched=False) for s in _sites(DIGITS)]  # e.g. activations of a fixed-batch model
    with pytest.raises(OnnxfiError, match=f"none of the {len(unbatched)} selected activation sites has a batch"):
        make_plan(str(DIGITS), unbatched, ["flip"], None, 10, None, fault_model="transient", images=360)


def test_adaptive_transient_rounds_draw_new_faults() -> None:
    plan = make_plan(str(DIGITS), _sites(DIGITS), ["flip"], None, None, 0.05, seed=1, target="activations",
                     fault_model="transient", images=360, design="adaptive")
    rows = [{"id": e.id, "sdc1": e.id % 7 == 0} for e in plan.experiments]
    grown = extend_plan(plan, rows)
    assert grown is not None and len(grown.experiments) > len(plan.experiments)
    keys = [(e.site, e.image, e.index, e.bit) for e in grown.experiments]
    assert len(set(keys)) == len(keys)  # the space index counts (sample, element): nothing drawn twice
    assert all(e.image is not None and 0 <= e.image < 360 for e in grown.experiments)


def test_locate_and_sample_slice() -> None:
    assert locate([0, 256], [256, 104], 0) == (0, 0)
    assert locate([0, 256], [256, 104], 300) == (1, 44)
    from onnxfi.errors import SiteError

    with pytest.raises(SiteError):
        locate([0, 256], [256, 104], 360)
    out = sample_slice({"y": np.arange(12).reshape(4, 3), "s": np.array(5.0)}, 2, 4)
    assert out["y"].tolist() == [[6, 7, 8]] and float(out["s"]) == 5.0


# ------------------------------------------------------------------- one element of one sample


def _relu_model(tmp_path: Path) -> Path:
    """x -> Relu (site "a") -> Identity -> y: the output shows the faulty site tensor of every sample."""
    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("Identity", ["a"], ["y"])]
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 6])], [vi("y", TensorProto.FLOAT, ["N", 6])])
    return save(m, tmp_path / "relu.onnx")


def _data(tmp_path: Path, n: int = 10) -> Path:
    x = np.random.default_rng(0).uniform(0.5, 2.0, size=(n, 6)).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize("mode", ["suffix", "naive"])
def test_a_transient_fault_changes_one_element_of_one_sample(tmp_path: Path, mode: str) -> None:
    model, data = _relu_model(tmp_path), _data(tmp_path)
    x = np.load(data, allow_pickle=False)["x"]
    cfg = EngineConfig(str(model), data_path=str(data), batch=4, mode=mode, shortcuts=False)
    engine = Engine(cfg)
    runner = engine.runner("a", True, False, transient=True)
    assert isinstance(runner, TransientConeRunner if mode == "suffix" else TransientNaiveRunner)
    exps = [Experiment(i, "a", "activation", idx, bit, {"kind": "flip", "bits": [bit]}, 0, 0, image)
            for i, (image, idx, bit) in enumerate([(5, 2, 30), (6, 0, 31), (9, 5, 22), (5, 4, 1)])]
    for e in exps:
        res = runner.result(e)
        assert e.image is not None
        expected = x[e.image:e.image + 1].copy()  # relu of a positive input: the input itself
        w = words(expected).copy()
        w.reshape(-1)[e.index] ^= np.uint32(1 << e.bit)  # independent: XOR the stored word
        expected = w.view(np.float32).reshape(expected.shape)
        np.testing.assert_array_equal(words(res.outputs["y"]), words(expected))
        np.testing.assert_array_equal(words(res.golden["y"]), words(x[e.image:e.image + 1]))
    if mode == "suffix":  # packed: two faults of sample 5 cannot share a run; the other samples untouched
        assert isinstance(runner, TransientConeRunner)
        k, row = locate(runner.starts, runner.sizes, 5)
        xk, _ = runner._faulty(k, [(row, exps[0]), (locate(runner.starts, runner.sizes, 6)[1], exps[1])])
        before = runner.chunks[k]["a"]
        changed = np.argwhere(words(xk) != words(before))
        assert sorted(map(tuple, changed.tolist())) == sorted([(row, 2), (row + 1, 0)])
        assert runner.gather  # rows of any batches gathered into runs of 4: up to 3 faulty, >= 1 fault-free
        runs = runner.runs
        many = runner.results(exps)
        assert runner.runs - runs == 2 and runner.gather  # samples 5, 6, 9 | 5 again
        for e in exps:
            np.testing.assert_array_equal(many[e.id].outputs["y"], runner.result(e).outputs["y"])
        runner.gather = False  # runs of one cached batch each
        runs = runner.runs
        again = runner.results(exps)
        assert runner.runs - runs == 3  # batch 1 holds samples 5, 6 and 5 again (two runs); batch 2 sample 9
        for e in exps:
            np.testing.assert_array_equal(many[e.id].outputs["y"], again[e.id].outputs["y"])


def _outcomes(model: Path, data: Path, plan: Plan, mode: str, batch: int = 256, packed: bool = True) -> list:
    engine = Engine(EngineConfig(str(model), data_path=str(data), mode=mode, batch=batch))
    rows = []
    exps = plan.experiments
    i = 0
    while i < len(exps):
        group = [exps[i]]
        while i + len(group) < len(exps) and exps[i + len(group)].site == exps[i].site:
            group.append(exps[i + len(group)])
        if packed:
            engine.prefetch(group, True, False)
        rows += [engine.run(e, True, False) for e in group]
        i += len(group)
    return rows


@pytest.mark.parametrize("name,data,n", [
    ("digits_cnn.onnx", DIGITS_DATA, 160),
    ("fashion_cnn_int8_qdq.onnx", FASHION_DATA, 100),
    ("fashion_cnn_fp16.onnx", FASHION_DATA, 100),
])
def test_packed_cone_equals_naive_per_experiment(name: str, data: Path, n: int) -> None:
    model = ZOO / name
    images = int(np.load(data, allow_pickle=False)[next(iter(np.load(data, allow_pickle=False).files))].shape[0])
    plan = _transient_plan(model, n, images, seed=11)
    fast = _outcomes(model, data, plan, "suffix", batch=64)
    ref = _outcomes(model, data, plan, "naive", batch=64)
    assert [r["outcome"] for r in fast] == [r["outcome"] for r in ref]
    assert [r["images_changed"] for r in fast] == [r["images_changed"] for r in ref]
    assert Counter(r["path"].split("+")[0] for r in fast)["transient-cone"] > n // 2
    assert {r["path"] for r in ref} == {"transient-naive"}
    assert any(r["outcome"] != "masked" for r in ref)  # the comparison saw faults that matter


def test_a_site_that_is_a_model_output_needs_no_run() -> None:
    """digits_cnn's logits: a model output no node reads. The faulty sample's logits are its golden ones with
    the one element flipped (checked against numpy), and the outcomes equal the naive reference's."""
    site = [s for s in _sites(DIGITS) if s.name == "logits"]
    plan = make_plan(str(DIGITS), site, ["flip"], [31, 30, 29, 24, 3], 60, None, seed=4, target="activations",
                     fault_model="transient", images=360)
    fast = _outcomes(DIGITS, DIGITS_DATA, plan, "suffix", batch=64)
    ref = _outcomes(DIGITS, DIGITS_DATA, plan, "naive", batch=64)
    assert {r["path"] for r in fast} == {"transient-output"}
    assert [r["outcome"] for r in fast] == [r["outcome"] for r in ref]
    assert any(r["outcome"] not in ("masked", "tolerable") for r in fast)
    engine = Engine(EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA), batch=64))
    runner = engine.runner("logits", True, False, transient=True)
    assert isinstance(runner, TransientOutputRunner)
    e = plan.experiments[0]
    assert e.image is not None and e.bit is not None
    res = runner.result(e)
    expected = words(res.golden["logits"]).copy()
    expected.reshape(-1)[e.index] ^= np.uint32(1 << e.bit)
    np.testing.assert_array_equal(words(res.outputs["logits"]), expected)
    assert not forward_cone(engine.ctx.model_proto().graph, ["logits"])  # why the chooser took this path
    assert forward_cone(engine.ctx.model_proto().graph, ["input"])


def test_rows_do_not_depend_on_packing() -> None:
    plan = _transient_plan(DIGITS, 120, 360, seed=5)
    packed = _outcomes(DIGITS, DIGITS_DATA, plan, "suffix", batch=64)
    alone = _outcomes(DIGITS, DIGITS_DATA, plan, "suffix", batch=64, packed=False)
    strip = [{k: v for k, v in r.items() if k != "path"} for r in packed]
    assert strip == [{k: v for k, v in r.items() if k != "path"} for r in alone]


def test_a_model_that_mixes_its_batch_runs_each_fault_alone(tmp_path: Path) -> None:
    """y = a - mean over the batch of a: a fault in one sample moves every sample's output."""
    nodes = [oh.make_node("Relu", ["x"], ["a"]), oh.make_node("ReduceMean", ["a"], ["m"], axes=[0], keepdims=1),
             oh.make_node("Sub", ["a", "m"], ["y"])]
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 6])], [vi("y", TensorProto.FLOAT, ["N", 6])])
    model, data = save(m, tmp_path / "mix.onnx"), _data(tmp_path, 8)
    plan = make_plan(str(model), [s for s in _sites(model) if s.name == "a"], ["flip"], [30, 29, 22], 20, None,
                     seed=2, target="activations", fault_model="transient", images=8)
    engine = Engine(EngineConfig(str(model), data_path=str(data), mode="suffix", batch=8))
    fast = []
    for e in plan.experiments:
        engine.prefetch(plan.experiments[e.id:e.id + 5], True, False)
        fast.append(engine.run(e, True, False))
    ref = _outcomes(model, data, plan, "naive", batch=8)
    assert [r["outcome"] for r in fast] == [r["outcome"] for r in ref]
    assert any(r["path"].endswith("+alone") for r in fast)
    runner = engine.runner("a", True, False, transient=True)
    assert isinstance(runner, TransientConeRunner) and not runner.gather and runner.coupled


def test_transient_rounds_keep_a_packed_run_per_site() -> None:
    """A site's experiments of one round run packed: a transient plan has no more rounds than ~64 per site."""
    small = _transient_plan(DIGITS, 600, 360, seed=1)
    sites = len({e.site for e in small.experiments})
    assert max(e.round for e in small.experiments) + 1 == max(1, 600 // (64 * sites))
    persistent = make_plan(str(DIGITS), _sites(DIGITS), ["flip"], None, 600, None, seed=1, target="activations")
    assert max(e.round for e in persistent.experiments) + 1 == 12  # one per ~50
    fixed = _transient_plan(DIGITS, 600, 360, seed=1, rounds=6)
    assert max(e.round for e in fixed.experiments) + 1 == 6


# --------------------------------------------------------------------------- campaign, store, CLI


def test_campaign_rows_carry_the_sample(tmp_path: Path) -> None:
    plan = _transient_plan(DIGITS, 150, 360, seed=9)
    with Store(tmp_path / "t.db") as store:
        result = run_campaign(plan, EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA)), store)
        rows = list(store.rows())
    assert [r["image"] for r in rows] == [e.image for e in plan.experiments]
    assert result.summary["fault_model"] == "transient" and "one inference" in result.summary["question"]
    direct = _outcomes(DIGITS, DIGITS_DATA, plan, "suffix", packed=False)
    assert [r["outcome"] for r in rows] == [r["outcome"] for r in direct]  # executor packing changes nothing
    assert all(r["images_changed"] in (0.0, 1.0) for r in rows if r["outcome"] != "crash")
    s = aggregate(plan, rows)
    assert s["rates"]["sdc1"]["k"] == sum(r["sdc1"] for r in rows)


def test_old_database_without_image_column_opens(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(OLD_STORE_SQL)
    con.commit()
    con.close()
    with Store(db) as store:
        rows = list(store.rows())
    assert rows[0]["image"] is None and rows[0]["path"] is None and rows[0]["outcome"] == "masked"


def test_cli_transient_campaign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t.json"
    rc = main(["analyze", "digits_cnn", "--fault-model", "transient", "--faults", "200", "--db",
               str(tmp_path / "t.db"), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Per inference, transient faults" in text
    doc = json.loads(out.read_text())
    assert doc["plan"]["fault_model"] == "transient" and doc["summary"]["fault_model"] == "transient"
    assert doc["summary"]["experiments"] == 200


def test_cli_transient_refuses_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["analyze", "digits_cnn", "--fault-model", "transient", "--target", "weights", "--faults", "20",
               "--db", str(tmp_path / "w.db")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "activation" in err[0]
    assert not (tmp_path / "w.db").exists()


def test_gate_on_transient_faults_can_pass_and_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def gate(limit: float) -> int:
        cfg = tmp_path / f"g{limit}.toml"
        cfg.write_text(f'[gate]\nmodel = "digits_cnn"\ndb = "g.db"\n[gate.plan]\nfault_model = "transient"\n'
                       f'faults = 300\n[gate.thresholds]\nsdc1 = {limit}\n')
        return main(["gate", "--config", str(cfg)])

    assert gate(0.5) == 0
    assert gate(0.0001) == 1  # the same stored campaign, a limit its upper bound exceeds
    with Store(tmp_path / "g.db") as store:
        plan = Plan.from_dict(store.meta("plan"))
    assert plan.fault_model == "transient" and all(e.image is not None for e in plan.experiments)
    capsys.readouterr()
    bad = tmp_path / "bad.toml"
    bad.write_text('[gate]\nmodel = "digits_cnn"\n[gate.plan]\nfault_model = "sometimes"\n[gate.thresholds]\nsdc1 = 0.1\n')
    assert main(["gate", "--config", str(bad)]) == 2
    assert "fault_model" in capsys.readouterr().err


def test_gate_refuses_a_fault_rate_summary() -> None:
    from onnxfi.errors import OnnxfiError
    from onnxfi.gate import GateConfig, evaluate

    with pytest.raises(OnnxfiError, match="--ber"):
        evaluate({"fault_model": "ber", "ber": []}, {}, GateConfig("t.toml", limits={"sdc1": 0.1}))


@pytest.mark.parametrize("kind", ["transient", "ber"])
def test_interrupted_campaign_resumes_to_the_same_rows(tmp_path: Path, kind: str) -> None:
    if kind == "transient":
        plan = _transient_plan(DIGITS, 200, 360, seed=4)
    else:
        from onnxfi.ber import make_ber_plan

        plan = make_ber_plan(str(DIGITS), _sites(DIGITS, "weights"), [1e-5, 1e-4], 6, seed=4)
    cfg = EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA))
    with Store(tmp_path / "whole.db") as store:
        run_campaign(plan, cfg, store)
        whole = list(store.rows())

    def stop(done: int, total: int, live: dict) -> None:
        if done == len(plan.experiments) // 2:
            raise KeyboardInterrupt

    with Store(tmp_path / "cut.db") as store:
        first = run_campaign(plan, cfg, store, progress=stop)
        assert first.interrupted and 0 < store.count() < len(plan.experiments)
        run_campaign(plan, cfg, store, resume=True)
        resumed = list(store.rows())

    def key(r: dict) -> tuple:
        return (r["id"], r["outcome"], r["image"], r["images_changed"], (r["metrics"] or {}).get("n_flips"))

    assert [key(r) for r in resumed] == [key(r) for r in whole]


# ------------------------------------------------------------------- classifying many samples at once


def _one_at_a_time(golden: list, faulty: list, labels: np.ndarray | None, **kw: Any) -> list:
    return [classify(g, f, "y", "classification", None if labels is None else labels[i:i + 1], 0.01, **kw)
            for i, (g, f) in enumerate(zip(golden, faulty))]


def _same_rows(fast: list, ref: list, exact: list[bool]) -> None:
    assert len(fast) == len(ref)
    for a, b, ex in zip(fast, ref, exact):
        assert {k: v for k, v in a.items() if k != "metrics"} == {k: v for k, v in b.items() if k != "metrics"}
        assert a["metrics"].keys() == b["metrics"].keys()
        for k, v in b["metrics"].items():
            if ex or not isinstance(v, float):
                assert a["metrics"][k] == v, k
            else:
                assert a["metrics"][k] == pytest.approx(v, rel=1e-12, abs=1e-300), k


@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("with_labels", [False, True])
def test_classify_samples_gives_the_rows_of_classify(probabilities: bool, with_labels: bool) -> None:
    rng = np.random.default_rng(4)
    e, c = 60, 10
    gold = rng.normal(size=(e, c)).astype(np.float32)
    if probabilities:
        gold = (np.exp(gold) / np.exp(gold).sum(axis=1, keepdims=True)).astype(np.float32)
    bad = gold.copy()
    bad[0:10] += rng.normal(scale=0.01, size=(10, c)).astype(np.float32)  # small changes: tolerable
    bad[10:20, 3] = 50.0  # top-1 changes
    bad[20, 2], bad[21, :] = np.nan, np.inf  # DUE, partly and wholly non-finite
    bad[22, 5] = -np.inf
    bad[23] = bad[23, ::-1]  # permuted: top-5 may leave
    bad[24, :] = bad[24, 0]  # ties everywhere
    bad[25] = np.float32(3.0) * bad[25]
    # rows 26.. stay equal to golden: masked
    side = rng.normal(size=(e, 3)).astype(np.float32)
    side_bad = side.copy()
    side_bad[30, 1] = np.nan  # a DUE in another output of a masked primary
    side_bad[31, 0] += 1.0  # another output changes: not masked, primary unchanged
    golden = [{"y": gold[i:i + 1], "z": side[i:i + 1]} for i in range(e)]
    faulty = [{"y": bad[i:i + 1], "z": side_bad[i:i + 1]} for i in range(e)]
    labels = rng.integers(0, c, size=e) if with_labels else None
    fast = classify_samples(golden, faulty, "y", "classification", labels, 0.01)
    ref = _one_at_a_time(golden, faulty, labels)
    exact = [bool(np.all(np.isfinite(bad[i]))) for i in range(e)]
    _same_rows(fast, ref, exact)
    outcomes = Counter(r["outcome"] for r in ref)
    assert outcomes["masked"] >= 20 and outcomes["due"] >= 4 and outcomes["tolerable"] >= 5
    assert outcomes["sdc1"] + outcomes["sdc5"] + outcomes["critical"] >= 5
    one = classify_samples(golden[10:11], faulty[10:11], "y", "classification",
                           None if labels is None else labels[10:11], 0.01)
    assert one == [fast[10]]  # alone or among others: the same row


def test_classify_samples_falls_back_where_rows_do_not_stack() -> None:
    rng = np.random.default_rng(2)
    gold = rng.normal(size=(4, 1, 3, 5, 5)).astype(np.float32)  # segmentation scores: classified one at a time
    bad = gold.copy()
    bad[1, 0, 0, 2, 2] = 9.0
    golden = [{"y": g} for g in gold]
    faulty = [{"y": b} for b in bad]
    fast = classify_samples(golden, faulty, "y", "segmentation", None, 0.01)
    assert fast == [classify(g, f, "y", "segmentation", None, 0.01) for g, f in zip(golden, faulty)]
    assert [r["outcome"] != "masked" for r in fast] == [False, True, False, False]
    whole = [{"y": np.float32(1.0)}, {"y": np.float32(1.0)}]  # no sample axis
    assert classify_samples(whole, whole, "y", "regression", None, 0.01) == [
        classify(g, g, "y", "regression", None, 0.01) for g in whole]
