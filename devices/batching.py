"""Hand staged detections to the recognition queue in small batches when they arrive in bursts.

One Celery task per detection costs more (broker round trips, prefork hand-over, task set-up)
than deciding an embedding-mode detection. The bridge therefore collects the ids it staged for
at most ``wait_s`` (or until ``max_size``) and sends them as one ``recognition.decide_many``
task; a detection that arrives alone goes out as a plain ``recognition.decide`` after the wait.
Each detection is still decided in its own transaction, idempotently, so a batch that is
retried or redelivered decides nothing twice.

:meth:`DecisionBatcher.add` returns an event that is set once the batch holding the id was
handed to the task broker (or failed to be): the bridge acknowledges an MQTT message only then,
so a bridge killed between staging and sending leaves the message unacknowledged. Whatever is
staged and never sent is found by the inbound sweep (``devices.staging.inbound_requeue``) or,
sooner, when the device re-sends the detection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

Sender = Callable[[list[str]], None]


class DecisionBatcher:
    """Collects detection ids from any thread; a flusher thread sends them in batches."""

    def __init__(self, send: Sender, *, max_size: int = 16, wait_s: float = 0.002) -> None:
        self.send = send
        self.max_size = max(1, max_size)
        self.wait_s = max(0.0, wait_s)
        self._ids: list[str] = []
        self._done: list[threading.Event] = []
        self._first_at = 0.0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="decision-batcher", daemon=True)
        self._thread.start()

    def add(self, detection_id: str) -> threading.Event:
        """Queue ``detection_id``; the event is set once its batch was handed over (or failed)."""
        done = threading.Event()
        with self._cond:
            if self._closed:
                raise RuntimeError("batcher closed")
            if not self._ids:
                self._first_at = time.monotonic()
            self._ids.append(detection_id)
            self._done.append(done)
            self._cond.notify()
        return done

    def _take(self) -> tuple[list[str], list[threading.Event]] | None:
        """Block until a batch is due; None once closed and empty."""
        with self._cond:
            while True:
                if self._ids:
                    due = self._first_at + self.wait_s
                    now = time.monotonic()
                    if len(self._ids) >= self.max_size or now >= due or self._closed:
                        n = self.max_size
                        batch, self._ids = self._ids[:n], self._ids[n:]
                        done, self._done = self._done[:n], self._done[n:]
                        self._first_at = now
                        return batch, done
                    self._cond.wait(due - now)
                elif self._closed:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            batch, done = taken
            try:
                self.send(batch)
            except Exception:
                logger.exception("could not enqueue %d decisions; the inbound sweep will retry them", len(batch))
            finally:
                for event in done:
                    event.set()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is pending and stop the flusher."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
