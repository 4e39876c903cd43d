"""On-disk FIFO of signed messages (sqlite3, stdlib) for when the broker is unreachable.

Every detection is written here first and leaves the queue only when the broker acknowledged
it, so a crash or an outage loses nothing. The spool is bounded: past ``max_entries`` the oldest
entries are dropped and counted (the count is reported in the heartbeat and kept across restarts).

A broker's acknowledgement is not the server's answer: a broker that restarts or a bridge that
dies can still lose a message it had accepted. So an acknowledged detection moves to the
``awaiting`` table until the door command for it arrives (:meth:`Spool.resolve`); the link sends
the ones that stay unanswered again (:meth:`Spool.due`, :meth:`Spool.reschedule`) and gives up
after its resend window (:meth:`Spool.give_up`, counted as ``unanswered``).
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
INSERT OR IGNORE INTO counters (name, value) VALUES ('unanswered', 0);
CREATE TABLE IF NOT EXISTS awaiting (
    detection_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    accepted_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SpoolEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    created_at: float
    detection_id: str | None = None


@dataclass(frozen=True)
class AwaitingEntry:
    """An accepted detection with no answer yet: when it was first accepted, how often re-sent."""

    detection_id: str
    topic: str
    payload: bytes
    accepted_at: float
    attempts: int
    next_at: float


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
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        if "detection_id" not in columns:  # a spool written by an agent before re-sending existed
            self._db.execute("ALTER TABLE messages ADD COLUMN detection_id TEXT")

    def put(self, topic: str, payload: bytes, *, qos: int = 1, detection_id: str | None = None) -> int:
        """Append a message; drops the oldest beyond ``max_entries``. Returns the entry id.

        ``detection_id``: the message is a detection; once acknowledged it awaits its answer.
        """
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "INSERT INTO messages (topic, payload, qos, created_at, detection_id) VALUES (?, ?, ?, ?, ?)",
                (topic, payload, qos, time.time(), detection_id),
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
                "SELECT id, topic, payload, qos, created_at, detection_id FROM messages WHERE id > ? "
                "ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [SpoolEntry(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

    def remove(self, entry_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))

    def accepted(self, entry_id: int, *, answer_by: float) -> None:
        """The broker acknowledged entry ``entry_id``: out of the queue; a detection now awaits its
        answer until ``answer_by`` (a re-sent one keeps its first acceptance and its schedule)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT topic, payload, detection_id FROM messages WHERE id = ?", (entry_id,)
            ).fetchone()
            if row is not None and row[2]:
                self._db.execute(
                    "INSERT INTO awaiting (detection_id, topic, payload, accepted_at, attempts, next_at) "
                    "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (detection_id) DO UPDATE SET payload = excluded.payload",
                    (row[2], row[0], row[1], time.time(), answer_by),
                )
            self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))

    def resolve(self, detection_id: str) -> bool:
        """The answer for ``detection_id`` arrived; True when it was awaited."""
        with self._lock:
            cur = self._db.execute("DELETE FROM awaiting WHERE detection_id = ?", (detection_id,))
            return cur.rowcount > 0

    def due(self, now: float, *, limit: int = 50) -> list[AwaitingEntry]:
        """Awaited detections whose answer is overdue at ``now``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT detection_id, topic, payload, accepted_at, attempts, next_at FROM awaiting "
                "WHERE next_at <= ? ORDER BY next_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [AwaitingEntry(r[0], r[1], bytes(r[2]), r[3], r[4], r[5]) for r in rows]

    def reschedule(self, detection_id: str, *, attempts: int, next_at: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE awaiting SET attempts = ?, next_at = ? WHERE detection_id = ?",
                (attempts, next_at, detection_id),
            )

    def give_up(self, detection_id: str) -> None:
        """No answer within the resend window: stop waiting (counted as ``unanswered``)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("DELETE FROM awaiting WHERE detection_id = ?", (detection_id,))
            if cur.rowcount:
                self._db.execute("UPDATE counters SET value = value + 1 WHERE name = 'unanswered'")

    @property
    def awaiting(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM awaiting").fetchone()[0])

    @property
    def unanswered(self) -> int:
        return self._counter("unanswered")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])

    @property
    def dropped(self) -> int:
        return self._counter("dropped")

    def _counter(self, name: str) -> int:
        with self._lock:
            return int(self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
