"""SQLite campaign store: the plan and settings once, then one row per finished experiment (resumable)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxfi.errors import OnnxfiError
from onnxfi.outcomes import FLAGS, ROW_FIELDS
from onnxfi.plan import Plan

__all__ = ["Store", "StoredCampaign", "load_campaign"]


# SQLite column of each ROW_FIELDS entry (the flags are stored as 0/1)
_COLUMNS = {
    "id": "INTEGER PRIMARY KEY", "site": "TEXT NOT NULL", "kind": "TEXT NOT NULL", "idx": "INTEGER NOT NULL",
    "bit": "INTEGER", "fault": "TEXT NOT NULL", "outcome": "TEXT NOT NULL",
    **{flag: "INTEGER NOT NULL" for flag in FLAGS},
    "images_changed": "REAL", "metrics": "TEXT", "time_s": "REAL", "worker": "INTEGER", "error": "TEXT",
    "path": "TEXT", "image": "INTEGER",
}
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS campaign (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n"
    f"CREATE TABLE IF NOT EXISTS results ({', '.join(f'{k} {_COLUMNS[k]}' for k in ROW_FIELDS)});\n"
)


class Store:
    """One campaign per file. Rows are committed in small groups, so a kill loses at most those in flight."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            cols = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
            for col in ("path", "image"):  # a database written before rows recorded them
                if col not in cols:
                    self.db.execute(f"ALTER TABLE results ADD COLUMN {col} {_COLUMNS[col]}")
        except sqlite3.DatabaseError as e:
            raise OnnxfiError(f"{self.path}: not an onnxfi results database ({e})") from None

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO campaign(key, value) VALUES (?, ?)", (key, json.dumps(value)))
        self.db.commit()

    def meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM campaign WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def has_campaign(self) -> bool:
        return self.meta("plan") is not None

    def done_ids(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT id FROM results")}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        values = []
        for r in rows:
            v = dict(r)
            v["metrics"] = json.dumps(v.get("metrics") or {})
            values.append(tuple(v.get(k) for k in ROW_FIELDS))
        self.db.executemany(
            f"INSERT OR REPLACE INTO results({','.join(ROW_FIELDS)}) VALUES ({','.join('?' * len(ROW_FIELDS))})",
            values,
        )
        self.db.commit()

    def rows(self) -> Iterator[dict[str, Any]]:
        cur = self.db.execute(f"SELECT {','.join(ROW_FIELDS)} FROM results ORDER BY id")
        for values in cur:
            row = dict(zip(ROW_FIELDS, values))
            row["metrics"] = json.loads(row["metrics"] or "{}")
            for flag in FLAGS:
                row[flag] = bool(row[flag])
            yield row


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
    """Read a whole campaign database; a missing file or one without a campaign is a user error."""
    path = Path(db_path)
    if not path.is_file():
        raise OnnxfiError(f"results database not found: {path}")
    with Store(path) as store:
        plan_d = store.meta("plan")
        if plan_d is None:
            raise OnnxfiError(f"{path}: no campaign in it")
        return StoredCampaign(
            path=path, plan=Plan.from_dict(plan_d), rows=list(store.rows()), clean=store.meta("clean") or {},
            config=store.meta("config") or {}, versions=store.meta("versions") or {}, compare=store.meta("compare"),
        )
