"""Kill -9 anywhere: ``onnxfi analyze`` (the CLI and its spawned workers) killed with SIGKILL at named points
(before the plan is stored, between the plan and its settings, with rows inserted but not committed, after
the workers started, before the summary) and at seeded random moments, then continued (``--resume``, or
``--overwrite`` where nothing was stored) until it finishes, stores exactly the rows of an uninterrupted run:
the same ids, none lost, none twice, the same outcomes, flags and metrics. The lock file a killed campaign
leaves behind never blocks the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from campaign_helpers import row_key

from onnxfi.errors import OnnxfiError
from onnxfi.store import Store

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "model_zoo" / "digits_cnn.onnx"
DIGITS_DATA = REPO / "model_zoo" / "data" / "digits_eval.npz"
FAULTS = 80
KILL_ENV = "ONNXFI_TEST_KILL_AT"  # onnxfi.store's test hook: SIGKILL the campaign's process group at a named point


def _command(db: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "onnxfi", "analyze", str(DIGITS), "--data", str(data), "--faults", str(FAULTS),
            "--seed", "5", "--workers", "2", "--db", str(db), *extra]


def _has_campaign(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with Store(db, readonly=True) as store:
            return store.has_campaign()
    except OnnxfiError as e:
        assert "empty file" in str(e), str(e)  # killed before SQLite wrote its first page; anything else is damage
        return False


def _run(db: Path, data: Path, cwd: Path, point: str | None = None, kill_after: float | None = None) -> int:
    """One ``analyze`` on ``db`` in a session of its own (continuing what is stored), SIGKILLed with all its
    workers at ``point`` (the store's hook) or ``kill_after`` seconds; its exit status."""
    extra = ["--resume"] if _has_campaign(db) else (["--overwrite"] if db.exists() else [])
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if point:
        env[KILL_ENV] = point
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    log = cwd / "analyze.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(_command(db, data, *extra), start_new_session=True, cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            proc.wait(timeout=kill_after if kill_after is not None else 300)
        except subprocess.TimeoutExpired:
            if kill_after is None:
                raise
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    try:  # whatever ended the campaign, none of its workers is left behind
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.returncode in (0, -signal.SIGKILL), log.read_text()
    return proc.returncode


def _rows(db: Path) -> list[dict[str, Any]]:
    with Store(db, readonly=True) as store:
        return list(store.rows())


def test_kill9_anywhere_then_resume_stores_the_rows_of_an_uninterrupted_run(tmp_path: Path) -> None:
    data = tmp_path / "digits96.npz"  # the first 96 eval images: a few ms per experiment
    with np.load(DIGITS_DATA) as npz:
        np.savez(data, **{k: npz[k][:96] for k in npz.files})
    ref, db = tmp_path / "ref.db", tmp_path / "killed.db"
    started = time.monotonic()
    assert _run(ref, data, tmp_path) == 0
    length = time.monotonic() - started
    expected = _rows(ref)
    assert [r["id"] for r in expected] == list(range(FAULTS))

    rng = np.random.default_rng(18)
    steps: list[tuple[str | None, float | None]] = [
        ("meta:plan", None),  # the database exists, no campaign in it yet: the next run starts over
        ("meta:config", None),  # the plan stored, its settings not
        ("meta:clean", None),  # workers started, the clean run done, nothing of it stored
        ("add:2", None),  # one group of rows committed, the second inserted but not committed
        (None, float(rng.uniform(0.2, 0.5 * length))),  # starting: imports, stored plan, workers
        (None, float(rng.uniform(0.3 * length, length))),
        (None, float(rng.uniform(0.3 * length, length))),
        ("meta:summary_experiments", None),  # every row stored, the summary not
    ]
    killed, stale_lock = [], False
    for point, after in steps:
        rc = _run(db, data, tmp_path, point, after)
        if rc == -signal.SIGKILL:
            killed.append(point or f"after {after:.2f}s")
            stale_lock = stale_lock or Path(f"{db}.lock").exists()
    # every named point is reached by any run that gets there (a timed kill may also find the run finished)
    assert [p for p in killed if p.startswith(("meta", "add"))] == [p for p, _ in steps if p], killed
    assert stale_lock  # a killed writer's lock file was there for the next run, and did not stop it
    assert _run(db, data, tmp_path) == 0
    assert not Path(f"{db}.lock").exists()

    rows = _rows(db)
    assert [r["id"] for r in rows] == list(range(FAULTS))  # none lost, none twice
    assert [row_key(r) for r in rows] == [row_key(r) for r in expected]
    with Store(db, readonly=True) as a, Store(ref, readonly=True) as b:
        assert a.meta("plan") == b.meta("plan")
        assert a.meta("summary_experiments") == b.meta("summary_experiments") == FAULTS
