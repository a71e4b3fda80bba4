"""LLM scores on disk, keyed by (model identity, prompt ids hash).

SQLite in WAL mode: several processes may read and write at once, and a write is all or
nothing. A value that is not a probability (a damaged entry) counts as missing and is
scored again.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class ScoreCache:
    """Scores per (model, prompt key) in one SQLite file (WAL: several processes share it).
    One connection, usable from any thread of its process (a Ray actor is called from
    another thread than the one that made it), one call at a time."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS scores (model TEXT NOT NULL, "
                             "prompt TEXT NOT NULL, score REAL, PRIMARY KEY (model, prompt))")
        except sqlite3.Error as exc:  # a read-only folder, a full disk: say which file
            raise sqlite3.OperationalError(f"{self.path}: {exc}") from None

    def get_many(self, model: str, keys: Sequence[str]) -> list[float | None]:
        found: dict[str, float] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT prompt, score FROM scores WHERE model = ? AND prompt IN ({marks})",
                    [model, *chunk]).fetchall()
                found.update(rows)
        return [_valid(found.get(k)) for k in keys]

    def put_many(self, model: str, items: Sequence[tuple[str, float]]) -> None:
        for value in (v for _, v in items):
            if _valid(value) is None:
                raise ValueError(f"not a probability: {value!r}")
        with self._lock:
            self._put(model, items)

    def _put(self, model: str, items: Sequence[tuple[str, float]]) -> None:
        for attempt in range(5):
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)",
                                     [(model, k, float(v)) for k, v in items])
                self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if attempt == 4:
                    raise sqlite3.OperationalError(f"{self.path}: {exc}") from None
                time.sleep(0.1 * 2**attempt)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def _valid(value: object) -> float | None:
    if isinstance(value, float) and not math.isnan(value) and 0.0 <= value <= 1.0:
        return value
    return None
