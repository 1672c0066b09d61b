"""Ray executor acceptance on a local 2-CPU Ray cluster: the same rows as the local executor, a worker
killed mid-campaign (ray.kill and SIGKILL) loses and repeats nothing, the retry rule of the local
executor (test_executors): a worker killed once under an experiment reruns it, a fault that kills every
worker it lands on is one ``crash`` row after two attempts, a hang is a timeout at once; and the CLI path."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from campaign_helpers import kat_expected, row_key, save_kat
from executor_helpers import MARKERS_ENV

from onnxfi.campaign import run_campaign
from onnxfi.cli import main
from onnxfi.engine import EngineConfig
from onnxfi.errors import InternalError, OnnxfiError
from onnxfi.executors import make_executor
from onnxfi.model import load_model
from onnxfi.plan import Plan, make_plan
from onnxfi.sites import Site, enumerate_sites
from onnxfi.store import Store

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "model_zoo" / "digits_cnn.onnx"
DIGITS_DATA = REPO / "model_zoo" / "data" / "digits_eval.npz"


def _sites(model: Path, target: str, pattern: str | None = None) -> list[Site]:
    loaded = load_model(str(model))
    return enumerate_sites(loaded.model, loaded.value_shapes).select(target, pattern)


@pytest.fixture(scope="module")
def markers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the executor_helpers metrics keep their marks in (the actors get it by environment)."""
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def cluster(markers: Path) -> Any:
    """One local Ray instance for the module (start-up takes seconds); the executor reuses it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": {MARKERS_ENV: str(markers)}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def digits_plan() -> Plan:
    """Weights and activations of digits_cnn: many site groups, so actors switch sites and steal work."""
    return make_plan(DIGITS, _sites(DIGITS, "all"), n_faults=72, seed=7)


@pytest.fixture(scope="module")
def local_rows(digits_plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    db = tmp_path_factory.mktemp("local") / "local.db"
    with Store(db) as store:
        run_campaign(digits_plan, EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA)), store)
        return [row_key(r) for r in store.rows()]


def _run(plan: Plan, db: Path, cfg: EngineConfig,
         **kwargs: Any) -> tuple[list[dict[str, Any]], Any, list[int]]:
    """Run on Ray; returns the stored rows, the result, and the progress counts as yielded."""
    seen: list[int] = []
    user_progress = kwargs.pop("progress", None)

    def progress(done: int, total: int, live: dict[str, Any]) -> None:
        seen.append(done)
        if user_progress:
            user_progress(done)

    with Store(db) as store:
        result = run_campaign(plan, cfg, store, executor="ray", progress=progress, **kwargs)
        rows = list(store.rows())
    return rows, result, seen


def _check_complete(plan: Plan, rows: list[dict[str, Any]], result: Any, seen: list[int]) -> None:
    n = len(plan.experiments)
    assert sorted(r["id"] for r in rows) == list(range(n))  # no gaps
    assert result.executed == n and seen == list(range(1, n + 1))  # nothing yielded twice
    assert not result.interrupted


def test_ray_gives_the_rows_of_the_local_executor(cluster: Any, digits_plan: Plan,
                                                  local_rows: list[dict[str, Any]], tmp_path: Path) -> None:
    cfg = EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA))
    rows, result, seen = _run(digits_plan, tmp_path / "ray.db", cfg, workers=2)
    _check_complete(digits_plan, rows, result, seen)
    assert [row_key(r) for r in rows] == local_rows
    assert {r["worker"] for r in rows} == {0, 1}  # both actors took work
    assert result.clean["value"] > 0.9


def test_workers_killed_mid_campaign_lose_and_repeat_nothing(cluster: Any, digits_plan: Plan,
                                                             local_rows: list[dict[str, Any]],
                                                             tmp_path: Path) -> None:
    before = set(ray.util.list_named_actors())
    killed: list[str] = []

    def ours() -> list[str]:
        """This campaign's live actors, first started first (names end in the worker id)."""
        names = [n for n in set(ray.util.list_named_actors()) - before
                 if n.startswith("onnxfi-worker-") and n not in killed]
        return sorted(names, key=lambda n: int(n.rsplit("-", 1)[1]))

    # Both original actors die while busy, so the rest can only be done by replacements.
    def kill(done: int) -> None:
        if done == 20:  # the Ray way: worker 0
            name = ours()[0]
            ray.kill(ray.get_actor(name))
            killed.append(name)
        elif done == 45:  # as the OS would (OOM killer, a segfault): SIGKILL of worker 1's process
            name = ours()[0]
            pid = ray.get(ray.get_actor(name).pid.remote(), timeout=60)
            os.kill(pid, signal.SIGKILL)
            killed.append(name)

    cfg = EngineConfig(str(DIGITS), data_path=str(DIGITS_DATA))
    # Two kills may both land on one experiment (requeued after the first, in flight again at the
    # second); with three attempts neither kill can turn an experiment into a crash row.
    rows, result, seen = _run(digits_plan, tmp_path / "ray.db", cfg, workers=2, progress=kill, max_attempts=3)
    assert len(killed) == 2
    _check_complete(digits_plan, rows, result, seen)
    assert [row_key(r) for r in rows] == local_rows  # retried experiments: same outcomes, no crash rows
    assert [n.rsplit("-", 1)[1] for n in killed] == ["0", "1"]
    assert max(r["worker"] for r in rows) >= 2  # replacement actors ran the rest


