"""Deterministic rows: the same plan and seed give the same stored row for every experiment (outcome,
flags, metrics, images_changed, path) whatever the worker count and however the campaign was cut and
resumed. Every decision that can change a row (the execution path, a fed weight run re-run baked) is a
function of the experiment and its site alone, never of the experiments a worker ran before.

The model is small but takes the paths whose choice once depended on history: a Conv followed by a
BatchNormalization that ORT folds when its parameters are constants, so the BN parameters and the Conv
weight run on the fed cone with rounding-ambiguous faults re-run baked (``cone`` / ``cone+baked``), and
activations on the cone with the exact shortcut under the ReLU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from campaign_helpers import row_key
from onnx import TensorProto

from onnxfi.campaign import run_campaign
from onnxfi.engine import EngineConfig
from onnxfi.model import load_model
from onnxfi.plan import Plan, make_plan
from onnxfi.sites import enumerate_sites
from onnxfi.store import Store

N_FAULTS = 200


def conv_bn_model(tmp_path: Path) -> tuple[str, str]:
    """x[N,1,6,6] -> Conv(cw, 4 channels) -> BatchNormalization -> Relu -> GlobalAveragePool -> Flatten
    -> y[N,4] (4 class scores); 12 samples with labels."""
    rng = np.random.default_rng(0)
    nodes = [
        oh.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["bn"], name="bn"),
        oh.make_node("Relu", ["bn"], ["r"], name="relu"),
        oh.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        oh.make_node("Flatten", ["p"], ["y"], name="flat"),
    ]
    inits = [onh.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "cw")] + [
        onh.from_array(v.astype(np.float32), n)
        for n, v in (("g", rng.uniform(0.5, 2, 4)), ("b", rng.normal(size=4)), ("mu", rng.normal(size=4)),
                     ("var", rng.uniform(0.1, 2, 4)))
    ]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=inits)
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "m.onnx")
    x = rng.normal(size=(12, 1, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=rng.integers(0, 4, 12))
    return str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")


@pytest.fixture(scope="module", params=[False, True], ids=["default-rules", "cost-model"])
def setup(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[Plan, EngineConfig, Path]:
    """The plan and config, once with the chooser's default rules (the fed cone and its baked re-runs, the
    paths whose choice once depended on history) and once with the cost model (baked cones per fault)."""
    tmp = tmp_path_factory.mktemp("det")
    model, data = conv_bn_model(tmp)
    loaded = load_model(model)
    # every weight, and the two small activations (the big ones would take most of a proportional sample)
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("all", "^(cw|g|b|mu|var|p|y)$")
    plan = make_plan(model, sites, n_faults=N_FAULTS, seed=11)
    return plan, EngineConfig(model, data_path=data, cost_model=request.param), tmp


def _campaign(plan: Plan, cfg: EngineConfig, db: Path, stop_after: int | None = None,
              **kwargs: Any) -> list[dict[str, Any]]:
    """The stored rows of a campaign; with ``stop_after``, interrupted (as Ctrl-C does) after that many
    rows, then resumed from the database in a new run."""

    def interrupt(done: int, planned: int, live: dict[str, Any]) -> None:
        if stop_after is not None and done >= stop_after:
            raise KeyboardInterrupt

    with Store(db) as store:
        first = run_campaign(plan, cfg, store, progress=interrupt, **kwargs)
        if stop_after is not None:
            assert first.interrupted and 0 < store.count() < len(plan.experiments)
            run_campaign(plan, cfg, store, resume=True, **kwargs)
        return list(store.rows())


@pytest.fixture(scope="module")
def one_worker(setup: tuple[Plan, EngineConfig, Path]) -> list[dict[str, Any]]:
    plan, cfg, tmp = setup
    return _campaign(plan, cfg, tmp / "w1.db", workers=1)


def _check_same(a: list[dict[str, Any]], b: list[dict[str, Any]], plan: Plan) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b] == [e.id for e in sorted(plan.experiments, key=lambda e: e.id)]
    for ra, rb in zip(a, b):
        assert row_key(ra) == row_key(rb), (ra["site"], ra["idx"], ra["bit"])


def test_the_model_takes_the_history_sensitive_paths(setup: tuple[Plan, EngineConfig, Path],
                                                     one_worker: list[dict[str, Any]]) -> None:
    """The campaign exercises what the test is about: fed weight runs, some re-run baked, activations,
    and every row names its path."""
    paths = {r["path"] for r in one_worker}
    assert None not in paths
    if setup[1].cost_model:
        assert {"cone-baked", "port"} <= paths
    else:
        assert {"cone", "cone+baked", "port"} <= paths
    assert {r["kind"] for r in one_worker} == {"weight", "activation"}
    assert not any(r["crash"] for r in one_worker)


def test_two_workers_store_the_rows_of_one(setup: tuple[Plan, EngineConfig, Path],
                                           one_worker: list[dict[str, Any]]) -> None:
    plan, cfg, tmp = setup
    rows = _campaign(plan, cfg, tmp / "w2.db", workers=2)
    assert {r["worker"] for r in rows} == {0, 1}  # the sites were shared out
    _check_same(one_worker, rows, plan)


def test_an_interrupted_and_resumed_campaign_stores_the_rows_of_one_run(
        setup: tuple[Plan, EngineConfig, Path], one_worker: list[dict[str, Any]]) -> None:
    plan, cfg, tmp = setup
    _check_same(one_worker, _campaign(plan, cfg, tmp / "resumed.db", stop_after=len(plan.experiments) // 3,
                                      workers=1), plan)
