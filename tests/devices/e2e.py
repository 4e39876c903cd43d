"""Helpers for end-to-end tests: a real Celery worker and MQTT bridge as child processes, signed devices."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from django.conf import settings

from faceengine import protocol as p
from tests.broker_logins import observer_client

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent
    from edge_agent.vision import FaceCandidate

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def child_process(
    argv: list[str], env: dict[str, str], ready: str, log: Path, timeout: float = 90
) -> Iterator[subprocess.Popen]:
    """Run ``argv`` until the block ends; wait for ``ready`` in its output first."""
    handle = log.open("wb")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[2:5]} did not become ready:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        handle.close()


def worker_argv(concurrency: int = 1, name: str = "e2e", queues: tuple[str, ...] = ()) -> list[str]:
    """A worker on the recognition and default queues (and ``queues``: the shadow or gallery ones)."""
    return [
        sys.executable, "-m", "celery", "-A", "accessctl.project", "worker",
        "-Q", ",".join((settings.RECOGNITION_QUEUE, "default", *queues)),
        "--concurrency", str(concurrency), "--prefetch-multiplier", "1", "-l", "INFO", "-n", f"{name}-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip


def bridge_argv() -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), "mqtt_bridge"]


@dataclass
class CommandListener:
    """Subscribes to every device's commands topic and collects the verified commands."""

    host: str
    port: int
    server_public_key: str
    commands: dict[str, p.Command] = field(default_factory=dict)
    received_at: dict[str, float] = field(default_factory=dict)
    _event: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = observer_client(f"listener-{uuid.uuid4().hex[:8]}")  # test-only: reads every device's commands
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(self.host, self.port)
        self.client.subscribe("acs/v1/devices/+/commands", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "command listener did not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        command = p.open_message(message.topic, message.payload, self.server_public_key)
        assert isinstance(command, p.Command)
        with self._event:
            key = command.detection_id or command.command_id
            self.commands[key] = command
            self.received_at[key] = time.monotonic()
            self._event.notify_all()

    def wait(self, detection_id: str, timeout: float = 30) -> p.Command:
        with self._event:
            if not self._event.wait_for(lambda: detection_id in self.commands, timeout):
                raise TimeoutError(f"no command for detection {detection_id}")
            return self.commands[detection_id]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def lfw_face(path: Path) -> FaceCandidate:
    """The largest face of an LFW photo as an edge agent's detector and aligner prepare it."""
    import numpy as np
    from PIL import Image

    from edge_agent.vision import YunetDetector, prepare

    detector = YunetDetector(min_face_px=20, threads=1)
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    found = prepare(rgb, detector.detect(rgb), min_face_px=20, min_score=0.5)
    if not found:
        raise LookupError(f"no face in {path}")
    return found[0]


def lfw_faces(count: int) -> list[FaceCandidate]:
    """One face each of the first ``count`` LFW people with a face the agent finds."""
    from tests.faces import LFW_DIR

    out = []
    for person in sorted(d for d in LFW_DIR.iterdir() if d.is_dir()):
        try:
            out.append(lfw_face(sorted(person.glob("*.jpg"))[0]))
        except LookupError:
            continue
        if len(out) == count:
            return out
    raise LookupError("not enough LFW faces")


def agent_start(uid: str, door: Any, folder: Path, *, mode: str = "embedding") -> EdgeAgent:
    """Provision ``uid`` at ``door`` and start its edge agent (sface in embedding mode, no camera) on
    the test run's broker, with its model folder under ``folder``; heartbeats every second."""
    from devices.provisioning import agent_config, device_provision, secret_file_write
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import load_config
    from edge_agent.relay import SimulatedRelay
    from edge_agent.vision import LocalEmbedder

    provisioned = device_provision(uid=uid, door=door)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / "device.key"
    secret_file_write(key, provisioned.private_key_pem)
    config_path = folder / "agent.toml"
    secret_file_write(config_path, agent_config(provisioned, key_path=str(key), mqtt_url=settings.MQTT_URL))
    config = load_config(config_path, environ={})
    config.spool.dir = folder / "spool"
    config.models.dir = folder / "models"
    config.detection.mode = mode
    config.detection.threads = 1
    config.agent.heartbeat_interval_s = 1.0
    config.validate()
    embedder = LocalEmbedder("sface", threads=1) if mode == "embedding" else None
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay(), embedder=embedder)
    agent.start()
    return agent


def mqtt_address() -> tuple[str, int]:
    from devices.mqtt import broker_address

    address = broker_address(settings.MQTT_URL)
    return address.host, address.port


def publisher() -> mqtt.Client:
    host, port = mqtt_address()
    client = observer_client(f"device-sim-{uuid.uuid4().hex[:8]}")  # test-only: writes any device's topics
    client.connect(host, port)
    client.loop_start()
    return client


def aligned_crop_jpeg(path: Path) -> bytes:
    """The ArcFace-aligned 112x112 crop of the largest face in ``path``, as the edge agent sends it."""
    from PIL import Image

    from faceengine.pipeline import faces_from_image

    with Image.open(path) as image:
        sample = faces_from_image(image.convert("RGB"), max_faces=1)[0]
    buffer = io.BytesIO()
    Image.fromarray(sample.aligned).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def crop_detection(
    device_uid: str, jpeg: bytes, *, captured_at: float | None = None, face_px: float = 120.0
) -> p.Detection:
    now = time.time()
    return p.Detection.with_crop(
        jpeg=jpeg,
        device_uid=device_uid,
        detection_id=p.new_id(),
        captured_at=captured_at or now,
        sent_at=now,
        detector_score=0.99,
        box=(100, 80, 220, 230),
        quality={"face_px": face_px, "sharpness": 150.0},
    )


def embedding_detection(device_uid: str, vector: list[float], model_version: str, encoding: str = "f32") -> p.Detection:
    now = time.time()
    return p.Detection.with_embedding(
        values=vector,
        model_version=model_version,
        encoding=encoding,
        device_uid=device_uid,
        detection_id=p.new_id(),
        captured_at=now,
        sent_at=now,
        detector_score=0.99,
        box=(100, 80, 220, 230),
        quality={"face_px": 120.0, "sharpness": 150.0},
    )
