"""``python -m edge_agent simulate``: play LFW images as visitors against a real server.

Each image is one visitor: the real detector finds the largest face, the agent builds one
detection (crop or embedding mode), signs it and sends it through the normal spool + MQTT path;
then the simulator waits for the server's decision on the commands topic. One line per visitor
is written to ``out`` (CLI output) with the decision and the bytes sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_agent.agent import EdgeAgent
from edge_agent.camera import IMAGE_SUFFIXES
from edge_agent.protocol import Command
from edge_agent.vision import FaceDetector, prepare

logger = logging.getLogger(__name__)


def lfw_images(root: Path, count: int, *, offset: int = 0) -> list[Path]:
    """The first ``count`` images of an LFW tree (``<root>/images/<name>/*.jpg`` or ``<root>/<name>/*.jpg``)."""
    base = root / "images" if (root / "images").is_dir() else root
    paths = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[offset : offset + count]


class DecisionWaiter:
    """Collects commands by ``detection_id`` so each visitor can wait for its own decision."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._by_detection: dict[str, Command] = {}

    def __call__(self, command: Command) -> None:
        if command.detection_id is not None:
            with self._cond:
                self._by_detection[command.detection_id] = command
                self._cond.notify_all()

    def wait(self, detection_id: str, timeout: float) -> Command | None:
        with self._cond:
            self._cond.wait_for(lambda: detection_id in self._by_detection, timeout)
            return self._by_detection.get(detection_id)


def simulate(
    agent: EdgeAgent,
    detector: FaceDetector,
    images: list[Path],
    *,
    wait_s: float = 10.0,
    connect_timeout_s: float = 15.0,
    out: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run the visitors through ``agent`` (its link must not be started yet); returns counts."""
    from PIL import Image

    waiter = DecisionWaiter()
    agent.command_listeners.append(waiter)
    agent.start()
    counts = {"visitors": 0, "no_face": 0, "decided": 0, "bytes": 0}
    try:
        if not agent.link.wait_connected(connect_timeout_s):
            out(f"not connected to {agent.config.mqtt.url} after {connect_timeout_s:.0f}s: detections stay spooled")
        for n, path in enumerate(images, 1):
            with Image.open(path) as img:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
            d = agent.config.detection
            candidates = prepare(rgb, detector.detect(rgb), min_face_px=d.min_face_px, min_score=d.min_detector_score)
            counts["visitors"] += 1
            if not candidates:
                counts["no_face"] += 1
                out(f"visitor {n}/{len(images)} {path.name}: no usable face")
                continue
            best = max(candidates, key=lambda c: c.face.size)
            started = time.monotonic()
            detection, size = agent.send_candidate(best, captured_at=time.time(), extra_quality={"frames": 1.0})
            counts["bytes"] += size
            command = waiter.wait(detection.detection_id, wait_s)
            if command is None:
                out(f"visitor {n}/{len(images)} {path.name}: no decision within {wait_s:.0f}s, {size} bytes sent")
                continue
            counts["decided"] += 1
            latency_ms = (time.monotonic() - started) * 1000
            out(
                f"visitor {n}/{len(images)} {path.name}: {command.command} ({command.reason})"
                f" pulse {command.pulse_ms} ms, {size} bytes sent, decision after {latency_ms:.0f} ms"
            )
        sent = len(images) - counts["no_face"]
        if sent:
            out(f"{sent} detection(s), {counts['bytes'] / sent:.0f} bytes per detection ({d.mode} mode)")
        agent.link.wait_drained(5.0)
    finally:
        agent.stop()
    return counts
