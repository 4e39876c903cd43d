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
