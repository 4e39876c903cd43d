"""The on-disk spool: FIFO order, bound with a drop counter, survives a restart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.spool import Spool


def test_fifo_and_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_entries=10)
    ids = [spool.put("t", f"m{i}".encode()) for i in range(4)]
    assert [e.payload for e in spool.peek(limit=10)] == [b"m0", b"m1", b"m2", b"m3"]
    assert [e.id for e in spool.peek(after_id=ids[1], limit=10)] == ids[2:]
    spool.remove(ids[0])
    assert len(spool) == 3 and spool.peek(limit=1)[0].payload == b"m1"


def test_bound_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_entries=3)
    for i in range(5):
        spool.put("t", f"m{i}".encode())
    assert len(spool) == 3
    assert spool.dropped == 2
    assert [e.payload for e in spool.peek(limit=10)] == [b"m2", b"m3", b"m4"]


def test_survives_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_entries=2)
    for i in range(3):
        spool.put("acs/v1/devices/d/detections", f"m{i}".encode())
    spool.close()
    again = Spool(tmp_path, max_entries=2)
    assert [e.payload for e in again.peek(limit=10)] == [b"m1", b"m2"]
    assert again.dropped == 1
    assert again.peek(limit=1)[0].topic == "acs/v1/devices/d/detections"


def test_accepted_detection_awaits_its_answer(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    heartbeat = spool.put("hb", b"h")
    first = spool.put("det", b"d1", detection_id="a")
    second = spool.put("det", b"d2", detection_id="b")
    for entry_id in (heartbeat, first, second):
        spool.accepted(entry_id, answer_by=100.0)
    assert len(spool) == 0 and spool.awaiting == 2  # a heartbeat awaits nothing
    assert [e.detection_id for e in spool.due(99.0)] == []
    assert [e.detection_id for e in spool.due(100.0)] == ["a", "b"]
    assert spool.resolve("a") and not spool.resolve("a")
    spool.reschedule("b", attempts=1, next_at=200.0)
    again = spool.put("det", b"d2-signed-again", detection_id="b")
    spool.accepted(again, answer_by=150.0)  # keeps its first acceptance and schedule, takes the new bytes
    (entry,) = spool.due(200.0)
    assert (entry.attempts, entry.next_at, entry.payload) == (1, 200.0, b"d2-signed-again")
    spool.give_up("b")
    assert spool.awaiting == 0 and spool.unanswered == 1


def test_spool_from_an_older_agent_gains_the_detection_column(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "spool.sqlite3")
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " qos INTEGER NOT NULL, created_at REAL NOT NULL)"
    )
    db.execute("INSERT INTO messages (topic, payload, qos, created_at) VALUES ('t', x'00', 1, 0)")
    db.commit()
    db.close()
    spool = Spool(tmp_path)
    (old,) = spool.peek()
    assert old.detection_id is None and old.payload == b"\x00"


def test_spool_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """Face crops sit in the spool (and in its WAL): directory 0700, database files 0600."""
    import os

    from edge_agent.door import DoorController
    from edge_agent.relay import SimulatedRelay

    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # noqa: S103  (as an older agent left it)
    previous = os.umask(0)
    try:
        spool = Spool(directory)
        spool.put("acs/v1/devices/d/detections", b"crop bytes", detection_id="a")
        door = DoorController(SimulatedRelay(), fail_mode="secure", journal=directory / "offline-decisions.jsonl")
        door.set_online(False)
        door.decide_offline("a")  # a line in the offline-decisions journal
    finally:
        os.umask(previous)
    assert directory.stat().st_mode & 0o777 == 0o700
    names = ["spool.sqlite3", "spool.sqlite3-wal", "spool.sqlite3-shm", "offline-decisions.jsonl"]
    for name in names:
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
    spool.close()

    # Files an older agent left world-readable are made private at the next start.
    for name in ("spool.sqlite3", "offline-decisions.jsonl"):
        os.chmod(directory / name, 0o644)
    os.chmod(directory, 0o755)  # noqa: S103
    again = Spool(directory)
    again.put("acs/v1/devices/d/detections", b"crop bytes", detection_id="b")
    assert directory.stat().st_mode & 0o777 == 0o700
    for name in names[:3]:
        assert (directory / name).stat().st_mode & 0o777 == 0o600, name
    again.close()


def test_applied_commands_are_remembered_across_a_restart_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent import spool as spool_module
    from edge_agent.spool import CommandSeen

    spool = Spool(tmp_path)
    now = time.time()
    assert spool.command_apply_once("c1", detection_id="d1", issued_at=now, keep_s=60) is CommandSeen.NEW
    assert spool.command_apply_once("c1", detection_id="d1", issued_at=now, keep_s=60) is CommandSeen.REPLAYED
    assert spool.command_apply_once("c2", detection_id="d1", issued_at=now, keep_s=60) is CommandSeen.ANSWERED
    spool.close()
    again = Spool(tmp_path)
    assert again.command_apply_once("c1", detection_id="d1", issued_at=now, keep_s=60) is CommandSeen.REPLAYED
    assert again.command_apply_once("c3", detection_id="d1", issued_at=now, keep_s=60) is CommandSeen.ANSWERED
    assert again.command_apply_once("c4", detection_id=None, issued_at=now, keep_s=60) is CommandSeen.NEW
    # Older than the window: forgotten (the timestamp window rejects such a command by itself).
    assert again.command_apply_once("c5", detection_id=None, issued_at=now - 120, keep_s=60) is CommandSeen.NEW
    assert again.applied == 4  # c1..c4; c5 was issued before the window and went at once
    monkeypatch.setattr(spool_module, "APPLIED_KEEP", 3)
    for i in range(5):
        again.command_apply_once(f"x{i}", detection_id=None, issued_at=now + i, keep_s=60)
    assert again.applied == 3
    again.close()


def test_overdue_answers_count_until_an_answer_arrives(tmp_path: Path) -> None:
    """What the heartbeat reports as ``answers_overdue``: awaited past the timeout, plus given up
    since the last answer (a device that never hears back stays counted until an answer arrives)."""
    spool = Spool(tmp_path)
    for detection_id in ("a", "b"):
        spool.accepted(spool.put("det", b"d", detection_id=detection_id), answer_by=0.0)
    now = time.time()
    assert spool.overdue(now, timeout_s=3.0) == (0, None)  # not overdue yet
    count, oldest = spool.overdue(now + 10, timeout_s=3.0)
    assert count == 2 and 9.9 <= oldest <= 10.5
    spool.give_up("a")
    count, _ = spool.overdue(now + 10, timeout_s=3.0)
    assert count == 2  # "a" given up still counts
    spool.close()
    again = Spool(tmp_path)  # and across a restart
    assert again.overdue(now + 10, timeout_s=3.0)[0] == 2
    assert again.resolve("b")
    assert again.overdue(now + 10, timeout_s=3.0) == (0, None)  # answers flow again
    again.close()


def test_answered_detection_never_awaits_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16 item 3: the answer arrives while the broker's acknowledgement of a re-sent copy is
    still unhandled; the late acknowledgement must not make the detection await (and go) again."""
    from edge_agent import spool as spool_module

    spool = Spool(tmp_path)
    spool.accepted(spool.put("det", b"d-0", detection_id="d"), answer_by=10.0)
    assert [e.detection_id for e in spool.due(10.0)] == ["d"]  # no answer in time: signed again, queued
    spool.reschedule("d", attempts=1, next_at=30.0)
    resent = spool.put("det", b"d-1", detection_id="d")  # handed to the broker, acknowledgement pending
    queued = spool.put("det", b"d-2", detection_id="d")  # a copy not handed over yet
    assert spool.resolve("d")  # the answer is handled first
    assert len(spool) == 0  # the copies still queued are not sent any more
    spool.accepted(resent, answer_by=50.0)  # then the late acknowledgement
    spool.accepted(queued, answer_by=50.0)
    assert spool.awaiting == 0 and spool.due(1e12) == []
    assert spool.overdue(1e12, timeout_s=1.0) == (0, None)
    spool.close()

    again = Spool(tmp_path)  # remembered across a restart (paho re-sends in-flight copies on reconnect)
    late = again.put("det", b"d-1", detection_id="d")
    again.accepted(late, answer_by=50.0)
    assert again.awaiting == 0
    monkeypatch.setattr(spool_module, "ANSWERED_KEEP", 2)  # bounded: the oldest answers are forgotten
    for name in ("x", "y", "z"):
        again.resolve(name)
    forgotten = again.put("det", b"d-1", detection_id="d")
    again.accepted(forgotten, answer_by=50.0)
    assert again.awaiting == 1
    again.close()
