"""The executors' shared rules on the local executor (test_ray_executor holds the same on Ray): a worker
killed once under an experiment reruns it on a fresh worker and stores its true outcome; an experiment
that kills every worker it runs on is one ``crash`` row after ``MAX_ATTEMPTS`` deaths; a hang is a
``crash`` at once; every experiment is yielded once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from campaign_helpers import kat_expected, save_kat
from executor_helpers import MARKERS_ENV

from onnxfi.engine import EngineConfig
from onnxfi.executors import make_executor
from onnxfi.model import load_model
from onnxfi.plan import Plan, make_plan
from onnxfi.sites import enumerate_sites

PLANTED = ("W", 0, 31)


@pytest.fixture
def kat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Plan]:
    model, data = save_kat(tmp_path)
    loaded = load_model(str(model))
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("all", "^W$")
    plan = make_plan(model, sites, bits=[30, 31], n_faults=10**6)
    assert len(plan.experiments) == 36
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(MARKERS_ENV, str(markers))  # spawned workers inherit it
    return model, data, plan


def _rows(model: Path, data: Path, plan: Plan, metric: str, **kwargs: Any) -> list[dict[str, Any]]:
    cfg = EngineConfig(str(model), data_path=str(data), metric=f"executor_helpers:{metric}")
    ex = make_executor("local", cfg, **kwargs)
    try:
        rows = list(ex.run(plan.experiments, lambda site: (True, False)))
    finally:
        ex.close()
    assert sorted(r["id"] for r in rows) == list(range(len(plan.experiments)))  # each exactly once
    return rows


def _key(r: dict[str, Any]) -> tuple[str, int, int]:
    return (r["site"], r["idx"], r["bit"])


def test_a_worker_killed_once_reruns_the_experiment_on_a_fresh_worker(kat: tuple[Path, Path, Plan]) -> None:
    model, data, plan = kat
    rows = _rows(model, data, plan, "kill_once")
    assert (Path(_env_markers()) / "killed").exists()  # the planted run did kill its worker
    for r in rows:
        assert r["error"] is None and r["outcome"] != "crash"
        assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})
    rerun = next(r for r in rows if _key(r) == PLANTED)
    assert rerun["worker"] == 1  # worker 0 died under it; its replacement ran it


def test_a_fault_that_kills_every_worker_is_one_crash_row_after_two_attempts(
        kat: tuple[Path, Path, Plan]) -> None:
    model, data, plan = kat
    rows = _rows(model, data, plan, "kill_always")
    crashed = [r for r in rows if r["outcome"] == "crash"]
    assert [_key(r) for r in crashed] == [PLANTED]
    assert crashed[0]["error"] == "worker died (exit code -9; on 2 attempts)"
    assert (Path(_env_markers()) / "deaths").read_text() == "xx"  # run twice, no more
    assert crashed[0]["worker"] == 1  # the second worker it killed
    for r in rows:
        if r is not crashed[0]:
            assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})


def test_max_attempts_one_stores_the_first_death(kat: tuple[Path, Path, Plan]) -> None:
    model, data, plan = kat
    from onnxfi.executors.local import LocalExecutor

    cfg = EngineConfig(str(model), data_path=str(data), metric="executor_helpers:kill_always")
    ex = LocalExecutor(cfg, max_attempts=1)
    try:
        rows = list(ex.run(plan.experiments, lambda site: (True, False)))
    finally:
        ex.close()
    crashed = [r for r in rows if r["outcome"] == "crash"]
    assert [r["error"] for r in crashed] == ["worker died (exit code -9; on 1 attempt)"]
    assert (Path(_env_markers()) / "deaths").read_text() == "x"


def _env_markers() -> str:
    import os

    return os.environ[MARKERS_ENV]
