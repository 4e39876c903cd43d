"""``simulate``: real MTCNN on face photos, signed detections out, signed decisions back."""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from accessctl.embedded import ChildService
from edge_agent import protocol as p
from edge_agent.agent import EdgeAgent
from edge_agent.relay import SimulatedRelay
from edge_agent.simulate import lfw_images, simulate
from edge_agent.vision import MtcnnDetector
from tests.edge_agent.conftest import Keys, ServerClient, face_image, make_config


def answer_detections(server: ServerClient, keys: Keys, stop: threading.Event) -> None:
    """A stand-in for the server: verify each detection and grant it."""
    while not stop.is_set():
        try:
            topic, raw = server.next(p.TopicKind.DETECTIONS, timeout=0.5)
        except Exception:  # noqa: S112 - queue.Empty / TimeoutError: poll again
            continue
        det = p.open_message(topic, raw, keys.device_public, window_s=30)
        cmd = p.Command(
            device_uid=det.device_uid,
            command="open",
            command_id=p.new_id(),
            detection_id=det.detection_id,
            issued_at=det.sent_at,
            reason="granted",
            pulse_ms=500,
        )
        server.publish(p.commands_topic(det.device_uid), p.seal(cmd, keys.server_private))


def test_simulate_visitors(tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient) -> None:
    folder = tmp_path / "lfw" / "images" / "Some_Person"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(face_image()).save(folder / f"Some_Person_000{i + 1}.jpg")
    (tmp_path / "lfw" / "images" / "Blank").mkdir()
    Image.new("RGB", (150, 150)).save(tmp_path / "lfw" / "images" / "Blank" / "Blank_0001.jpg")
    images = lfw_images(tmp_path / "lfw", 10)
    assert [i.name for i in images] == ["Blank_0001.jpg", "Some_Person_0001.jpg", "Some_Person_0002.jpg"]

    relay = SimulatedRelay()
    agent = EdgeAgent(
        make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}"), camera=None, detector=None, relay=relay
    )
    stop = threading.Event()
    responder = threading.Thread(target=answer_detections, args=(server, keys, stop), daemon=True)
    responder.start()
    lines: list[str] = []
    try:
        counts = simulate(agent, MtcnnDetector(min_face_px=20, threads=2), images, wait_s=10, out=lines.append)
    finally:
        stop.set()
        responder.join(5)
    assert counts["visitors"] == 3 and counts["no_face"] == 1 and counts["decided"] == 2
    assert "no usable face" in lines[0]
    assert "open (granted) pulse 500 ms" in lines[1] and "bytes sent" in lines[1]
    assert "bytes per detection (crop mode)" in lines[-1]
    assert relay.pulses == [500, 500]
