"""The bridge's decision batcher: bursts become one task, a lone detection goes out at once."""

from __future__ import annotations

import threading
import time

from recognition.queueing import DecisionBatcher, DecisionQueue
from tests.waiting import wait_until


def test_a_burst_becomes_batches_of_at_most_max_size() -> None:
    sent: list[list[str]] = []
    gate = threading.Event()
    batcher = DecisionBatcher(lambda ids: (gate.wait(5), sent.append(ids)), max_size=4, wait_s=0.05)
    events = [batcher.add(str(i)) for i in range(10)]
    gate.set()
    assert all(event.wait(5) for event in events)  # each id's event: its batch was handed over
    batcher.close()
    assert [len(batch) for batch in sent] == [4, 4, 2]
    assert [i for batch in sent for i in batch] == [str(i) for i in range(10)]


def test_a_lone_detection_waits_only_the_short_window() -> None:
    sent: list[tuple[float, list[str]]] = []
    batcher = DecisionBatcher(lambda ids: sent.append((time.monotonic(), ids)), max_size=16, wait_s=0.01)
    added = time.monotonic()
    assert batcher.add("only").wait(5)
    batcher.close()
    assert sent[0][1] == ["only"] and sent[0][0] - added < 1.0


def test_a_failed_send_releases_the_waiters_and_the_batcher_goes_on() -> None:
    calls: list[list[str]] = []

    def send(ids: list[str]) -> None:
        calls.append(ids)
        if len(calls) == 1:
            raise ConnectionError("broker down")

    batcher = DecisionBatcher(send, max_size=1, wait_s=0)
    assert batcher.add("a").wait(5) and batcher.add("b").wait(5)
    batcher.close()
    assert calls == [["a"], ["b"]]


def test_close_sends_what_is_pending() -> None:
    sent: list[list[str]] = []
    batcher = DecisionBatcher(sent.append, max_size=100, wait_s=60)
    event = batcher.add("x")
    batcher.close()
    assert event.is_set() and sent == [["x"]]


def test_while_the_queue_has_a_backlog_a_due_batch_is_held_and_grows() -> None:
    sent: list[tuple[float, list[str]]] = []
    backlog = [3]  # tasks waiting in the recognition queue: every worker is busy
    asked = []

    def queue_backlog() -> int:
        asked.append(time.monotonic())
        return backlog[0]

    batcher = DecisionBatcher(
        lambda ids: sent.append((time.monotonic(), ids)),
        max_size=8, wait_s=0.005, backlog=queue_backlog, hold_s=5.0, poll_s=0.005, quiet_s=1.0,
    )  # fmt: skip
    assert batcher.add("idle").wait(5)  # the first batch after a quiet spell goes out without asking
    first = batcher.add("0")
    # Due (past wait_s) and asked about the backlog again and again: held each time, because a new
    # task would only wait behind the others (waits on the batcher's own polls, not on a sleep).
    assert wait_until(lambda: len(asked) >= 3, 5, step=0.005)
    assert not first.is_set() and len(sent) == 1
    for i in range(1, 5):
        batcher.add(str(i))
    backlog[0] = 0  # a worker took the waiting task: the batch goes now
    assert first.wait(5)
    batcher.close()
    assert [ids for _, ids in sent] == [["idle"], ["0", "1", "2", "3", "4"]]


def test_a_held_batch_goes_when_full_or_after_hold_s_and_a_broken_backlog_reads_idle() -> None:
    sent: list[list[str]] = []
    batcher = DecisionBatcher(sent.append, max_size=3, wait_s=0.001, backlog=lambda: 1, hold_s=0.2, quiet_s=1.0)
    started = time.monotonic()
    events = [batcher.add(str(i)) for i in range(4)]  # the first three fill a batch
    assert all(event.wait(5) for event in events)
    assert time.monotonic() - started >= 0.15  # the fourth waited for hold_s
    batcher.close()
    assert sent == [["0", "1", "2"], ["3"]]

    def broken() -> int:
        raise ConnectionError("broker away")

    calls: list[str] = []
    batcher = DecisionBatcher(sent.append, wait_s=0.001, backlog=broken, hold_s=30)
    assert batcher.add("x", on_sent=lambda: calls.append("acked")).wait(5)
    batcher.close()
    assert sent[-1] == ["x"] and calls == ["acked"]


def test_the_recognition_backlog_is_read_from_the_task_broker() -> None:
    with DecisionQueue() as queue:
        assert queue.backlog() >= 0
        assert queue.backlog() >= 0  # the connection is kept for the next read
