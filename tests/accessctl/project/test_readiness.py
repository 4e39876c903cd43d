"""GET /readyz (issue 22): 200 when the database, the task broker, the cache and Channels servers,
a bridge hearing its subscriptions and a worker all answer; 503 naming what does not. /healthz
stays the cheap "alive" answer."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.test import Client, override_settings

from accessctl import heartbeats
from accessctl.heartbeats import KEY_PREFIX, HeartbeatThread, heartbeat_write
from devices.bridge import Bridge
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def cache_down() -> Iterator[None]:
    """The cache server (and with it the heartbeats) at a closed port."""
    backend = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{_closed_port()}",
    }
    heartbeats._client = None
    try:
        with override_settings(CACHES={"default": backend}):
            yield
    finally:
        heartbeats._client = None


@pytest.fixture(autouse=True)
def clean_heartbeats(settings) -> Iterator[None]:
    settings.PROCESS_HEARTBEAT_S = 1.0  # fresh for 3 s: a loaded test machine still keeps up
    settings.READY_CHECK_TIMEOUT_S = 1.0

    def clear() -> None:
        heartbeats._client = None
        client = heartbeats._cache_client()
        client.delete(KEY_PREFIX + "bridge", KEY_PREFIX + "worker")
        heartbeats._client = None

    clear()
    yield
    clear()


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    """A real bridge on the suite's broker, in a thread (its handler does nothing)."""
    running = Bridge(lambda topic, payload, ack: ack(), client_id=f"accessctl-ready-{os.getpid()}", workers=1)
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    assert running.connected.wait(10)
    yield running
    running.stop()
    thread.join(10)


@pytest.fixture
def worker() -> Iterator[HeartbeatThread]:
    """What a Celery worker's main process runs from ``worker_ready`` (accessctl.project.celery)."""
    beat = HeartbeatThread(kind="worker", name=f"ready@{os.getpid()}").start()
    yield beat
    beat.stop()


def readyz() -> tuple[int, dict]:
    response = Client().get("/readyz")
    assert response["Content-Type"] == "application/json"
    return response.status_code, response.json()


def _wait_ready(timeout: float = 10.0) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        status, body = readyz()
        if status == 200 or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


def test_ready_when_everything_answers(bridge, worker) -> None:
    status, body = _wait_ready()
    assert status == 200, body
    assert body["status"] == "ready"
    assert list(body["checks"]) == ["database", "broker", "cache", "channels", "bridge", "workers"]
    for name, check in body["checks"].items():
        assert check["ok"] is True, name
        assert 0 <= check["ms"] < 5000
    assert body["checks"]["broker"]["details"]["recognition_queue"] >= 0
    assert body["checks"]["bridge"]["details"]["bridges"][bridge.client_id]["connected"] is True
    assert body["checks"]["workers"]["details"]["workers"] == [worker.name]


def test_the_cache_server_down_is_named_and_answers_503(bridge, worker) -> None:
    assert _wait_ready()[0] == 200
    with cache_down():
        status, body = readyz()
        health = Client().get("/healthz")
    assert status == 503 and body["status"] == "not_ready"
    assert body["checks"]["cache"] == {"ok": False, "ms": body["checks"]["cache"]["ms"], "error": "ConnectionError"}
    assert body["checks"]["database"]["ok"] and body["checks"]["channels"]["ok"] and body["checks"]["broker"]["ok"]
    # The heartbeats live there too: no bridge or worker can be seen.
    assert not body["checks"]["bridge"]["ok"] and not body["checks"]["workers"]["ok"]
    assert "127.0.0.1" not in json.dumps(body)  # a public answer: no addresses, no messages
    assert health.status_code == 200 and health.json() == {"status": "ok"}  # alive all the same


def test_the_channels_server_down_is_named(bridge, worker, settings) -> None:
    assert _wait_ready()[0] == 200
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": f"redis://127.0.0.1:{_closed_port()}"}]},
        }
    }
    status, body = readyz()
    assert status == 503
    assert [name for name, check in body["checks"].items() if not check["ok"]] == ["channels"]


def test_the_task_broker_down_is_named(bridge, worker, settings) -> None:
    assert _wait_ready()[0] == 200
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{_closed_port()}/0"
    started = time.monotonic()
    status, body = readyz()
    assert status == 503
    assert [name for name, check in body["checks"].items() if not check["ok"]] == ["broker"]
    assert time.monotonic() - started < 10  # a dead broker is not a hung probe


def test_no_bridge_means_not_ready(worker) -> None:
    status, body = readyz()
    assert status == 503
    assert [name for name, check in body["checks"].items() if not check["ok"]] == ["bridge"]
    assert body["checks"]["bridge"]["error"].startswith("no bridge connected and receiving")


