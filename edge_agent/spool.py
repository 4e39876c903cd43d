"""On-disk FIFO of signed messages (sqlite3, stdlib) for when the broker is unreachable.

Every detection is written here first and removed only when the broker acknowledged it, so a
crash or an outage loses nothing. The spool is bounded: past ``max_entries`` the oldest entries
are dropped and counted (the count is reported in the heartbeat and kept across restarts).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters (name, value) VALUES ('dropped', 0);
"""


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    created_at: float


class Spool:
    """Thread-safe bounded FIFO in ``<directory>/spool.sqlite3``."""

    def __init__(self, directory: Path | str, *, max_entries: int = 10_000) -> None:
        self.path = Path(directory) / "spool.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def put(self, topic: str, payload: bytes, *, qos: int = 1) -> int:
        """Append a message; drops the oldest beyond ``max_entries``. Returns the entry id."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, created_at) VALUES (?, ?, ?, ?)",
                (topic, payload, qos, time.time()),
            )
            entry_id = int(cur.lastrowid or 0)
            (count,) = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()
            excess = count - self.max_entries
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)", (excess,)
                )
                self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (excess,))
        if excess > 0:
            logger.warning("spool full (%d entries): dropped %d oldest message(s)", self.max_entries, excess)
        return entry_id

    def peek(self, *, after_id: int = 0, limit: int = 10) -> list[SpoolEntry]:
        """Oldest entries with ``id > after_id``, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, created_at FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpoolEntry(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows]

    def remove(self, entry_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    @property
    def dropped(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
