"""SQLite campaign store: the plan and settings once, then one row per finished experiment (resumable).

A results database is untrusted input (campaigns run for hours and files get copied, truncated and
damaged): opening one checks it (``PRAGMA quick_check``, its schema version, the JSON of its metadata, the
values of every row read) and any damage is an :class:`~onnxfi.errors.OnnxfiError` of one line naming the
file. A damaged file is never deleted or rewritten: opening for reading writes nothing, and opening for
writing writes only after the checks passed.

One campaign writes a database at a time: a writer holds an advisory lock on ``<db>.lock``
(:meth:`Store.lock_for_writing`, :meth:`Store.open_locked`; POSIX ``flock``, which dies with its process, so
the lock file a killed campaign leaves behind never blocks ``--resume``). Readers take no lock: the
database is in WAL mode, so ``onnxfi results`` and ``report`` read it while a campaign writes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from onnxfi import __version__
from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import FLAGS, OUTCOMES, ROW_FIELDS
from onnxfi.plan import Plan

if sys.platform != "win32":
    import fcntl

__all__ = ["SCHEMA_VERSION", "CRITICAL_FIELDS", "Store", "StoredCampaign", "load_campaign"]

# The layout of a results database. 1: files written before the version was stored (the ``campaign`` key
# ``schema_version`` is absent; rows may lack ``path`` and ``image``, added on opening for writing);
# 2: ``schema_version`` stored, every ROW_FIELDS column present. A file of a higher version is refused.
# Optional tables, created only when first written and ignored by readers that do not know them (so they
# need no new version): ``critical_bits_searches`` and ``critical_bits`` (``onnxfi critical-bits --db``).
SCHEMA_VERSION = 2

# SQLite column of each ROW_FIELDS entry (the flags are stored as 0/1)
_COLUMNS = {
    "id": "INTEGER PRIMARY KEY", "site": "TEXT NOT NULL", "kind": "TEXT NOT NULL", "idx": "INTEGER NOT NULL",
    "bit": "INTEGER", "fault": "TEXT NOT NULL", "outcome": "TEXT NOT NULL",
    **{flag: "INTEGER NOT NULL" for flag in FLAGS},
    "images_changed": "REAL", "metrics": "TEXT", "time_s": "REAL", "worker": "INTEGER", "error": "TEXT",
    "path": "TEXT", "image": "INTEGER",
}
_ADDED_LATER = ("path", "image")  # columns a version-1 file may lack
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    f"CREATE TABLE IF NOT EXISTS results ({', '.join(f'{k} {_COLUMNS[k]}' for k in ROW_FIELDS)});\n"
)
# onnxfi critical-bits: one row per search (its JSON document) and one per (search, site, element, bit)
_CRITICAL_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS critical_bits_searches (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);\n"
    "CREATE TABLE IF NOT EXISTS critical_bits (search INTEGER NOT NULL, site TEXT NOT NULL, idx INTEGER NOT NULL, "
    "bit INTEGER NOT NULL, harmful INTEGER NOT NULL, source TEXT NOT NULL, outcome TEXT, old REAL, new REAL, "
    "images_changed REAL, path TEXT, PRIMARY KEY (search, site, idx, bit));\n"
)
CRITICAL_FIELDS = ("search", "site", "idx", "bit", "harmful", "source", "outcome", "old", "new", "images_changed", "path")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_LEFT_AS_IS = "the file is left as it is (sqlite3's .recover command may save its rows)"
# sqlite3 errors that are bugs in onnxfi (a closed connection, bad SQL, a NOT NULL row), never the file's fault
_BUGS = (sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.IntegrityError)
# the kinds of value each column may hold (bool is an int: a flag read back is 0/1)
_INT, _NUM, _TEXT = (int,), (int, float), (str,)
_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "id": _INT, "site": _TEXT, "kind": _TEXT, "idx": _INT, "bit": _INT, "fault": _TEXT, "outcome": _TEXT,
    **{flag: _INT for flag in FLAGS}, "images_changed": _NUM, "metrics": _TEXT, "time_s": _NUM, "worker": _INT,
    "error": _TEXT, "path": _TEXT, "image": _INT,
}
_NOT_NULL = {"id", "site", "kind", "idx", "fault", "outcome", *FLAGS}

# Test hook (tests/test_kill_anywhere.py): SIGKILL this campaign's process tree at a named point, e.g.
# ``meta:config`` (before that key is written) or ``add:3`` (the third group of rows inserted, not committed).
_KILL_ENV = "ONNXFI_TEST_KILL_AT"
_adds = 0


def _kill_point(point: str) -> None:
    if os.environ.get(_KILL_ENV) != point:
        return
    if sys.platform != "win32" and os.getpgid(0) == os.getpid():  # a group of its own: the campaign and its workers
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("***")]
    return (lines[0] if lines else type(e).__name__)[:200]


class _WriterLock:
    """An exclusive advisory lock on ``<db>.lock`` holding the writer's pid (shown to a refused writer, never
    trusted: ``flock`` locks die with their process, so a file left by a killed campaign locks nothing). The
    lock file is a file object, so a store dropped without :meth:`Store.close` releases it when collected."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = Path(f"{db}.lock")
        self.file: BinaryIO | None = None

    def acquire(self) -> None:
        if sys.platform == "win32":  # no flock: campaigns are not guarded against a second writer
            return
        while True:
            try:
                f = open(self.path, "a+b", buffering=0)  # held until release()
            except OSError as e:
                raise OnnxfiError(f"{self.db}: cannot create the lock file {self.path} ({e.strerror})") from None
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                pid = self._holder(f.fileno())
                f.close()
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OnnxfiError(f"{self.db} is in use by another onnxfi campaign (pid {pid}); wait for it "
                                      "to finish or use another --db") from None
                return  # a file system without flock (ENOLCK, EOPNOTSUPP): write unguarded, as before locks
            # the holder before us removes the file while it holds the lock: ours must still be the file there
            try:
                st, now = os.fstat(f.fileno()), os.stat(self.path)
                same = (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        f.truncate(0)
        f.write(f"{os.getpid()}\n".encode())
        self.file = f

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            text = ""
        return text if text.isdigit() else "unknown"

    def release(self) -> None:
        if self.file is None or sys.platform == "win32":
            return
        self.path.unlink(missing_ok=True)  # while still held (see acquire)
        fcntl.flock(self.file.fileno(), fcntl.LOCK_UN)
        self.file.close()
        self.file = None


class Store:
    """One campaign per file. Rows are committed in small groups, so a kill loses at most those in flight.

    ``readonly`` opens an existing file without writing anything (no schema, no journal change): what
    readers use. Opening checks the file; a damaged one raises :class:`OnnxfiError` and stays untouched.
    """

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock: _WriterLock | None = None
        self._lock_depth = 0
        self._columns: tuple[str, ...] = ROW_FIELDS
        self._tables: set[str] = set()
        size = self._check_file()
        try:
            if readonly:
                self.db = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True)
            else:
                self.db = sqlite3.connect(str(self.path))
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise self._error(e) from None
        try:
            self._open(size)
        except BaseException:
            self.db.close()
            raise

    def _check_file(self) -> int:
        """The file's size; a file that is not SQLite at all is refused before SQLite sees it."""
        if not self.path.exists():
            if self.readonly:
                raise OnnxfiError(f"results database not found: {self.path}")
            return 0
        try:
            with open(self.path, "rb") as f:
                head = f.read(100)
            size = self.path.stat().st_size
        except OSError as e:
            raise OnnxfiError(f"{self.path}: cannot read the results database ({e.strerror})") from None
        if size == 0 and self.readonly:
            raise OnnxfiError(f"{self.path}: empty file, no campaign in it")
        if size and not head.startswith(_SQLITE_MAGIC):
            raise OnnxfiError(f"{self.path}: not an onnxfi results database (not an SQLite file)")
        if size and len(head) < 100:
            raise OnnxfiError(f"{self.path}: the results database is damaged (truncated to {size} bytes); "
                              + _LEFT_AS_IS)
        return size

    def _open(self, size: int) -> None:
        with self._guard():
            if size:  # read-only checks first: nothing is written to a file that fails them
                problems = [str(r[0]) for r in self.db.execute("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise OnnxfiError(f"{self.path}: the results database is damaged ({self._problem(problems)}); "
                                      + _LEFT_AS_IS)
            self._read_layout()
            self._check_version()
            self._check_meta()
            if self.readonly:
                return
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self._read_layout()
            for col in _ADDED_LATER:  # a database written before rows recorded them
                if col not in self._columns:
                    self.db.execute(f"ALTER TABLE results ADD COLUMN {col} {_COLUMNS[col]}")
            if self._version() < SCHEMA_VERSION:
                self.db.execute("INSERT OR REPLACE INTO campaign(key, value) VALUES ('schema_version', ?)",
                                (json.dumps(SCHEMA_VERSION),))
            self.db.commit()
            self._read_layout()

    def _problem(self, problems: list[str]) -> str:
        """quick_check's first finding, and the file's length where its header says it is longer."""
        detail = _one_line(Exception("\n".join(problems)))
        try:
            with open(self.path, "rb") as f:
                head = f.read(100)
            page = int.from_bytes(head[16:18], "big")
            page = 65536 if page == 1 else page
            pages = int.from_bytes(head[28:32], "big")
            valid = head[24:28] == head[92:96] and pages > 0
            size = self.path.stat().st_size
            wal = Path(f"{self.path}-wal")
            frames = wal.exists() and wal.stat().st_size > 0  # pages the file lacks may be in the WAL
            if valid and pages * page > size and not frames:
                return f"truncated: {size} of {pages * page} bytes; {detail}"
        except OSError:
            pass
        return detail

    def _read_layout(self) -> None:
        self._tables = {str(r[0]) for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        cols = {str(r[1]) for r in self.db.execute("PRAGMA table_info(results)")} if "results" in self._tables else set()
        self._columns = tuple(c for c in ROW_FIELDS if c in cols)
        foreign = sorted(t for t in self._tables if not t.startswith("sqlite_"))
        if foreign and not {"campaign", "results"} & self._tables:
            raise OnnxfiError(f"{self.path}: not an onnxfi results database (its tables: {', '.join(foreign)[:100]})")
        missing = [c for c in ROW_FIELDS if c not in cols and c not in _ADDED_LATER]
        if "results" in self._tables and missing:
            more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
            raise OnnxfiError(f"{self.path}: not an onnxfi results database (its results table has no "
                              f"{', '.join(missing[:4])} column{'s' if len(missing) > 1 else ''}{more})")
        if "campaign" in self._tables:
            have = {str(r[1]) for r in self.db.execute("PRAGMA table_info(campaign)")}
            if not {"key", "value"} <= have:
                raise OnnxfiError(f"{self.path}: not an onnxfi results database (its campaign table has no "
                                  "key/value columns)")

    def _check_meta(self) -> None:
        """Every metadata value is JSON text (the plan's structure is checked where it is read: :meth:`plan`)."""
        if "campaign" not in self._tables:
            return
        for (key,) in self.db.execute("SELECT key FROM campaign"):
            if not isinstance(key, str):
                raise self._damaged(f"campaign key {key!r:.40}")
            self.meta(key)

    def _version(self) -> int:
        v = self.meta("schema_version", 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise OnnxfiError(f"{self.path}: the results database is damaged (schema version {v!r:.40}); "
                              + _LEFT_AS_IS)
        return v

    def _check_version(self) -> None:
        v = self._version()
        if v > SCHEMA_VERSION:
            raise OnnxfiError(f"{self.path} was written by a newer onnxfi (results schema version {v}; onnxfi "
                              f"{__version__} reads versions up to {SCHEMA_VERSION}): upgrade onnxfi to use it")

    def _error(self, e: BaseException) -> OnnxfiError:
        """The one-line user error of an SQLite failure (damage, a busy or full disk, no access)."""
        name = str(getattr(e, "sqlite_errorname", "") or "")
        text = "text in it that is not UTF-8" if isinstance(e, UnicodeDecodeError) else _one_line(e)
        if (isinstance(e, UnicodeDecodeError) or name.startswith(("SQLITE_CORRUPT", "SQLITE_FORMAT"))
                or "malformed" in text or "decode" in text):
            return OnnxfiError(f"{self.path}: the results database is damaged ({text}); {_LEFT_AS_IS}")
        if name.startswith("SQLITE_NOTADB"):
            return OnnxfiError(f"{self.path}: not an onnxfi results database ({text})")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return OnnxfiError(f"{self.path}: the results database stayed locked by another process ({text})")
        if name.startswith("SQLITE_FULL"):
            return OnnxfiError(f"{self.path}: no space left for the results database ({text}); the rows stored "
                               "so far are kept")
        return OnnxfiError(f"{self.path}: cannot use the results database ({text})")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except _BUGS:
            raise
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise self._error(e) from None

    def _damaged(self, what: str) -> OnnxfiError:
        return OnnxfiError(f"{self.path}: the results database is damaged ({what}); {_LEFT_AS_IS}")

    # ------------------------------------------------------------------------------------------ writer lock

    @classmethod
    def open_locked(cls, path: str | os.PathLike[str], *, replace: bool = False) -> Store:
        """A store for writing a campaign, its writer lock taken before the file is touched and held until
        :meth:`close`. ``replace`` deletes the database (and its WAL files) under the lock first: what
        ``--overwrite`` does, never to a file another campaign is writing."""
        lock = _WriterLock(Path(path))
        lock.acquire()
        try:
            if replace:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
            store = cls(path)
        except BaseException:
            lock.release()
            raise
        store._lock, store._lock_depth = lock, 1
        return store

    @property
    def locked(self) -> bool:
        """Whether this store holds the database's writer lock."""
        return self._lock_depth > 0

    @contextmanager
    def lock_for_writing(self) -> Iterator[Store]:
        """Hold the database's writer lock (re-entrant for this store): a second writer, in this process or
        another, gets an :class:`OnnxfiError` naming the holder's pid until the lock is released."""
        if self.readonly:
            raise OnnxfiError(f"{self.path}: opened read-only")
        if self._lock_depth == 0:
            lock = _WriterLock(self.path)
            lock.acquire()
            self._lock = lock
        self._lock_depth += 1
        try:
            yield self
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                self._release()

    def _release(self) -> None:
        self._lock_depth = 0
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self, discard: bool = False) -> None:
        """Commit and close, then release the writer lock; ``discard`` deletes the database files first,
        still under the lock (a campaign that stored nothing leaves nothing behind)."""
        try:
            if not self.readonly:
                with self._guard():
                    self.db.commit()
            self.db.close()
            if discard:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        finally:
            self._release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- metadata

    def set_meta(self, key: str, value: Any) -> None:
        _kill_point(f"meta:{key}")
        with self._guard():
            self.db.execute("INSERT OR REPLACE INTO campaign(key, value) VALUES (?, ?)", (key, json.dumps(value)))
            self.db.commit()

    def set_metas(self, values: dict[str, Any]) -> None:
        """Several metadata values in one transaction: a kill stores all of them or none."""
        for key in values:
            _kill_point(f"meta:{key}")
        with self._guard():
            self.db.executemany("INSERT OR REPLACE INTO campaign(key, value) VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in values.items()])
            self.db.commit()

    def meta(self, key: str, default: Any = None) -> Any:
        if "campaign" not in self._tables:
            return default
        with self._guard():
            row = self.db.execute("SELECT value FROM campaign WHERE key = ?", (key,)).fetchone()
        if row is None:
            return default
        if not isinstance(row[0], str):
            raise self._damaged(f"campaign key {key!r} holds {type(row[0]).__name__}, not JSON text")
        try:
            return json.loads(row[0])
        except ValueError as e:  # JSONDecodeError, or a number too large
            raise self._damaged(f"campaign key {key!r} holds no valid JSON: {_one_line(e)}") from None

    def plan(self) -> Plan | None:
        """The stored plan (None before a campaign started); one that is not a plan is damage."""
        d = self.meta("plan")
        if d is None:
            return None
        try:
            return Plan.from_dict(d)
        except OnnxfiError as e:
            raise self._damaged(f"stored plan: {_one_line(e)}") from None

    def has_campaign(self) -> bool:
        return self.meta("plan") is not None

    # ----------------------------------------------------------------------------------------------- rows

    def done_ids(self) -> set[int]:
        if "results" not in self._tables:
            return set()
        with self._guard():
            ids = [r[0] for r in self.db.execute("SELECT id FROM results")]
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise self._damaged(f"experiment id {i!r:.40}")
        return set(ids)

    def count(self) -> int:
        if "results" not in self._tables:
            return 0
        with self._guard():
            return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        global _adds
        values = []
        for r in rows:
            v = dict(r)
            v["metrics"] = json.dumps(v.get("metrics") or {})
            values.append(tuple(v.get(k) for k in ROW_FIELDS))
        with self._guard():
            self.db.executemany(
                f"INSERT OR REPLACE INTO results({','.join(ROW_FIELDS)}) VALUES ({','.join('?' * len(ROW_FIELDS))})",
                values,
            )
            _adds += 1
            _kill_point(f"add:{_adds}")
            self.db.commit()

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every stored row by id; a row with an impossible value is damage (:class:`OnnxfiError`)."""
        if "results" not in self._tables:
            return
        with self._guard():
            cur = self.db.execute(f"SELECT {','.join(self._columns)} FROM results ORDER BY id")
            for values in cur:
                row = dict.fromkeys(ROW_FIELDS)
                row.update(zip(self._columns, values))
                yield self._checked(row)

    def _checked(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` as stored, its flags bools and its metrics a dict, after checking every value is possible."""
        rid = row["id"]
        for k, v in row.items():
            if not ((v is None and k not in _NOT_NULL) or isinstance(v, _COLUMN_TYPES[k])):
                raise self._damaged(f"row {rid!r:.20}: {k} = {v!r:.40}")
        if rid < 0 or row["outcome"] not in OUTCOMES or any(row[f] not in (0, 1) for f in FLAGS):
            raise self._damaged(f"row {rid}: outcome {row['outcome']!r:.40} with flags "
                                + "".join(str(row[f]) for f in FLAGS)[:40])
        if row["outcome"] != "tolerable" and not row[row["outcome"]]:  # an outcome's own flag is always set
            raise self._damaged(f"row {rid}: outcome {row['outcome']} without its flag")
        try:
            metrics = json.loads(row["metrics"] or "{}")
        except ValueError as e:
            raise self._damaged(f"row {rid}: metrics hold no valid JSON: {_one_line(e)}") from None
        if not isinstance(metrics, dict):
            raise self._damaged(f"row {rid}: metrics are {type(metrics).__name__}, not an object")
        row["metrics"] = metrics
        for flag in FLAGS:
            row[flag] = bool(row[flag])
        return row


    # ------------------------------------------------------------------------------------ critical bits

    def add_critical_bits(self, doc: dict[str, Any], pairs: Iterable[dict[str, Any]]) -> int:
        """Store one critical-bit search (``doc``: its JSON document, stored with ``search`` set to the id;
        ``pairs``: one record per (site, element, bit) with the keys of :data:`CRITICAL_FIELDS` but
        ``search``) in one transaction; returns the search's id."""
        with self._guard():
            self.db.executescript(_CRITICAL_SCHEMA)
            self._tables.update({"critical_bits_searches", "critical_bits"})
            sid = int(self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM critical_bits_searches").fetchone()[0])
            self.db.execute("INSERT INTO critical_bits_searches(id, doc) VALUES (?, ?)",
                            (sid, json.dumps({**doc, "search": sid})))
            self.db.executemany(
                f"INSERT INTO critical_bits({','.join(CRITICAL_FIELDS)}) VALUES ({','.join('?' * len(CRITICAL_FIELDS))})",
                [(sid, *(p.get(k) for k in CRITICAL_FIELDS[1:])) for p in pairs],
            )
            self.db.commit()
        return sid

    def critical_bit_searches(self) -> list[tuple[int, dict[str, Any]]]:
        """Every stored critical-bit search: (id, its JSON document), oldest first."""
        if "critical_bits_searches" not in self._tables:
            return []
        with self._guard():
            found = list(self.db.execute("SELECT id, doc FROM critical_bits_searches ORDER BY id"))
        out = []
        for sid, text in found:
            try:
                doc = json.loads(text) if isinstance(text, str) else None
            except ValueError:
                doc = None
            if not isinstance(sid, int) or not isinstance(doc, dict):
                raise self._damaged(f"critical-bit search {sid!r:.20}")
            out.append((sid, doc))
        return out

    def critical_bits(self, search: int) -> list[dict[str, Any]]:
        """The (site, element, bit) records of one stored search (``harmful`` a bool), by site, element, bit."""
        if "critical_bits" not in self._tables:
            return []
        with self._guard():
            cur = self.db.execute(f"SELECT {','.join(CRITICAL_FIELDS)} FROM critical_bits WHERE search = ? "
                                  "ORDER BY site, idx, bit", (search,))
            rows = [dict(zip(CRITICAL_FIELDS, values)) for values in cur]
        for r in rows:
            if r["harmful"] not in (0, 1) or r["source"] not in ("run", "inferred") or not isinstance(r["idx"], int):
                raise self._damaged(f"critical-bit record {r['site']!r:.40} {r['idx']!r:.20} {r['bit']!r:.20}")
            r["harmful"] = bool(r["harmful"])
        return rows


@dataclass
class StoredCampaign:
    """What a campaign database holds: the plan, every stored row, and the metadata written with them."""

    path: Path
    plan: Plan
    rows: list[dict[str, Any]]
    clean: dict[str, Any]
    config: dict[str, Any]
    versions: dict[str, Any]
    compare: Any  # {"db", "model"} of the hardened twin's campaign (``analyze --compare``), else None


def load_campaign(db_path: str | os.PathLike[str]) -> StoredCampaign:
    """Read a whole campaign database (read-only: nothing is written, a campaign may be writing it); a
    missing, damaged or newer file, or one without a campaign, is a user error."""
    path = Path(db_path)
    if not path.is_file():
        raise OnnxfiError(f"results database not found: {path}")
    with Store(path, readonly=True) as store:
        plan = store.plan()
        if plan is None:
            raise OnnxfiError(f"{path}: no campaign in it")
        meta = {}
        for key in ("clean", "config", "versions"):
            value = store.meta(key) or {}
            if not isinstance(value, dict):
                raise store._damaged(f"campaign key {key!r} holds {type(value).__name__}, not an object")
            meta[key] = value
        compare = store.meta("compare")
        if compare is not None and not isinstance(compare, dict):
            raise store._damaged(f"campaign key 'compare' holds {type(compare).__name__}, not an object")
        return StoredCampaign(path=path, plan=plan, rows=list(store.rows()), clean=meta["clean"],
                              config=meta["config"], versions=meta["versions"], compare=compare)
