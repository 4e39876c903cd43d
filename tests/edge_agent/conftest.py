"""Fixtures for the edge agent: a real MQTT broker (amqtt), keys, a config, a "server" client.

None of these touch Django or the database.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from accessctl.project.embedded import ChildService
from edge_agent.config import EdgeConfig
from edge_agent.vision import Face, FaceCandidate, prepare
from faceengine import protocol as p
from tests import waiting
from tests.broker_logins import standalone_broker_start
from tests.faces import LFW_DIR

UID = "door-test-1"
DEVICE_PASSWORD = "door-test-1-broker-password"
#: the test "server" logs in as the test-only observer (it reads and writes every device topic)
OBSERVER = ("test-observer", "edge-tests-observer-password")
T = TypeVar("T")


def face_image() -> np.ndarray:
    """A real face photo (RGB uint8): an LFW image when present, else skimage's astronaut."""
    images = sorted(LFW_DIR.glob("*/*.jpg"))[:1] if LFW_DIR.is_dir() else []
    if images:
        from PIL import Image

        with Image.open(images[0]) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    from skimage import data

    return np.asarray(data.astronaut(), dtype=np.uint8)


def face_at(box: tuple[float, float, float, float], score: float = 0.99) -> Face:
    """A Face with plausible 5-point landmarks (ArcFace template scaled into ``box``)."""
    from faceengine.alignment import ARCFACE_TEMPLATE_112

    x1, y1, x2, y2 = box
    landmarks = ARCFACE_TEMPLATE_112 / 112.0 * np.array([x2 - x1, y2 - y1]) + np.array([x1, y1])
    return Face(box=box, score=score, landmarks=landmarks.astype(np.float32))


def candidate(box: tuple[float, float, float, float] = (50, 36, 110, 114)) -> FaceCandidate:
    rgb = face_image()
    (cand,) = prepare(rgb, [face_at(box)], min_face_px=10, min_score=0.1)
    return cand


class FakeDetector:
    """Returns scripted faces per call (one list per frame), then nothing."""

    def __init__(self, script: list[list[Face]]) -> None:
        self.script = list(script)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return self.script.pop(0) if self.script else []


@dataclass(frozen=True)
class Keys:
    device_private: str
    device_public: str
    server_private: str
    server_public: str


@pytest.fixture(scope="session")
def keys() -> Keys:
    dp, dpub = p.generate_keypair()
    sp, spub = p.generate_keypair()
    return Keys(dp, dpub, sp, spub)


def broker_start(tmp_path: Path, port: int | None = None, devices: dict[str, str] | None = None) -> ChildService:
    """An embedded broker admitting device ``UID`` (and ``devices``) and the test server (observer)."""
    return standalone_broker_start(
        tmp_path / "mqtt", devices={UID: DEVICE_PASSWORD, **(devices or {})}, observer=OBSERVER, port=port
    )


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ChildService]:
    service = broker_start(tmp_path)
    yield service
    service.stop()


def make_config(tmp_path: Path, keys: Keys, mqtt_url: str, **door: object) -> EdgeConfig:
    config = EdgeConfig()
    config.device.uid = UID
    key_path = tmp_path / "device.key"
    key_path.write_text(keys.device_private)
    config.device.private_key_path = key_path
    config.device.server_public_key = keys.server_public
    config.mqtt.url = mqtt_url
    config.mqtt.username, config.mqtt.password = UID, DEVICE_PASSWORD
    config.mqtt.reconnect_min_s = 1
    config.mqtt.reconnect_max_s = 1
    config.spool.dir = tmp_path / "spool"
    config.detection.min_face_px = 20
    config.detection.min_detector_score = 0.5
    config.agent.heartbeat_interval_s = 3600
    config.mqtt.decision_timeout_s = 3600  # the test "servers" answer only where a test says so
    for key, value in door.items():
        setattr(config.door, key, value)
    return config.validate()


class ServerClient:
    """What the server bridge does, minimally: subscribe to device topics, publish commands."""

    def __init__(self, host: str, port: int, client_id: str = "test-server") -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        self.client.username_pw_set(*OBSERVER)
        self.client.on_connect = lambda c, *a: c.subscribe(f"{p.TOPIC_ROOT}/+/#", 1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect(host, port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "server client did not subscribe"

    def next(self, kind: p.TopicKind, timeout: float = 10.0) -> tuple[str, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {kind} message")
            topic, payload, _ = self.messages.get(timeout=remaining)
            if p.parse_topic(topic)[1] is kind:
                return topic, payload

    def wait_for(self, kind: p.TopicKind, opened: Callable[[bytes], T | None], timeout: float) -> T:
        """The first ``kind`` message that ``opened`` turns into a value, within ``timeout`` overall.

        A device sends some kinds (detections, heartbeats) all the time: a loop over ``next`` alone
        would never end when the one awaited never comes.
        """
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                _, raw = self.next(kind, timeout=remaining)
            except (TimeoutError, queue.Empty):
                break
            if (value := opened(raw)) is not None:
                return value
        raise TimeoutError(f"no awaited {kind} message within {timeout} s")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def server(broker: ChildService) -> Iterator[ServerClient]:
    client = ServerClient(broker.host, broker.port)
    yield client
    client.close()


class GatedProxy:
    """TCP proxy in front of the broker; while closed it drops new and existing connections.

    Lets a test decide exactly when the agent may reach the broker again.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.open = threading.Event()
        self.open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                conn.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [conn, upstream]
            threading.Thread(target=self._pipe, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close_gate(self) -> None:
        self.open.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def open_gate(self) -> None:
        self.open.set()

    def stop(self) -> None:
        self._stopped = True
        self.close_gate()
        self._listener.close()


#: The agent's own threads answer within milliseconds: poll often.
wait_until = functools.partial(waiting.wait_until, step=0.05)
