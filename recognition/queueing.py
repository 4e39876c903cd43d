"""Hand staged detections to the recognition queue in batches when they arrive in bursts.

One Celery task per detection costs more (broker round trips, prefork hand-over, task set-up)
than deciding an embedding-mode detection, and a batch is decided in one transaction (see
:func:`recognition.detections.detections_decide`). The bridge therefore collects the ids it
staged for at most ``wait_s`` (or until ``max_size``) and sends them as one
``recognition.decide_many`` task; a detection that arrives alone goes out as a plain
``recognition.decide`` after the wait.

While the recognition queue has tasks waiting (``backlog`` > 0: every worker is busy, a new task
would wait anyway), a due batch is held and keeps growing, up to ``hold_s`` after its first id
(``MQTT_BRIDGE_BATCH_HOLD_MS``, 100 ms): under load the batches get bigger, and cheaper per
detection, without delaying anything when the workers are idle. Each batch is still decided
idempotently, so one that is retried or redelivered decides nothing twice.

:meth:`DecisionBatcher.add` returns an event that is set once the batch holding the id was
handed to the task broker (or failed to be), and calls ``on_sent`` then: the bridge acknowledges
an MQTT message only then, so a bridge killed between staging and sending leaves the message
unacknowledged. Whatever is staged and never sent is found by the inbound sweep
(:func:`recognition.staging.inbound_requeue`) or, sooner, when the device re-sends the detection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings

from accessctl.metrics import BRIDGE_LAG
from recognition.tasks import decide, decisions_send

logger = logging.getLogger(__name__)

Sender = Callable[[list[str]], None]
Callback = Callable[[], None]


class DecisionBatcher:
    """Collects detection ids from any thread; a flusher thread sends them in batches."""

    def __init__(
        self,
        send: Sender,
        *,
        max_size: int = 32,
        wait_s: float = 0.002,
        backlog: Callable[[], int] | None = None,
        hold_s: float = 0.1,
        poll_s: float = 0.005,
        quiet_s: float = 0.02,
    ) -> None:
        self.send = send
        self.max_size = max(1, max_size)
        self.wait_s = max(0.0, wait_s)
        self.backlog = backlog
        self.hold_s = max(self.wait_s, hold_s)
        self.poll_s = max(0.001, poll_s)
        self.quiet_s = quiet_s
        self._ids: list[str] = []
        self._done: list[tuple[threading.Event, Callback | None]] = []
        self._added: list[float] = []  # perf_counter() of each id's add (the enqueue lag)
        self._first_at = 0.0
        self._due = 0.0
        self._last_sent = -float("inf")
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="decision-batcher", daemon=True)
        self._thread.start()

    def add(self, detection_id: str, on_sent: Callback | None = None) -> threading.Event:
        """Queue ``detection_id``; the event is set (and ``on_sent`` called, on the flusher
        thread) once its batch was handed over or failed to be."""
        done = threading.Event()
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher closed")
            if not self._ids:
                self._first_at = time.monotonic()
                self._due = self._first_at + self.wait_s
            self._ids.append(detection_id)
            self._done.append((done, on_sent))
            self._added.append(time.perf_counter())
            self._cond.notify()
        return done

    def _busy(self) -> bool:
        """True when the recognition queue has tasks waiting (never raises). Not asked (a broker
        round trip) when the last batch went out more than ``quiet_s`` ago: sparse traffic finds
        the workers idle."""
        if self.backlog is None or time.monotonic() - self._last_sent > self.quiet_s:
            return False
        try:
            return self.backlog() > 0
        except Exception:
            logger.warning("could not read the recognition queue's backlog", exc_info=True)
            return False

    def _take(self) -> tuple[list[str], list[tuple[threading.Event, Callback | None]], list[float]] | None:
        """Block until a batch is due; None once closed and empty."""
        with self._cond:
            while True:
                if self._ids:
                    now = time.monotonic()
                    full = len(self._ids) >= self.max_size
                    if not (full or self._closed) and now < self._due:
                        self._cond.wait(self._due - now)
                        continue
                    if not (full or self._closed) and now < self._first_at + self.hold_s:
                        self._cond.release()  # the broker round trip without blocking add()
                        try:
                            busy = self._busy()
                        finally:
                            self._cond.acquire()
                        if busy and len(self._ids) < self.max_size:
                            self._due = min(time.monotonic() + self.poll_s, self._first_at + self.hold_s)
                            continue
                    n = self.max_size
                    batch, self._ids = self._ids[:n], self._ids[n:]
                    done, self._done = self._done[:n], self._done[n:]
                    added, self._added = self._added[:n], self._added[n:]
                    self._first_at = time.monotonic()
                    self._due = self._first_at + self.wait_s
                    return batch, done, added
                if self._closed:
                    return None
                self._cond.wait()

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            batch, done, added = taken
            try:
                self._last_sent = time.monotonic()
                self.send(batch)
                sent = time.perf_counter()
                for at in added:
                    BRIDGE_LAG.labels("enqueue").observe(sent - at)
            except Exception:
                logger.exception("could not enqueue %d decisions; the inbound sweep will retry them", len(batch))
            finally:
                for event, on_sent in done:
                    event.set()
                    if on_sent is not None:
                        try:
                            on_sent()
                        except Exception:
                            logger.exception("callback after enqueueing a decision failed")

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending and stop the flusher."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)


#: Longest a staging thread waits for its batch to reach the task broker (then the sweep has it).
ENQUEUE_WAIT_S = 5.0


class DecisionQueue:
    """Hands staged detections to the recognition queue; owned by one bridge run (``with``).

    Batching (see :class:`DecisionBatcher`): a due batch is held up to ``hold_s`` while the
    recognition queue has a backlog. Defaults: ``MQTT_BRIDGE_BATCH_MAX`` and
    ``MQTT_BRIDGE_BATCH_HOLD_MS``. Once closed, each detection is sent on its own.
    """

    def __init__(
        self,
        *,
        max_size: int | None = None,
        wait_s: float = 0.002,
        hold_s: float | None = None,
        send: Sender | None = None,
        backlog: Callable[[], int] | None = None,
    ) -> None:
        self.send = send or decisions_send
        self._connection: Any = None
        self.batcher = DecisionBatcher(
            self.send,
            max_size=max_size if max_size is not None else settings.MQTT_BRIDGE_BATCH_MAX,
            wait_s=wait_s,
            backlog=backlog or self.backlog,
            hold_s=hold_s if hold_s is not None else settings.MQTT_BRIDGE_BATCH_HOLD_MS / 1000,
        )

    def __enter__(self) -> DecisionQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def enqueue(self, detection_id: str, *, on_sent: Callback | None = None) -> bool:
        """Queue the decision of ``detection_id``. Returns True when ``on_sent`` was taken: it is
        called once the task is out (the caller must not call it). Without ``on_sent`` this waits
        up to ``ENQUEUE_WAIT_S`` for the batch to go out."""
        try:
            sent = self.batcher.add(str(detection_id), on_sent=on_sent)
        except RuntimeError:  # closing: send it directly
            self.send([str(detection_id)])
            return False
        if on_sent is None:
            sent.wait(ENQUEUE_WAIT_S)
        return on_sent is not None

    def backlog(self) -> int:
        """Tasks waiting (not yet taken by a worker) in the recognition queue."""
        if self._connection is None:
            self._connection = decide.app.connection_for_read()
        try:
            declared = self._connection.default_channel.queue_declare(queue=settings.RECOGNITION_QUEUE, passive=True)
        except Exception as exc:
            self._connection.release()  # a failed passive declare closes the channel (AMQP)
            self._connection = None
            if str(getattr(exc, "reply_code", "")) == "404":  # amqp NotFound; kombu's virtual transports say "404"
                return 0  # no worker declared the queue yet: nothing is waiting in it
            raise
        return int(declared.message_count)

    def close(self) -> None:
        """Send what is pending and stop batching."""
        self.batcher.close()
        if self._connection is not None:
            self._connection.release()
            self._connection = None
