"""The executors' shared rules on the local executor (test_ray_executor holds the same on Ray): a worker
killed once under an experiment reruns it on a fresh worker and stores its true outcome; an experiment
that kills every worker it runs on is one ``crash`` row after ``MAX_ATTEMPTS`` deaths; a hang is a
``crash`` at once; every experiment is yielded once. Errors are not outcomes: only ONNX Runtime failing on
the faulty model is a ``crash`` row; a bug in onnxfi stops the campaign with the worker's traceback
(InternalError), a user error (a custom metric that raises) with one line (OnnxfiError)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest
from campaign_helpers import kat_expected, save_kat
from executor_helpers import MARKERS_ENV
from onnx import TensorProto

from onnxfi.campaign import run_campaign
from onnxfi.engine import EngineConfig
from onnxfi.errors import InternalError, MetricError, OnnxfiError, SessionError
from onnxfi.executors import _common as common
from onnxfi.executors import make_executor
from onnxfi.faults import BitFlip
from onnxfi.model import load_model
from onnxfi.plan import Experiment, Plan, make_plan
from onnxfi.sites import enumerate_sites
from onnxfi.store import Store

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
    assert crashed[0]["path"]  # it died after building the site's runner: the path is known
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


# ------------------------------------------------------------------ errors are not outcomes

# Imported by the worker as a --metric module: importing it plants a bug in the engine (a ZeroDivisionError
# on the planted experiment), as a real bug in onnxfi's own code would raise there.
_PLANT_BUG = '''
import onnxfi.engine.engine as _engine

_run = _engine.Engine.run


def _buggy_run(self, exp, needs_bits, needs_values):
    if (exp.site, exp.index, exp.bit) == ("W", 0, 31):
        return 1 // 0
    return _run(self, exp, needs_bits, needs_values)


_engine.Engine.run = _buggy_run


def metric(faulty, golden, labels):
    return 0.0
'''

_NO_BUG = '''
def metric(faulty, golden, labels):
    return 0.0
'''


@pytest.fixture
def plants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Modules for --metric: ``plant_bug`` (plants a bug in the engine), ``plant_none`` (no bug)."""
    folder = tmp_path / "plants"
    folder.mkdir()
    (folder / "plant_bug.py").write_text(_PLANT_BUG)
    (folder / "plant_none.py").write_text(_NO_BUG)
    monkeypatch.syspath_prepend(str(folder))  # spawned workers get the parent's sys.path
    return folder


def test_a_bug_in_onnxfi_stops_the_campaign_with_the_workers_traceback_and_resume_completes(
        kat: tuple[Path, Path, Plan], plants: Path, tmp_path: Path) -> None:
    """A Python exception from onnxfi's own code in a worker is not a fault outcome: the campaign raises
    InternalError (not a user error) carrying the worker's traceback, stores no row for that experiment
    and no crash row at all, and keeps the rows it had, so --resume (the bug fixed) completes the plan."""
    model, data, plan = kat
    buggy = EngineConfig(str(model), data_path=str(data), metric="plant_bug:metric")
    with Store(tmp_path / "c.db") as store:
        with pytest.raises(InternalError) as ei:
            run_campaign(plan, buggy, store, workers=2)
        assert not isinstance(ei.value, OnnxfiError)
        err = ei.value
        assert "ZeroDivisionError" in err.message and "experiment" in err.message and "W[0] bit 31" in err.message
        assert err.detail is not None and "plant_bug.py" in err.detail and "1 // 0" in err.detail
        assert "traceback in the worker" in str(err)
        rows = list(store.rows())
        assert not any(r["crash"] for r in rows)
        assert PLANTED not in {_key(r) for r in rows}
        assert len(rows) < len(plan.experiments)
        fixed = EngineConfig(str(model), data_path=str(data), metric="plant_none:metric")
        run_campaign(plan, fixed, store, resume=True)
        rows = list(store.rows())
    assert sorted(r["id"] for r in rows) == list(range(len(plan.experiments)))
    for r in rows:
        assert not r["crash"] and r["path"]
        assert r["outcome"] == kat_expected(r["site"], r["idx"], {"kind": "flip", "bits": [r["bit"]]})


def test_a_custom_metric_that_raises_is_a_one_line_user_error(kat: tuple[Path, Path, Plan],
                                                              tmp_path: Path) -> None:
    """The user's --metric raising is the user's error, not a fault outcome and not a bug in onnxfi: the
    campaign stops with one line naming the metric and the experiment."""
    model, data, plan = kat
    cfg = EngineConfig(str(model), data_path=str(data), metric="campaign_helpers:raise_on_negated_first")
    with Store(tmp_path / "m.db") as store:
        with pytest.raises(OnnxfiError) as ei:
            run_campaign(plan, cfg, store)
        rows = list(store.rows())
    msg = str(ei.value)
    assert "\n" not in msg
    assert "--metric campaign_helpers:raise_on_negated_first raised RuntimeError: planted failure" in msg
    assert "W[0] bit 31" in msg
    assert not any(r["crash"] for r in rows) and PLANTED not in {_key(r) for r in rows}


