"""accessctl.broker_queue: the connection is kept between calls, also when the queue does not exist
yet (a scrape before any worker declared it must not pay a new broker connection each time)."""

from __future__ import annotations

import os
import uuid

from django.conf import settings

from accessctl import broker_queue
from accessctl.project.celery import app


def test_a_missing_queue_counts_zero_and_keeps_the_connection() -> None:
    missing = f"no-such-queue-{uuid.uuid4().hex[:8]}"
    assert broker_queue.broker_queue_depth(app, missing) == 0
    key = (os.getpid(), id(app), settings.CELERY_BROKER_URL)
    kept = broker_queue._kept[key]
    assert broker_queue.broker_queue_depth(app, missing) == 0
    assert broker_queue._kept[key] is kept


def test_waiting_messages_are_counted_on_the_kept_connection() -> None:
    queue = f"broker-queue-test-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        channel.queue_declare(queue=queue, auto_delete=False)
        producer = conn.Producer(channel)
        for _ in range(3):
            producer.publish({"n": 1}, routing_key=queue, serializer="json")
        try:
            assert broker_queue.broker_queue_depth(app, queue) == 3
            assert broker_queue.broker_queue_depth(app, queue) == 3
        finally:
            channel.queue_delete(queue=queue)
