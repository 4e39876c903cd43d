"""How many tasks wait in a queue of the task broker, on a connection kept per process.

Used by ``/readyz`` (which also learns that the broker answers) and the metrics, on every call:
setting a broker connection up costs tens of milliseconds, so one is kept (per process, per
broker URL) and dropped after any error, the next call connecting again, with short timeouts. A
passive declare reads the count without creating anything; a queue no worker has declared yet
holds nothing (and, on Redis, the connection is kept then too: a site without a worker yet must
not pay a new connection on every scrape).
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
            missing = str(getattr(exc, "reply_code", "")) == "404"  # amqp NotFound; kombu's virtual transports too
            if missing and _channel_open(conn.default_channel):
                _kept[key] = conn  # Redis: the channel outlives the answer, keep it (a new one costs ~15 ms)
                return 0
            conn.release()  # AMQP closes the channel on a failed passive declare: start afresh next time
            if missing:
                return 0
            raise
        _kept[key] = conn
        return int(declared.message_count)


def _channel_open(channel: Any) -> bool:
    """Whether the channel still works: py-amqp's say ``is_open``, kombu's virtual ones ``closed``."""
    is_open = getattr(channel, "is_open", None)
    return bool(is_open) if is_open is not None else not getattr(channel, "closed", True)
