"""The results store as untrusted input: damaged, truncated, empty, foreign or newer files are one-line user
errors naming the file and left byte for byte as they were; a second writer is refused while the first
holds the lock; readers read while a campaign writes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from campaign_helpers import save_kat
from conftest import OLD_STORE_SQL, fails

from onnxfi.campaign import run_campaign
from onnxfi.cli import main
from onnxfi.engine import EngineConfig
from onnxfi.errors import OnnxfiError
from onnxfi.model import load_model
from onnxfi.outcomes import FLAGS, OUTCOMES
from onnxfi.plan import Plan, make_plan
from onnxfi.sites import enumerate_sites
from onnxfi.store import SCHEMA_VERSION, Store, load_campaign

REPO = Path(__file__).resolve().parents[1]


def _row(e: Any, i: int) -> dict[str, Any]:
    """A possible stored row for experiment ``e`` (outcome and flags consistent, as classify makes them)."""
    outcome = OUTCOMES[i % len(OUTCOMES)]
    flags = dict.fromkeys(FLAGS, False)
    if outcome != "tolerable":
        flags[outcome] = True
    if outcome in ("sdc5", "critical"):
        flags["sdc1"] = True
    return {"id": e.id, "site": e.site, "kind": e.kind, "idx": e.index, "bit": e.bit, "fault": "flip",
            "outcome": outcome, **flags, "images_changed": None if outcome == "crash" else (i % 3) / 2,
            "metrics": {} if outcome == "crash" else {"task_value": 0.5 + i / 1000}, "time_s": 0.01, "worker": 0,
            "error": "worker died" if outcome == "crash" else None, "path": "port", "image": None}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Plan]:
    """A complete campaign database (a plan of 200 experiments, its settings and 200 rows) written through
    the store, and the model and data it names."""
    tmp = tmp_path_factory.mktemp("store")
    model, data = save_kat(tmp)
    loaded = load_model(str(model))
    plan = make_plan(model, enumerate_sites(loaded.model, loaded.value_shapes).select("all", "^(W|b)$"),
                     n_faults=200, seed=3)
    cfg = EngineConfig(str(model), data_path=str(data))
    db = tmp / "good.db"
    with Store(db) as store, store.lock_for_writing():
        store.set_meta("plan", plan.to_dict())
        store.set_meta("config", dict(cfg.__dict__))
        store.set_meta("versions", {"onnxfi": "test"})
        store.set_meta("clean", {"metric": "accuracy", "value": 1.0})
        rows = [_row(e, i) for i, e in enumerate(plan.experiments)]
        for k in range(0, len(rows), 16):
            store.add(rows[k:k + 16])
        store.set_meta("summary_experiments", len(rows))
    return db, model, data, plan


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_bytes(path: Path, n: int, seed: int) -> None:
    """``n`` random bytes past the 100-byte header replaced by random values (seeded)."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos in rng.integers(100, len(data), n):
        data[pos] = int(rng.integers(0, 256))
    path.write_bytes(bytes(data))


def _set_raw(db: Path, sql: str, *params: Any) -> None:
    con = sqlite3.connect(db)
    con.execute(sql, params)
    con.commit()
    con.close()


def _refused_everywhere(capsys: pytest.CaptureFixture[str], campaign: tuple[Path, Path, Path, Plan], db: Path,
                        *needles: str) -> None:
    """Every way in (reading, opening to write, ``results``, ``analyze --resume``) is one line naming ``db``
    and the problem, and the file is byte for byte what it was."""
    _, model, data, _ = campaign
    before = _digest(db)
    for open_it in (load_campaign, Store, lambda p: Store(p, readonly=True)):
        with pytest.raises(OnnxfiError) as exc:
            open_it(db)
        message = str(exc.value)
        assert "\n" not in message and str(db) in message, message
        for n in needles:
            assert n in message, (n, message)
    fails(capsys, ["results", db], str(db), *needles)
    fails(capsys, ["results", db, "--csv"], str(db), *needles)
    fails(capsys, ["analyze", model, "--data", data, "--db", db, "--resume"], str(db), *needles)
    assert _digest(db) == before
    assert not Path(f"{db}.lock").exists()


