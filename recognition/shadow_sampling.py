"""Shadow decisions, the decision path's side: which versions shadow, and the sample handed to them.

See :mod:`recognition.shadow` for what a shadow decision is. This module is what the decision path
(:mod:`recognition.detections`) calls, after the real decision committed: :func:`shadow_offer_after_commit`.
It reads (cached) which versions are in state ``shadow`` with a usable gallery, draws the sample
(``RECOGNITION_SHADOW_SAMPLE_RATE``) and leaves the rest to a hand-off thread of the process, which
gives each one to the ``recognition.shadow_decide`` task on its own queue
(``RECOGNITION_SHADOW_QUEUE``), ids only, while the queue holds fewer than
``RECOGNITION_SHADOW_MAX_BACKLOG`` tasks (the broker's count, read at most once a second per
process, plus what this process sent since). It never raises into the decision and never waits for
the broker.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from accessctl import metrics
from accessctl.process_cache import ProcessCache
from recognition.gallery_versions import gallery_ready
from recognition.models import ModelVersion

logger = logging.getLogger(__name__)

#: How long the broker's count of the shadow queue is trusted by a deciding process, seconds.
BACKLOG_REFRESH_S = 1.0


class Outcome:
    """The ``outcome`` label of ``accessctl_shadow_decisions``."""

    QUEUED = "queued"
    BACKLOG = "backlog"
    ENQUEUE_FAILED = "enqueue_failed"
    RECORDED = "recorded"
    DUPLICATE = "duplicate"
    LATE = "late"
    NOT_SHADOW = "not_shadow"
    EVENT_GONE = "event_gone"
    CROP_GONE = "crop_gone"
    ERROR = "error"


@dataclass(frozen=True)
class ShadowCandidate:
    """A real decision that may be sampled: its event and what the active model matched (before the
    policy: ``active_reason`` is the matcher's reason, ``matched`` when ``active_person_id`` is set)."""

    event_id: int
    active_model_version: str
    active_person_id: int | None
    active_reason: str


# --------------------------------------------------------------------------- selectors


def _usable_load(active_version: str) -> tuple[str, ...]:
    shadows = ModelVersion.objects.filter(state=ModelVersion.State.SHADOW).values_list("model_version", flat=True)
    return tuple(version for version in shadows.order_by("model_version") if gallery_ready(version))


#: Read after every crop-mode decision; a gallery being filled is seen within ``ttl_s``.
_USABLE = ProcessCache("recognition-shadow-usable", ttl_s=30.0, cleared_by=(ModelVersion,))


def shadow_versions_usable(active_version: str) -> tuple[str, ...]:
    """The versions in state ``shadow`` whose gallery covers the people ``active_version``'s covers
    (a shadow with a half-filled gallery would "deny" everyone not yet embedded: no figures from it).
    Kept per process for 30 s (a state change in this process is seen at once)."""
    return _USABLE.get(active_version, lambda: _usable_load(active_version))


# --------------------------------------------------------------------------- the decision path side


class _Backlog:
    """Room left in the shadow queue, as this process sees it: the broker's count (read at most once
    per :data:`BACKLOG_REFRESH_S`) plus what it sent since. A broker that does not answer leaves no room."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._depth = 0
        self._sent = 0

    def take(self, depth: Callable[[], int]) -> bool:
        """Claim one place; False when the queue is full."""
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= BACKLOG_REFRESH_S:
                try:
                    self._depth = depth()
                except Exception:
                    logger.warning("shadow queue depth unknown (broker did not answer): sample dropped")
                    self._depth = settings.RECOGNITION_SHADOW_MAX_BACKLOG
                self._read_at, self._sent = now, 0
            if self._depth + self._sent >= settings.RECOGNITION_SHADOW_MAX_BACKLOG:
                return False
            self._sent += 1
            return True

    def reset(self) -> None:
        with self._lock:
            self._read_at, self._depth, self._sent = -float("inf"), 0, 0


_backlog = _Backlog()


def _broker_depth() -> int:
    from celery import current_app

    from accessctl.broker_queue import broker_queue_depth

    return broker_queue_depth(current_app, settings.RECOGNITION_SHADOW_QUEUE, timeout_s=0.25)


def _broker_send(args: dict[str, Any]) -> None:
    from celery import current_app

    current_app.send_task(
        "recognition.shadow_decide", kwargs=args, queue=settings.RECOGNITION_SHADOW_QUEUE, retry=False
    )


def shadow_sample(
    candidates: Sequence[ShadowCandidate], *, draw: Callable[[], float] = random.random
) -> list[dict[str, Any]]:
    """The sample of ``candidates`` each usable shadow version decides: the shadow task's arguments
    (ids and codes only). Cheap: one cached read of the usable versions, one draw per candidate."""
    rate = settings.RECOGNITION_SHADOW_SAMPLE_RATE
    if not candidates or rate <= 0:
        return []
    sample = []
    for candidate in candidates:
        for version in shadow_versions_usable(candidate.active_model_version):
            if version != candidate.active_model_version and draw() < rate:
                sample.append({
                    "event_id": candidate.event_id, "model_version": version,
                    "active_person_id": candidate.active_person_id, "active_reason": candidate.active_reason,
                    "queued_at": time.time(),
                })  # fmt: skip
    return sample


def shadow_send(
    sample: Sequence[dict[str, Any]],
    *,
    depth: Callable[[], int] = _broker_depth,
    send: Callable[[dict[str, Any]], None] = _broker_send,
) -> int:
    """Queue each of ``sample`` while the shadow queue has room (else it is dropped, counted
    ``backlog``); returns how many were queued. Never raises."""
    queued = 0
    for args in sample:
        try:
            if not _backlog.take(depth):
                metrics.SHADOW_DECISIONS.labels(Outcome.BACKLOG).inc()
                continue
            send(args)
        except Exception:
            logger.warning("shadow decision of event %s by %s not queued", args["event_id"], args["model_version"])
            metrics.SHADOW_DECISIONS.labels(Outcome.ENQUEUE_FAILED).inc()
            continue
        metrics.SHADOW_DECISIONS.labels(Outcome.QUEUED).inc()
        queued += 1
    return queued


def shadow_offer(
    candidates: Sequence[ShadowCandidate],
    *,
    draw: Callable[[], float] = random.random,
    depth: Callable[[], int] = _broker_depth,
    send: Callable[[dict[str, Any]], None] = _broker_send,
) -> int:
    """:func:`shadow_sample` then :func:`shadow_send`, here and now; returns how many were queued."""
    try:
        sample = shadow_sample(candidates, draw=draw)
    except Exception:
        logger.exception("shadow sampling failed (the real decisions are not affected)")
        metrics.SHADOW_DECISIONS.labels(Outcome.ERROR).inc()
        return 0
    return shadow_send(sample, depth=depth, send=send)


class _HandOff:
    """A daemon thread per process that hands samples to the broker, so that a slow broker (its
    count, its round trip) never holds up the worker's next decision. Its buffer is bounded
    (``RECOGNITION_SHADOW_MAX_BACKLOG``): a sample that finds it full is dropped (``backlog``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[list[dict[str, Any]]] | None = None
        self._pid = 0

    def put(self, sample: list[dict[str, Any]]) -> None:
        with self._lock:
            if self._queue is None or self._pid != os.getpid():  # first use, or a forked worker child
                self._queue = queue.Queue(maxsize=max(1, settings.RECOGNITION_SHADOW_MAX_BACKLOG))
                self._pid = os.getpid()
                threading.Thread(target=self._run, args=(self._queue,), name="shadow-handoff", daemon=True).start()
            buffer = self._queue
        try:
            buffer.put_nowait(sample)
        except queue.Full:
            metrics.SHADOW_DECISIONS.labels(Outcome.BACKLOG).inc(len(sample))

    @staticmethod
    def _run(buffer: queue.Queue[list[dict[str, Any]]]) -> None:
        while True:
            sample = buffer.get()
            try:
                shadow_send(sample)
            except Exception:  # shadow_send does not raise; this thread must not die whatever happens
                logger.exception("shadow hand-off failed")


_handoff = _HandOff()


def _offer_now(candidates: Sequence[ShadowCandidate]) -> None:
    try:
        sample = shadow_sample(candidates)
    except Exception:
        logger.exception("shadow sampling failed (the real decisions are not affected)")
        metrics.SHADOW_DECISIONS.labels(Outcome.ERROR).inc()
        return
    if sample:
        _handoff.put(sample)


def shadow_offer_after_commit(candidates: Sequence[ShadowCandidate]) -> None:
    """Once the current transaction commits (after the callbacks registered before this one: the
    door commands), draw the sample here (a cached read, one draw each) and leave the broker work to
    this process's hand-off thread. Nothing when no version is in shadow."""
    if candidates:
        transaction.on_commit(lambda: _offer_now(candidates), robust=True)


def shadow_caches_clear() -> None:
    """Forget this process's usable shadow versions and its view of the shadow queue (tests; a
    gallery filled by a bare INSERT)."""
    _USABLE.clear()
    _backlog.reset()