def _reshape_model(tmp_path: Path) -> tuple[Path, Path]:
    """x[5,4] -> Reshape(x, shape = [-1, 4]) -> y: a flipped bit 1 of the shape (-1 -> -3, 4 -> 6) makes
    ONNX Runtime refuse the Reshape (when it folds the constant, or while running)."""
    g = oh.make_graph([oh.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                      [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                      initializer=[onh.from_array(np.array([-1, 4], np.int64), "shape")])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "rs.onnx")
    np.savez(tmp_path / "rs.npz", x=np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    return tmp_path / "rs.onnx", tmp_path / "rs.npz"


@pytest.mark.parametrize("mode", ["suffix", "naive"])
def test_an_onnxruntime_failure_on_the_faulty_model_is_a_crash_row(tmp_path: Path, mode: str) -> None:
    model, data = _reshape_model(tmp_path)
    loaded = load_model(str(model))
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("weights", "^shape$", None, True)
    plan = make_plan(model, sites, bits=[1], n_faults=10)
    assert [(e.index, e.bit) for e in plan.experiments] == [(0, 1), (1, 1)]
    with Store(tmp_path / "rs.db") as store:
        run_campaign(plan, EngineConfig(str(model), data_path=str(data), mode=mode), store)
        rows = list(store.rows())
    assert [r["outcome"] for r in rows] == ["crash", "crash"]
    for r in rows:
        assert "ONNXRuntimeError" in r["error"] and "Reshape" in r["error"]
        assert r["path"] == ("cone-baked" if mode == "suffix" else "naive")  # the path is known: recorded


# run_one's replies, on a fake engine: what is a crash row and what stops the campaign


class _FakeRunner:
    path = "fake-path"


class _FakeEngine:
    def __init__(self, run: Any = None, runner: Any = None) -> None:
        self._run, self._runner = run, runner

    def runner(self, site: str, needs_bits: bool, needs_values: bool, transient: bool = False) -> _FakeRunner:
        if self._runner is not None:
            self._runner()
        return _FakeRunner()

    def run(self, exp: Experiment, needs_bits: bool, needs_values: bool) -> dict[str, Any]:
        return self._run()  # type: ignore[no-any-return]


def _exp() -> Experiment:
    return Experiment(id=7, site="conv.weight", kind="weight", index=3, bit=30, fault=BitFlip((30,)).to_dict(),
                      seed=1)


def _raise(e: BaseException) -> Any:
    def f() -> Any:
        raise e
    return f


def _ort_runtime_error() -> Any:
    """ONNX Runtime raising a plain RuntimeError from inside its own code (it cannot return bfloat16)."""
    g = oh.make_graph([oh.make_node("Cast", ["x"], ["y"], to=TensorProto.BFLOAT16)], "g",
                      [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                      [oh.make_tensor_value_info("y", TensorProto.BFLOAT16, [2])])
    sess = ort.InferenceSession(oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
                                .SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": np.ones(2, np.float32)})


def _reply(engine: Any) -> tuple[str, Any]:
    return common.run_one(engine, _exp(), True, False, worker=3)


def test_onnxruntime_errors_are_crash_rows_with_the_runners_path() -> None:
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

    for run in (_raise(Fail("[ONNXRuntimeError] : 1 : FAIL : bad node")), _raise(InvalidArgument("bad input")),
                _raise(SessionError("onnxruntime cannot load the model: x")), _raise(MemoryError()),
                _ort_runtime_error()):
        kind, row = _reply(_FakeEngine(run))
        assert kind == common.RESULT
        assert row["outcome"] == "crash" and row["crash"] and row["path"] == "fake-path" and row["worker"] == 3
        assert row["id"] == 7 and row["error"]
        assert common.unwrap((kind, row)) is row


@pytest.mark.parametrize("error", [ZeroDivisionError("division by zero"), ValueError("broken invariant"),
                                   RuntimeError("raised by onnxfi, not by onnxruntime"), KeyError("k"),
                                   AssertionError("assert")])
def test_any_other_exception_in_an_experiment_is_an_internal_error(error: Exception) -> None:
    kind, value = _reply(_FakeEngine(_raise(error)))
    assert kind == common.INTERNAL_ERROR
    with pytest.raises(InternalError) as ei:
        common.unwrap((kind, value))
    assert type(error).__name__ in ei.value.message and "experiment 7 (conv.weight[3] bit 30" in ei.value.message
    assert ei.value.detail is not None and "Traceback" in ei.value.detail and "test_executors.py" in ei.value.detail


def test_a_runner_that_cannot_be_built_is_never_a_crash() -> None:
    """A site's runner holds only fault-free sessions (the chooser already fell back where ORT refused a
    faster path's): its failure is an error, even an ORT one."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    kind, _ = _reply(_FakeEngine(runner=_raise(ValueError("bug"))))
    assert kind == common.INTERNAL_ERROR
    kind, _ = _reply(_FakeEngine(runner=_raise(Fail("cannot build"))))
    assert kind == common.INTERNAL_ERROR
    kind, msg = _reply(_FakeEngine(runner=_raise(SessionError("onnxruntime cannot load the model: y"))))
    assert kind == common.USER_ERROR and "building the runner of site conv.weight" in msg


def test_user_errors_in_an_experiment_are_one_line_onnxfi_errors() -> None:
    kind, msg = _reply(_FakeEngine(_raise(MetricError("--metric m:f raised TypeError: no"))))
    assert kind == common.USER_ERROR
    with pytest.raises(OnnxfiError) as ei:
        common.unwrap((kind, msg))
    assert not isinstance(ei.value, InternalError) and "\n" not in str(ei.value)
    assert str(ei.value).startswith("experiment 7 (conv.weight[3] bit 30, flip:30): --metric m:f raised")


def test_startup_errors() -> None:
    """A worker whose engine cannot start: the user's input (or ORT refusing the clean model) is one line,
    a bug is an internal error."""
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    assert common.startup_error(OnnxfiError("data file not found: d.npz"))[0] == common.USER_ERROR
    assert common.startup_error(InvalidArgument("bad input shape"))[0] == common.USER_ERROR
    # a long user error reaches the parent whole: its end says what to do (it was cut at 300 characters)
    long = OnnxfiError("no output looks like class scores; outputs: " + ", ".join(f"out{i} [N,7600,10]" for i in range(30))
                       + "; choose one with --output NAME")
    assert common.startup_error(long) == (common.USER_ERROR, str(long))
    try:
        raise TypeError("bug")
    except TypeError as e:
        kind, value = common.startup_error(e)
    assert kind == common.INTERNAL_ERROR and "TypeError: bug" in value[0]


def _analyze_argv(model: Path, data: Path, db: Path, metric: str) -> list[str]:
    return ["analyze", str(model), "--data", str(data), "--target", "weights", "--sites", "^W$", "--bits", "30,31",
            "--faults", "36", "--metric", metric, "--db", str(db)]


def test_cli_exit_codes_user_error_2_internal_error_70(kat: tuple[Path, Path, Plan], plants: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from onnxfi.cli import main

    model, data, _ = kat
    assert main(_analyze_argv(model, data, tmp_path / "u.db", "campaign_helpers:raise_on_negated_first")) == 2
    err = capsys.readouterr().err
    assert err.startswith("onnxfi: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert main(_analyze_argv(model, data, tmp_path / "i.db", "plant_bug:metric")) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "InternalError" in err
    assert "traceback in the worker" in err and "1 // 0" in err and "ZeroDivisionError" in err
    assert "this is a bug in onnxfi" in err and "please report it" in err


def test_cli_internal_error_end_to_end(kat: tuple[Path, Path, Plan], plants: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    model, data, _ = kat
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plants), str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, "-m", "onnxfi", *_analyze_argv(model, data, tmp_path / "s.db",
                                                                          "plant_bug:metric")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 70, proc.stderr
    assert "ZeroDivisionError" in proc.stderr and "please report it" in proc.stderr


def test_a_worker_takes_the_current_rounds_chunk_of_a_site_it_had_before() -> None:
    """Site affinity (local executor): a later round's chunk of a site goes to the worker that built that
    site's runner, when it is of the round now running; rounds are never taken out of order."""

    from onnxfi.executors.local import _take_chunk, _Worker

    def exp(i: int, site: str, rnd: int) -> Experiment:
        return Experiment(id=i, site=site, kind="weight", index=0, bit=0, fault=BitFlip((0,)).to_dict(), seed=0,
                          round=rnd)

    chunks = common.chunk_by_site([exp(0, "a", 0), exp(1, "b", 0), exp(2, "c", 0), exp(3, "b", 1), exp(4, "a", 1)])
    w = _Worker(wid=0, proc=None, conn=None)  # type: ignore[arg-type]
    w.sites = {"c"}
    assert [e.id for e in _take_chunk(chunks, w)] == [2]  # its site, behind two others of the same round
    assert [e.id for e in _take_chunk(chunks, w)] == [0]  # none of its sites left in round 0: the first chunk
    assert w.sites == {"c", "a"}
    # round 0 still has b: round 1's a waits, though the worker had a
    assert [e.id for e in _take_chunk(chunks, w)] == [1]
    v = _Worker(wid=1, proc=None, conn=None)  # type: ignore[arg-type]
    v.sites = {"a"}
    assert [e.id for e in _take_chunk(chunks, v)] == [4]  # round 1 now: its site a before b
    assert [e.id for e in _take_chunk(chunks, v)] == [3] and not chunks