def test_the_fixture_database_reads_back(campaign: tuple[Path, Path, Path, Plan]) -> None:
    db, _, _, plan = campaign
    camp = load_campaign(db)
    assert camp.plan.to_dict() == plan.to_dict()
    assert [r["id"] for r in camp.rows] == [e.id for e in plan.experiments]
    assert [r["outcome"] for r in camp.rows] == [OUTCOMES[i % len(OUTCOMES)] for i in range(len(plan.experiments))]
    with Store(db, readonly=True) as store:
        assert store.meta("schema_version") == SCHEMA_VERSION and store.plan() is not None


def test_set_metas_writes_every_value(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db") as store:
        store.set_metas({"a": [1, 2], "b": {"c": None}})
    with Store(tmp_path / "m.db", readonly=True) as store:
        assert store.meta("a") == [1, 2] and store.meta("b") == {"c": None}


# ------------------------------------------------------------------------------------------ damage


@pytest.mark.parametrize("seed", range(6))
def test_200_flipped_bytes_are_one_line_and_the_file_is_kept(
        campaign: tuple[Path, Path, Path, Plan], tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int) -> None:
    """Issue 18: 200 random bytes of a results database replaced. Before, the commands died with
    UnicodeDecodeError / DatabaseError tracebacks (at ``PRAGMA journal_mode=WAL``, in a meta value, in a row)."""
    db = _copy(campaign[0], tmp_path / "flipped.db")
    _flip_bytes(db, 200, seed)
    _refused_everywhere(capsys, campaign, db, "damaged")


def test_an_undecodable_meta_value_is_damage(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = _copy(campaign[0], tmp_path / "utf8.db")
    _set_raw(db, "UPDATE campaign SET value = CAST(? AS TEXT) WHERE key = 'plan'", b'{"model": "\xf4\x80x"}')
    _refused_everywhere(capsys, campaign, db, "damaged")


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("plan", "{not json", "campaign key 'plan' holds no valid JSON"),
    ("plan", '{"model": "m.onnx"', "campaign key 'plan' holds no valid JSON"),
    ("plan", "[1, 2, 3]", "stored plan: not an onnxfi plan"),
    ("plan", '{"strata": 5}', "stored plan: not an onnxfi plan"),
    ("config", "\x00\x01garbage", "campaign key 'config' holds no valid JSON"),
    ("clean", "12", "campaign key 'clean' holds int, not an object"),
    ("schema_version", '"two"', "schema version 'two'"),
])
def test_garbage_meta_json_is_damage(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], key: str, value: str, needle: str) -> None:
    db = _copy(campaign[0], tmp_path / "meta.db")
    _set_raw(db, "UPDATE campaign SET value = ? WHERE key = ?", value, key)
    before = _digest(db)
    with pytest.raises(OnnxfiError) as exc:
        load_campaign(db)
    assert needle in str(exc.value) and str(db) in str(exc.value) and "\n" not in str(exc.value)
    fails(capsys, ["results", db], needle)
    assert _digest(db) == before


@pytest.mark.parametrize(("sql", "needle"), [
    ("UPDATE results SET outcome = 'exploded' WHERE id = 7", "row 7: outcome 'exploded'"),
    ("UPDATE results SET sdc1 = 5 WHERE id = 9", "row 9: outcome"),
    ("UPDATE results SET outcome = 'sdc1', sdc1 = 0 WHERE id = 11", "row 11: outcome sdc1 without its flag"),
    ("UPDATE results SET metrics = '[1, 2]' WHERE id = 3", "row 3: metrics are list, not an object"),
    ("UPDATE results SET metrics = '{\"a\": ' WHERE id = 4", "row 4: metrics hold no valid JSON"),
    ("UPDATE results SET idx = 'seven' WHERE id = 5", "row 5: idx = 'seven'"),
    ("UPDATE results SET bit = X'00ff' WHERE id = 6", "row 6: bit = b'"),
    ("UPDATE results SET id = -3 WHERE id = 8", "row -3: outcome"),
])
def test_rows_with_impossible_values_are_damage(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str], sql: str, needle: str) -> None:
    db = _copy(campaign[0], tmp_path / "rows.db")
    _set_raw(db, sql)
    before = _digest(db)
    with pytest.raises(OnnxfiError, match="damaged") as exc:
        load_campaign(db)
    assert needle in str(exc.value), str(exc.value)
    fails(capsys, ["results", db, "--csv"], str(db), needle)
    assert _digest(db) == before