def test_a_deaf_or_disconnected_bridge_is_not_ready(worker) -> None:
    """Connected but hearing nothing, not even its own probe, past its limit (devices.bridge): the
    broker no longer delivers to it. Disconnected: nothing can arrive."""
    heartbeat_write(kind="bridge", name="deaf", data={"connected": True, "silent_s": 40.0, "deaf_after_s": 15.0})
    heartbeat_write(kind="bridge", name="away", data={"connected": False, "silent_s": 0.0, "deaf_after_s": 15.0})
    status, body = readyz()
    assert status == 503 and not body["checks"]["bridge"]["ok"]
    assert "no bridge connected and receiving" in body["checks"]["bridge"]["error"]
    seen = body["checks"]["bridge"]["details"]["bridges"]
    assert (seen["deaf"]["connected"], seen["deaf"]["silent_s"], seen["away"]["connected"]) == (True, 40.0, False)
    heartbeat_write(kind="bridge", name="fine", data={"connected": True, "silent_s": 1.0, "deaf_after_s": 15.0})
    assert readyz()[0] == 200


def test_a_stopped_worker_ages_out(bridge) -> None:
    beat = HeartbeatThread(kind="worker", name="stopping@host").start()
    assert _wait_ready()[0] == 200
    beat.stop()  # a clean stop removes its heartbeat
    status, body = readyz()
    assert status == 503 and not body["checks"]["workers"]["ok"]
    # A killed worker leaves its last heartbeat, which ages past three periods.
    heartbeats._cache_client().hset(
        KEY_PREFIX + "worker", "killed@host", json.dumps({"at": time.time() - 10.0, "pid": 1})
    )
    assert readyz()[0] == 503


def test_healthz_is_unchanged() -> None:
    with cache_down():
        response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_needs_no_sign_in_and_only_answers_get() -> None:
    assert Client().get("/readyz").status_code in (200, 503)
    assert Client().post("/readyz").status_code == 405


def test_up_announces_the_site_ready_once_every_check_passes(bridge, worker, caplog) -> None:
    from accessctl.project.supervisor import readiness_announce

    caplog.set_level("INFO", logger="accessctl.project.supervisor")
    assert readiness_announce("http://127.0.0.1:8000/", threading.Event(), timeout_s=10, every_s=0.1)
    assert "accessctl is ready on http://127.0.0.1:8000/" in caplog.text


def test_up_says_what_is_not_ready_when_it_gives_up(worker, caplog) -> None:
    from accessctl.project.supervisor import readiness_announce

    caplog.set_level("INFO", logger="accessctl.project.supervisor")
    assert not readiness_announce("http://127.0.0.1:8000/", threading.Event(), timeout_s=0.3, every_s=0.1)
    assert "not ready after 0 s; failing: bridge" in caplog.text


def test_details_only_for_those_who_may_read_the_metrics(bridge, worker, settings) -> None:
    """Anyone may ask whether the site is ready; which hosts and bridges run it is for the operators."""
    settings.METRICS_TOKEN = "readiness-token-0123456789"
    assert _wait_ready()[0] == 200
    outside = Client(REMOTE_ADDR="203.0.113.9").get("/readyz").json()
    assert outside["status"] == "ready"
    assert all("details" not in check for check in outside["checks"].values())
    assert worker.name not in json.dumps(outside) and bridge.client_id not in json.dumps(outside)
    proxied = Client(HTTP_X_FORWARDED_FOR="203.0.113.9").get("/readyz").json()
    assert all("details" not in check for check in proxied["checks"].values())
    token = Client(REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer readiness-token-0123456789")
    assert token.get("/readyz").json()["checks"]["workers"]["details"] == {"workers": [worker.name]}


def test_a_worker_writes_its_heartbeat_from_worker_ready_and_removes_it_at_shutdown() -> None:
    """The Celery signal handlers a worker's main process runs (accessctl.project.celery)."""
    from types import SimpleNamespace

    from accessctl.project import celery

    celery._worker_heartbeat_start(sender=SimpleNamespace(hostname="signal@host"))
    try:
        assert wait_until(lambda: "signal@host" in heartbeats.heartbeats_read("worker"))
        assert readyz()[1]["checks"]["workers"]["ok"]
    finally:
        celery._worker_heartbeat_stop()
    assert "signal@host" not in heartbeats.heartbeats_read("worker")


def test_a_bridge_that_stops_removes_its_heartbeat() -> None:
    running = Bridge(lambda topic, payload, ack: ack(), client_id=f"accessctl-stop-{os.getpid()}", workers=1)
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    assert running.connected.wait(10)
    assert wait_until(lambda: heartbeats.heartbeats_read("bridge").get(running.client_id, {}).get("connected"))
    running.stop()
    thread.join(10)
    assert running.client_id not in heartbeats.heartbeats_read("bridge")
