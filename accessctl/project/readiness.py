"""``GET /readyz``: whether this site can decide at its doors now, each dependency checked.

``/healthz`` says the web process is alive; ``/readyz`` checks what a decision needs: the
database, the task broker (and the depth of the recognition queue in it), the Redis-compatible
server behind the cache and behind Channels, at least one MQTT bridge connected and hearing its
subscriptions, and at least one Celery worker alive. Bridges and workers report through
heartbeats (:mod:`accessctl.heartbeats`): asking every worker (``celery inspect ping``) takes
seconds. Each check has its own timeout (``READY_CHECK_TIMEOUT_S``); the answer is 200 when all
pass, else 503, with each check's status and latency in milliseconds. Errors are named by their
type only (the body is public; what each check found only for a scraper allowed to read /metrics);
the details go to the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accessctl.broker_queue import broker_queue_depth
from accessctl.heartbeats import heartbeats_read, redis_client
from accessctl.project.metrics_access import Access, metrics_access

logger = logging.getLogger(__name__)


class NotReady(Exception):
    """A dependency answered, but not as a ready site needs (no bridge hearing, no worker)."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


@dataclass
class CheckResult:
    name: str
    ok: bool
    ms: float
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, *, details: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "ms": round(self.ms, 2)}
        if self.error:
            out["error"] = self.error
        if self.details and details:
            out["details"] = self.details
        return out


def _database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {}


def _ping(url: str, options: dict[str, Any] | None) -> dict[str, Any]:
    client = redis_client(url, options)
    try:
        client.ping()
    finally:
        client.close()
    return {}


def _cache() -> dict[str, Any]:
    cache = settings.CACHES["default"]
    return _ping(cache["LOCATION"], cache.get("OPTIONS"))


def _channels() -> dict[str, Any]:
    host = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0])
    return _ping(host.pop("address"), host)


def _broker() -> dict[str, Any]:
    """Connect to the task broker and read the recognition queue's depth (a passive declare)."""
    from accessctl.project.celery import app

    return {"recognition_queue": broker_queue_depth(app, settings.RECOGNITION_QUEUE)}


def _fresh(kind: str) -> tuple[dict[str, dict[str, Any]], float]:
    limit = 3 * settings.PROCESS_HEARTBEAT_S
    return {name: data for name, data in heartbeats_read(kind).items() if data["age_s"] <= limit}, limit


def _bridge() -> dict[str, Any]:
    """At least one bridge connected whose subscriptions deliver (it heard something, at least its
    own probe, within its deafness limit: see :mod:`devices.bridge`)."""
    fresh, limit = _fresh("bridge")
    bridges = {
        name: {
            "connected": bool(data.get("connected")),
            "silent_s": data.get("silent_s"),
            "heartbeat_age_s": round(data["age_s"], 1),
        }
        for name, data in fresh.items()
    }
    hearing = [
        name
        for name, data in fresh.items()
        if data.get("connected")
        and float(data.get("silent_s") or 0.0) < float(data.get("deaf_after_s") or settings.MQTT_BRIDGE_DEAF_AFTER_S)
    ]
    if not hearing:
        raise NotReady(
            f"no bridge connected and receiving (heartbeats younger than {limit:.0f} s: {len(fresh)})",
            {"bridges": bridges},
        )
    return {"bridges": bridges}


def _workers() -> dict[str, Any]:
    fresh, limit = _fresh("worker")
    if not fresh:
        raise NotReady(f"no worker heartbeat younger than {limit:.0f} s")
    return {"workers": sorted(fresh)}


#: The checks, in the order they run and appear.
CHECKS: dict[str, Callable[[], dict[str, Any]]] = {
    "database": _database,
    "broker": _broker,
    "cache": _cache,
    "channels": _channels,
    "bridge": _bridge,
    "workers": _workers,
}


def readiness_check() -> list[CheckResult]:
    """Run every check (none stops the others); a failure is logged with its details."""
    results = []
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            details = check()
        except NotReady as exc:
            results.append(CheckResult(name, False, (time.perf_counter() - started) * 1000, str(exc), exc.details))
        except Exception as exc:
            logger.warning("readiness check %s failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            results.append(CheckResult(name, False, (time.perf_counter() - started) * 1000, type(exc).__name__))
        else:
            results.append(CheckResult(name, True, (time.perf_counter() - started) * 1000, details=details))
    return results


@login_not_required
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 ``{"status": "ready", "checks": {...}}`` when every check passes, else 503 ``not_ready``.

    The checks' details (bridge client ids, worker host names, the queue's depth) only for those
    who may read the metrics (:func:`accessctl.project.metrics_access.metrics_access`)."""
    results = readiness_check()
    ready = all(result.ok for result in results)
    trusted = metrics_access(request) in (Access.BEARER, Access.ADDRESS)
    checks = {r.name: r.as_dict(details=trusted) for r in results}
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
    return JsonResponse(body, status=200 if ready else 503)