@pytest.mark.parametrize("keep", [0.5, 0.9, 4096])
def test_a_truncated_database_is_damage(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], keep: float) -> None:
    db = _copy(campaign[0], tmp_path / "cut.db")
    data = db.read_bytes()
    db.write_bytes(data[:int(len(data) * keep) if keep < 1 else int(keep)])
    _refused_everywhere(capsys, campaign, db, "damaged", "truncated")


def test_a_header_cut_short_is_damage(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = _copy(campaign[0], tmp_path / "head.db")
    db.write_bytes(db.read_bytes()[:50])
    _refused_everywhere(capsys, campaign, db, "damaged", "truncated to 50 bytes")


@pytest.mark.parametrize("content", [b"this is not sqlite\n" * 300, b"PK\x03\x04" + bytes(range(256)) * 20,
                                     b"SQLite format 2\x00" + bytes(200)])
def test_a_file_that_is_not_sqlite_is_refused(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    db = tmp_path / "foreign.db"
    db.write_bytes(content)
    _refused_everywhere(capsys, campaign, db, "not an onnxfi results database")


def test_an_sqlite_file_of_another_program_is_refused(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE results (name TEXT, score REAL); INSERT INTO results VALUES ('a', 1.0);")
    con.close()
    before = _digest(db)
    _refused_everywhere(capsys, campaign, db, "not an onnxfi results database",
                        "its results table has no id, site, kind, idx columns (and")
    assert _digest(db) == before
    con = sqlite3.connect(db)
    con.executescript("ALTER TABLE results RENAME TO scores;")
    con.close()
    _refused_everywhere(capsys, campaign, db, "not an onnxfi results database (its tables: scores)")


def test_an_empty_file(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    _, model, data, _ = campaign
    db = tmp_path / "empty.db"
    db.write_bytes(b"")
    with pytest.raises(OnnxfiError, match="empty file, no campaign in it"):
        load_campaign(db)
    fails(capsys, ["results", db], str(db), "no campaign")
    assert db.read_bytes() == b""  # a reader writes nothing
    fails(capsys, ["analyze", model, "--data", data, "--db", db, "--resume"], "nothing to resume")


def test_a_missing_file_is_not_created_by_a_reader(tmp_path: Path) -> None:
    with pytest.raises(OnnxfiError, match="not found"):
        Store(tmp_path / "none.db", readonly=True)
    assert not (tmp_path / "none.db").exists()


# ------------------------------------------------------------------------------------ schema version


def test_a_newer_schema_is_refused_naming_both_versions(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    db = _copy(campaign[0], tmp_path / "newer.db")
    _set_raw(db, "UPDATE campaign SET value = ? WHERE key = 'schema_version'", json.dumps(SCHEMA_VERSION + 1))
    _refused_everywhere(capsys, campaign, db, "newer onnxfi", f"version {SCHEMA_VERSION + 1}",
                        f"up to {SCHEMA_VERSION}")


def test_a_file_without_a_version_reads_and_is_upgraded_when_written(tmp_path: Path) -> None:
    """Files written before the version was stored (and before rows had ``path`` and ``image``)."""
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript("PRAGMA journal_mode=WAL; " + OLD_STORE_SQL)
    con.close()
    before = _digest(db)
    with Store(db, readonly=True) as store:
        assert store.meta("schema_version") is None
        rows = list(store.rows())
    assert rows[0]["path"] is None and rows[0]["image"] is None and rows[0]["masked"] is True
    assert _digest(db) == before  # reading wrote nothing
    with Store(db) as store:
        assert store.meta("schema_version") == SCHEMA_VERSION
        assert list(store.rows()) == rows
    with Store(tmp_path / "new.db") as store:
        assert store.meta("schema_version") == SCHEMA_VERSION


# -------------------------------------------------------------------------------------- writer lock


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(campaign: tuple[Path, Path, Path, Plan],
                                                                    tmp_path: Path) -> None:
    db_src, model, data, plan = campaign
    db = _copy(db_src, tmp_path / "busy.db")
    lock = Path(f"{db}.lock")
    with Store(db) as first, Store(db) as second:
        with first.lock_for_writing():
            assert first.locked and lock.read_text().strip() == str(os.getpid())
            with first.lock_for_writing():  # re-entrant for the same store
                assert first.locked
            assert first.locked
            with pytest.raises(OnnxfiError) as exc, second.lock_for_writing():
                pass
            assert str(exc.value) == (f"{db} is in use by another onnxfi campaign (pid {os.getpid()}); wait for it "
                                      "to finish or use another --db")
            assert not second.locked
            # a campaign refused writes nothing (not even its plan)
            with Store(tmp_path / "fresh.db") as fresh, fresh.lock_for_writing():
                with Store(tmp_path / "fresh.db") as other, pytest.raises(OnnxfiError, match="in use by another"):
                    run_campaign(plan, EngineConfig(str(model), data_path=str(data)), other)
                assert not fresh.has_campaign() and not fresh.count()
            with pytest.raises(OnnxfiError, match="in use by another"):
                Store.open_locked(db, replace=True)
            assert db.exists() and load_campaign(db).rows  # --overwrite under a held lock deleted nothing
        assert not first.locked and not lock.exists()  # released: the lock file goes with it
        with second.lock_for_writing():
            assert second.locked
    assert not lock.exists()


_HOLDER = """
import sys
from onnxfi.store import Store
store = Store.open_locked(sys.argv[1])
store.set_meta("holder", "subprocess")
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _lock_held_elsewhere(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``db``'s writer lock (as a running campaign does) until the block ends, when
    it is killed with SIGKILL: no clean-up, its lock file stays behind."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_another_process_holding_the_lock_refuses_analyze_and_a_kill_frees_it(
        campaign: tuple[Path, Path, Path, Plan], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_src, model, data, _ = campaign
    db = _copy(db_src, tmp_path / "held.db")
    with _lock_held_elsewhere(db) as holder:
        with Store(db) as store, pytest.raises(OnnxfiError, match=rf"in use by another onnxfi campaign \(pid {holder.pid}\)"):
            store.lock_for_writing().__enter__()
        fails(capsys, ["analyze", model, "--data", data, "--db", db, "--resume"],
              f"{db} is in use by another onnxfi campaign (pid {holder.pid})")
        # readers are not held up by a writer
        assert len(load_campaign(db).rows) == 200
        capsys.readouterr()
        assert main(["results", str(db), "--csv"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 201
    lock = Path(f"{db}.lock")
    assert lock.read_text().strip() == str(holder.pid)  # a stale lock file, naming a dead process...
    with Store(db) as store, store.lock_for_writing():  # ... locks nothing
        assert lock.read_text().strip() == str(os.getpid())
        assert store.meta("holder") == "subprocess"


def test_open_locked_replace_deletes_the_old_database_under_the_lock(campaign: tuple[Path, Path, Path, Plan],
                                                                     tmp_path: Path) -> None:
    db = _copy(campaign[0], tmp_path / "replace.db")
    with Store.open_locked(db, replace=True) as store:
        assert store.locked and not store.has_campaign() and store.count() == 0
        with store.lock_for_writing():  # run_campaign's re-entry
            pass
        assert store.locked
        with pytest.raises(OnnxfiError, match="in use"), Store(db) as other, other.lock_for_writing():
            pass
    assert not Path(f"{db}.lock").exists()
    store = Store.open_locked(db)
    store.close(discard=True)
    assert not db.exists() and not Path(f"{db}.lock").exists()


def test_readers_work_while_a_write_is_in_progress(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db_src, _, _, plan = campaign
    db = _copy(db_src, tmp_path / "live.db")
    with Store(db) as store, store.lock_for_writing():
        store.db.execute("BEGIN IMMEDIATE")
        store.db.execute("DELETE FROM results WHERE id < 50")  # an uncommitted write, holding SQLite's write lock
        camp = load_campaign(db)
        assert len(camp.rows) == 200  # the last committed state
        capsys.readouterr()
        assert main(["results", str(db)]) == 0
        assert f"200 of {len(plan.experiments)} experiments" in capsys.readouterr().out
        store.db.rollback()


def test_overwrite_is_refused_while_another_campaign_writes(campaign: tuple[Path, Path, Path, Plan], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`analyze --overwrite` takes the writer lock before it deletes anything: a live campaign's db survives."""
    db_src, model, data, _ = campaign
    db = _copy(db_src, tmp_path / "held.db")
    with _lock_held_elsewhere(db) as holder:
        fails(capsys, ["analyze", model, "--data", data, "--db", db, "--overwrite", "--faults", "10"],
              f"{db} is in use by another onnxfi campaign (pid {holder.pid})")
        camp = load_campaign(db)
        assert len(camp.rows) == 200 and len(camp.plan.experiments) == 200
