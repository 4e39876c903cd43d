"""The on-disk spool: FIFO order, bound with a drop counter, survives a restart."""

from __future__ import annotations

from pathlib import Path

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
