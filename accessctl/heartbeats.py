"""Process heartbeats in the Redis-compatible server: bridges and workers say, every
``PROCESS_HEARTBEAT_S``, that they are alive (and how they are); ``/readyz`` and the metrics read them.

One hash per kind (``accessctl:heartbeats:<kind>``), a field per process (its name: the bridge's
client id, the worker's node name) holding JSON with ``at`` (unix time) and what the process
reports. A process that stops writing simply ages; entries a day old are dropped when read.
Reads and writes go through a client with short timeouts: a hung server is an error, not a hang.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

KEY_PREFIX = "accessctl:heartbeats:"
#: Entries older than this are removed when the hash is read.
FORGET_AFTER_S = 24 * 3600

_client_lock = threading.Lock()
_client: tuple[int, redis.Redis] | None = None


def redis_client(url: str, options: dict[str, Any] | None = None, *, timeout_s: float | None = None) -> redis.Redis:
    """A redis-py client for ``url`` with the TLS ``options`` of the settings and short timeouts."""
    timeout = settings.READY_CHECK_TIMEOUT_S if timeout_s is None else timeout_s
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, **(options or {}))


def _cache_client() -> redis.Redis:
    """The cache server's client, one per process (a forked child makes its own)."""
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            cache = settings.CACHES["default"]
            _client = (os.getpid(), redis_client(cache["LOCATION"], cache.get("OPTIONS")))
        return _client[1]


def heartbeat_write(*, kind: str, name: str, data: dict[str, Any] | None = None) -> None:
    """Record that process ``name`` of ``kind`` is alive now, with ``data``; raises when the server is down."""
    body = json.dumps({**(data or {}), "at": time.time(), "pid": os.getpid()}, separators=(",", ":"))
    client = _cache_client()
    client.hset(KEY_PREFIX + kind, name[:200], body)
    client.expire(KEY_PREFIX + kind, FORGET_AFTER_S)


def heartbeat_forget(*, kind: str, name: str) -> None:
    """Remove ``name``'s heartbeat (a process stopping cleanly)."""
    _cache_client().hdel(KEY_PREFIX + kind, name[:200])


def heartbeat_claim(*, kind: str, name: str, ttl_s: float) -> bool:
    """Claim ``name`` of ``kind`` for ``ttl_s`` (one process at a time, e.g. to take over a dead
    bridge's session); False when another process holds the claim. Raises when the server is down."""
    who = json.dumps({"pid": os.getpid(), "at": time.time()})
    return bool(_cache_client().set(f"{KEY_PREFIX}{kind}:claim:{name[:200]}", who, nx=True, px=int(ttl_s * 1000)))


def heartbeats_read(kind: str, *, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Every heartbeat of ``kind``: name -> its data with ``age_s`` added; raises when the server is down."""
    now = time.time() if now is None else now
    client = _cache_client()
    found: dict[str, dict[str, Any]] = {}
    forget: list[bytes] = []
    for raw_name, raw in client.hgetall(KEY_PREFIX + kind).items():
        try:
            data = json.loads(raw)
            age = now - float(data["at"])
        except (ValueError, KeyError, TypeError):
            forget.append(raw_name)
            continue
        if age > FORGET_AFTER_S:
            forget.append(raw_name)
            continue
        found[raw_name.decode(errors="replace")] = {**data, "age_s": max(0.0, age)}
    if forget:
        client.hdel(KEY_PREFIX + kind, *forget)
    return found


class HeartbeatThread:
    """Writes a heartbeat every ``PROCESS_HEARTBEAT_S`` from a daemon thread until stopped."""

    def __init__(self, *, kind: str, name: str, data: dict[str, Any] | None = None) -> None:
        self.kind, self.name, self.data = kind, name, data or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{kind}", daemon=True)

    def start(self) -> HeartbeatThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                heartbeat_write(kind=self.kind, name=self.name, data=self.data)
            except Exception:
                logger.warning("could not write the %s heartbeat of %s", self.kind, self.name, exc_info=True)
            if self._stop.wait(settings.PROCESS_HEARTBEAT_S):
                return

    def stop(self) -> None:
        self._stop.set()
        try:
            heartbeat_forget(kind=self.kind, name=self.name)
        except Exception:
            logger.warning("could not remove the %s heartbeat of %s", self.kind, self.name, exc_info=True)
