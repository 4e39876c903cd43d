"""How many tasks wait in a queue of the task broker: one short-lived connection, short timeouts.

Used by ``/readyz`` (which also learns that the broker answers) and the metrics. A passive declare
reads the count without creating anything; a queue no worker has declared yet holds nothing.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings


def broker_queue_depth(app: Any, queue: str, *, timeout_s: float | None = None) -> int:
    """Tasks waiting (not yet taken by a worker) in ``queue`` of ``app``'s broker
    (``CELERY_BROKER_URL``); raises when the broker does not answer within ``timeout_s``."""
    timeout = settings.READY_CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0}
    with app.connection_for_read(
        settings.CELERY_BROKER_URL, connect_timeout=timeout, transport_options=options
    ) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        try:
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
        except Exception as exc:
            if str(getattr(exc, "reply_code", "")) == "404":  # amqp NotFound; kombu's virtual transports say "404"
                return 0
            raise
        return int(declared.message_count)