def test_a_fault_that_kills_every_worker_is_one_crash_row_and_a_hang_a_timeout(
        cluster: Any, tmp_path: Path) -> None:
    model, data = save_kat(tmp_path)
    plan = make_plan(model, _sites(model, "all", "^W$"), bits=[30, 31], n_faults=10**6)
    assert len(plan.experiments) == 36
    # SIGKILL on W[0] bit 31 (every attempt), sleep on W[7] bit 31 (= W[1, 1]); in the actors.
    cfg = EngineConfig(str(model), data_path=str(data), metric="campaign_helpers:kill_or_hang")
    rows, result, seen = _run(plan, tmp_path / "ray.db", cfg, workers=2, min_timeout_s=3)
    _check_complete(plan, rows, result, seen)
    crashed = {(r["site"], r["idx"], r["bit"]): r["error"] for r in rows if r["outcome"] == "crash"}
    assert set(crashed) == {("W", 0, 31), ("W", 7, 31)}
    assert crashed[("W", 0, 31)].startswith("worker died (")
    assert crashed[("W", 0, 31)].endswith("; on 2 attempts)")
    assert "timeout" in crashed[("W", 7, 31)]
    # the actors had built the site's runner: the crash rows say which path they ran on
    assert all(r["path"] for r in rows)
    for r in rows:
        if r["outcome"] != "crash":
            assert r["error"] is None
            assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})
    assert Counter(r["outcome"] for r in rows)["crash"] == 2


def test_a_worker_killed_once_reruns_the_experiment(cluster: Any, markers: Path, tmp_path: Path) -> None:
    model, data = save_kat(tmp_path)
    plan = make_plan(model, _sites(model, "all", "^W$"), bits=[30, 31], n_faults=10**6)
    cfg = EngineConfig(str(model), data_path=str(data), metric="executor_helpers:kill_once")
    rows, result, seen = _run(plan, tmp_path / "ray.db", cfg, workers=2)
    _check_complete(plan, rows, result, seen)
    assert (markers / "killed").exists()  # the planted run did kill its actor
    for r in rows:
        assert r["error"] is None
        assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})


def test_cli_analyze_with_ray(cluster: Any, tmp_path: Path) -> None:
    model, data = save_kat(tmp_path)
    db = tmp_path / "cli.db"
    rc = main(["analyze", str(model), "--data", str(data), "--faults", "24", "--executor", "ray",
               "--workers", "2", "--db", str(db), "--json", str(tmp_path / "s.json")])
    assert rc == 0
    with Store(db) as store:
        assert store.count() == 24


def test_executor_names_are_checked(tmp_path: Path) -> None:
    cfg = EngineConfig(str(tmp_path / "m.onnx"))
    with pytest.raises(OnnxfiError, match="unknown executor 'dask'.*local, ray"):
        make_executor("dask", cfg)
    with pytest.raises(OnnxfiError, match="--address needs --executor ray"):
        make_executor("local", cfg, address="10.0.0.1:6379")
    assert main(["analyze", str(tmp_path / "m.onnx"), "--address", "auto"]) == 2


