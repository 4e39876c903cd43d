"""How many tasks wait in a queue of the task broker, on a connection kept per process.

Used by ``/readyz`` (which also learns that the broker answers) and the metrics, on every call:
setting a broker connection up costs tens of milliseconds, so one is kept (per process, per
broker URL) and dropped after any error, the next call connecting again, with short timeouts. A
passive declare reads the count without creating anything; a queue no worker has declared yet
holds nothing.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from django.conf import settings

_lock = threading.Lock()
_kept: dict[tuple[int, int, str], Any] = {}  # (pid, id(app), url) -> kombu connection


def broker_queue_depth(app: Any, queue: str, *, timeout_s: float | None = None) -> int:
    """Tasks waiting (not yet taken by a worker) in ``queue`` of ``app``'s broker
    (``CELERY_BROKER_URL``); raises when the broker does not answer within ``timeout_s``."""
    timeout = settings.READY_CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    url = settings.CELERY_BROKER_URL
    key = (os.getpid(), id(app), url)
    with _lock:
        conn = _kept.pop(key, None)
        if conn is None:
            options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0}
            conn = app.connection_for_read(url, connect_timeout=timeout, transport_options=options)
        try:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
        except Exception as exc:
            conn.release()  # a failed passive declare closes the channel (AMQP): start afresh next time
            if str(getattr(exc, "reply_code", "")) == "404":  # amqp NotFound; kombu's virtual transports say "404"
                return 0
            raise
        _kept[key] = conn
        return int(declared.message_count)
