"""On-disk FIFO of signed messages (sqlite3, stdlib) for when the broker is unreachable.

Every detection is written here first and leaves the queue only when the broker acknowledged
it, so a crash or an outage loses nothing. The spool is bounded: past ``max_entries`` the oldest
entries are dropped and counted (the count is reported in the heartbeat and kept across restarts).

A broker's acknowledgement is not the server's answer: a broker that restarts or a bridge that
dies can still lose a message it had accepted. So an acknowledged detection moves to the
``awaiting`` table until the door command for it arrives (:meth:`Spool.resolve`); the link sends
the ones that stay unanswered again (:meth:`Spool.due`, :meth:`Spool.reschedule`) and gives up
after its resend window (:meth:`Spool.give_up`, counted as ``unanswered``). An answered
detection is remembered (``answered`` table): the broker's acknowledgement of a re-sent copy can
be handled after its answer, and must not make it await (and be sent) again.

The ``applied`` table remembers the server commands the door carried out (command id, and the
detection it answered), so a genuine command replayed after a restart, still inside the
timestamp window, is not carried out again (:meth:`Spool.command_apply_once`).

The spool holds face crops: its directory is made 0700 and its files (database, ``-wal``,
``-shm``) 0600, whatever the umask.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
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
INSERT OR IGNORE INTO counters (name, value) VALUES ('given_up_since_answer', 0);
CREATE TABLE IF NOT EXISTS awaiting (
    detection_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    accepted_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (
    command_id TEXT PRIMARY KEY,
    detection_id TEXT,
    issued_at REAL NOT NULL,
    applied_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS applied_detection ON applied (detection_id);
CREATE TABLE IF NOT EXISTS answered (detection_id TEXT PRIMARY KEY, answered_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS answered_at ON answered (answered_at);
CREATE INDEX IF NOT EXISTS applied_issued ON applied (issued_at);
"""

#: Applied commands kept at most (the oldest go first); entries issued longer ago than the
#: caller's ``keep_s`` go anyway, since the timestamp window rejects those commands by itself.
APPLIED_KEEP = 4096

#: Answered detections remembered at most (the oldest go first): far more than can be in flight or
#: queued at once, so a late acknowledgement always finds its detection answered.
ANSWERED_KEEP = 4096

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0700, whatever the umask or its earlier mode."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    os.chmod(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing and make it 0600 (it is never opened world-readable)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return path


class CommandSeen(StrEnum):
    """What :meth:`Spool.command_apply_once` found."""

    NEW = "new"
    REPLAYED = "replayed"  # this very command was applied already
    ANSWERED = "answered"  # another command answered its detection already


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
        self.path = private_dir(Path(directory)) / "spool.sqlite3"
        self.max_entries = max_entries
        self._lock = threading.Lock()
        private_file(self.path)  # sqlite gives -wal and -shm the database file's mode
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        for suffix in ("-wal", "-shm"):  # written by an older agent, perhaps world-readable
            sidecar = self.path.with_name(self.path.name + suffix)
            if sidecar.exists():
                os.chmod(sidecar, PRIVATE_FILE_MODE)
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
        answer until ``answer_by`` (a re-sent one keeps its first acceptance and its schedule),
        unless its answer arrived already (the acknowledgement of a re-send can come late)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute(
                "SELECT topic, payload, detection_id FROM messages WHERE id = ?", (entry_id,)
            ).fetchone()
            answered = (
                row is not None
                and row[2]
                and self._db.execute("SELECT 1 FROM answered WHERE detection_id = ?", (row[2],)).fetchone()
            )
            if row is not None and row[2] and not answered:
                self._db.execute(
                    "INSERT INTO awaiting (detection_id, topic, payload, accepted_at, attempts, next_at) "
                    "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (detection_id) DO UPDATE SET payload = excluded.payload",
                    (row[2], row[0], row[1], time.time(), answer_by),
                )
            self._db.execute("DELETE FROM messages WHERE id = ?", (entry_id,))

    def resolve(self, detection_id: str) -> bool:
        """The answer for ``detection_id`` arrived; True when it was awaited. It never awaits again:
        re-sent copies still queued are dropped, and one acknowledged later is not awaited
        (:meth:`accepted`). Answers flow again: the detections given up before no longer count as
        overdue (:meth:`overdue`)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute("DELETE FROM awaiting WHERE detection_id = ?", (detection_id,))
            self._db.execute("DELETE FROM messages WHERE detection_id = ?", (detection_id,))
            self._db.execute(
                "INSERT OR REPLACE INTO answered (detection_id, answered_at) VALUES (?, ?)", (detection_id, time.time())
            )
            self._db.execute(
                "DELETE FROM answered WHERE detection_id IN "
                "(SELECT detection_id FROM answered ORDER BY answered_at DESC LIMIT -1 OFFSET ?)",
                (ANSWERED_KEEP,),
            )
            self._db.execute("UPDATE counters SET value = 0 WHERE name = 'given_up_since_answer'")
            return cur.rowcount > 0

    def overdue(self, now: float, *, timeout_s: float) -> tuple[int, float | None]:
        """How many detections miss their answer: awaited for longer than ``timeout_s`` at ``now``,
        plus those given up since the last answer arrived; and the age of the oldest awaited one."""
        with self._lock:
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(accepted_at) FROM awaiting WHERE accepted_at <= ?", (now - timeout_s,)
            ).fetchone()
            (given_up,) = self._db.execute("SELECT value FROM counters WHERE name = 'given_up_since_answer'").fetchone()
        return int(count) + int(given_up), (round(max(now - oldest, 0.0), 1) if oldest is not None else None)

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
                self._db.execute(
                    "UPDATE counters SET value = value + 1 WHERE name IN ('unanswered', 'given_up_since_answer')"
                )

    def command_apply_once(
        self, command_id: str, *, detection_id: str | None, issued_at: float, keep_s: float
    ) -> CommandSeen:
        """Record that command ``command_id`` is about to be carried out, durably, unless it was
        already (:attr:`CommandSeen.REPLAYED`) or another command answered its detection already
        (:attr:`CommandSeen.ANSWERED`); :attr:`CommandSeen.NEW` means: carry it out now.

        Recorded before the door acts (at most once, also across a crash). Commands issued more than
        ``keep_s`` ago are forgotten (the caller's timestamp window rejects those), and at most
        :data:`APPLIED_KEEP` are kept.
        """
        now = time.time()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM applied WHERE command_id = ?", (command_id,)).fetchone():
                return CommandSeen.REPLAYED
            answered = (
                detection_id is not None
                and self._db.execute("SELECT 1 FROM applied WHERE detection_id = ?", (detection_id,)).fetchone()
            )
            self._db.execute(
                "INSERT INTO applied (command_id, detection_id, issued_at, applied_at) VALUES (?, ?, ?, ?)",
                (command_id, detection_id, issued_at, now),
            )
            self._db.execute("DELETE FROM applied WHERE issued_at < ?", (now - keep_s,))
            self._db.execute(
                "DELETE FROM applied WHERE command_id IN "
                "(SELECT command_id FROM applied ORDER BY issued_at DESC LIMIT -1 OFFSET ?)",
                (APPLIED_KEEP,),
            )
        return CommandSeen.ANSWERED if answered else CommandSeen.NEW

    @property
    def applied(self) -> int:
        """How many applied commands are remembered."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM applied").fetchone()[0])

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