def test_a_node_without_the_model_gets_it_shipped(cluster: Any, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A node whose copy differs gets the model and data through the object store and runs on its own copy
    under ``$TMPDIR/onnxfi-ray-files/``. Here every node's copy differs: the driver records wrong hashes
    (its ``file_sha256`` is replaced; the actors, other processes, hash the files truly)."""
    import onnxfi.plan
    from onnxfi.executors.ray import COPIES_DIR

    model, data = save_kat(tmp_path)
    plan = make_plan(model, _sites(model, "all", "^W$"), bits=[30, 31], n_faults=10**6)
    root = Path(tempfile.gettempdir()) / COPIES_DIR
    before = set(root.glob("*"))
    monkeypatch.setattr(onnxfi.plan, "file_sha256", lambda path: "0" * 64)
    ex = make_executor("ray", EngineConfig(str(model), data_path=str(data)), workers=1)
    try:
        rows = list(ex.run(plan.experiments, lambda site: (True, False)))
    finally:
        ex.close()
    new = set(root.glob("*")) - before
    try:
        assert len(new) == 1  # the actor wrote its copies
        copied = {p.name: p.read_bytes() for p in next(iter(new)).rglob("*") if p.is_file()}
        assert copied == {model.name: model.read_bytes(), data.name: data.read_bytes()}
    finally:
        for d in new:
            shutil.rmtree(d, ignore_errors=True)
    assert sorted(r["id"] for r in rows) == list(range(len(plan.experiments)))
    for r in rows:
        assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})


def test_an_address_nobody_listens_on_fails_fast() -> None:
    from onnxfi.executors.ray import check_reachable

    with pytest.raises(OnnxfiError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1")
    check_reachable("auto")  # left to Ray


def test_ctrl_c_keeps_what_finished_and_resume_completes(cluster: Any, tmp_path: Path) -> None:
    """KeyboardInterrupt in the driver's loop (as Ctrl-C raises it): stored rows kept, actors gone, resume."""
    model, data = save_kat(tmp_path)
    plan = make_plan(model, _sites(model, "all", "^W$"), bits=[30, 31], n_faults=10**6)
    cfg = EngineConfig(str(model), data_path=str(data))
    before = set(ray.util.list_named_actors())

    def interrupt(done: int, total: int, live: dict[str, Any]) -> None:
        if done == 10:
            raise KeyboardInterrupt

    db = tmp_path / "ray.db"
    with Store(db) as store:
        result = run_campaign(plan, cfg, store, workers=2, executor="ray", progress=interrupt)
        assert result.interrupted and store.count() == 10
    assert not set(ray.util.list_named_actors()) - before  # the actors were killed
    with Store(db) as store:
        result = run_campaign(plan, cfg, store, workers=2, executor="ray", resume=True)
        rows = list(store.rows())
    assert not result.interrupted and result.executed == 26
    assert sorted(r["id"] for r in rows) == list(range(36))
    for r in rows:
        assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})


def test_a_bug_in_onnxfi_in_an_actor_stops_the_campaign_with_its_traceback(
        cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on the local executor (test_executors): a Python exception from onnxfi's code in an actor is
    InternalError with the actor's traceback, never a crash row; the user's metric raising is one line."""
    from test_executors import _PLANT_BUG

    folder = tmp_path / "plants"
    folder.mkdir()
    (folder / "plant_bug_ray.py").write_text(_PLANT_BUG)
    monkeypatch.syspath_prepend(str(folder))  # the actors add the driver's sys.path
    model, data = save_kat(tmp_path)
    plan = make_plan(model, _sites(model, "all", "^W$"), bits=[30, 31], n_faults=10**6)
    cfg = EngineConfig(str(model), data_path=str(data), metric="plant_bug_ray:metric")
    with Store(tmp_path / "bug.db") as store:
        with pytest.raises(InternalError) as ei:
            run_campaign(plan, cfg, store, executor="ray", workers=2)
        rows = list(store.rows())
    assert "ZeroDivisionError" in ei.value.message and "W[0] bit 31" in ei.value.message
    assert ei.value.detail is not None and "plant_bug_ray.py" in ei.value.detail
    assert not any(r["crash"] for r in rows) and ("W", 0, 31) not in {(r["site"], r["idx"], r["bit"]) for r in rows}
    cfg = EngineConfig(str(model), data_path=str(data), metric="campaign_helpers:raise_on_negated_first")
    with Store(tmp_path / "metric.db") as store:
        with pytest.raises(OnnxfiError, match="raise_on_negated_first raised RuntimeError: planted failure"):
            run_campaign(plan, cfg, store, executor="ray", workers=2)
