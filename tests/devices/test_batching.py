"""The bridge's decision batcher: bursts become one task, a lone detection goes out at once."""

from __future__ import annotations

import threading
import time

from devices.batching import DecisionBatcher


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
