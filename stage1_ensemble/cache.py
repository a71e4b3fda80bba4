"""Character probabilities kept on disk, so that thresholds can be swept and runs repeated
without running the models again.

One SQLite file (WAL journal: several processes of one machine, such as the shards of a run,
share it), one row per (ensemble, class, text), the values as float16 compressed with zlib.
A corpus of a million notes is one file rather than three million small ones; zlib packs
the values to about a third of their float16 bytes, about half with SQLite's pages
(bench/bench_cache.py).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FILE = "charprobs.sqlite"
logger = logging.getLogger(__name__)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def pack(probs: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The stored form of ``probs`` and what reading it back gives (float16 precision)."""
    half = np.asarray(probs, dtype=np.float16)
    return zlib.compress(half.tobytes(), 1), half.astype(np.float32)


def unpack(blob: bytes, n: int) -> np.ndarray | None:
    """Character probabilities of a text of ``n`` characters, or None if ``blob`` is not
    that (damaged, or written by something else)."""
    try:
        raw = zlib.decompress(blob)
    except zlib.error:
        return None
    if len(raw) != 2 * n:
        return None
    return np.frombuffer(raw, dtype=np.float16).astype(np.float32)


class CharProbCache:
    """Character probabilities per (class, text) of the ensemble ``ensemble_id``, in
    ``folder/charprobs.sqlite``. What ``put`` returns is what a later ``get`` gives, so
    results do not depend on whether they came from the cache."""

    def __init__(self, folder: Path, ensemble_id: str) -> None:
        self.path = Path(folder) / FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if (self.path.parent / "charprobs").is_dir():
            logger.warning("%s holds character probabilities of an older layout (one .npy file "
                           "each), which are not read any more; delete it to free the space",
                           self.path.parent / "charprobs")
        self.ensemble_id = ensemble_id
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS probs (ensemble TEXT NOT NULL, class "
                             "TEXT NOT NULL, text BLOB NOT NULL, data BLOB NOT NULL, "
                             "PRIMARY KEY (ensemble, class, text)) WITHOUT ROWID")
        except sqlite3.Error as exc:  # a read-only folder, a full disk: say which file
            raise sqlite3.OperationalError(f"{self.path}: {exc}") from None

    def get_many(self, cls: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The stored probabilities of each text (None where there are none)."""
        keys = [text_key(t) for t in texts]
        found: dict[bytes, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                found.update(self._db.execute(
                    f"SELECT text, data FROM probs WHERE ensemble = ? AND class = ? AND text IN "
                    f"({','.join('?' * len(chunk))})", [self.ensemble_id, cls, *chunk]))
        return [unpack(found[k], len(t)) if k in found else None for k, t in zip(keys, texts)]

    def put_many(self, cls: str, items: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """Store the (text, probabilities) pairs in one transaction; returns the values as a
        later ``get`` will give them."""
        rows, out = [], []
        for text, probs in items:
            if np.shape(probs) != (len(text),):
                raise ValueError(f"{np.shape(probs)} probabilities for a text of {len(text)} "
                                 "characters")
            blob, stored = pack(probs)
            rows.append((self.ensemble_id, cls, text_key(text), blob))
            out.append(stored)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")  # waits (up to the timeout) for writers
                self._db.executemany("INSERT OR REPLACE INTO probs VALUES (?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise sqlite3.OperationalError(f"{self.path}: {exc}") from None
                raise
        return out

    def get(self, cls: str, text: str) -> np.ndarray | None:
        return self.get_many(cls, [text])[0]

    def put(self, cls: str, text: str, probs: np.ndarray) -> np.ndarray:
        return self.put_many(cls, [(text, probs)])[0]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM probs WHERE ensemble = ?",
                                    [self.ensemble_id]).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
