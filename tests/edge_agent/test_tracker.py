"""Tracking: one detection per person, with the best crop, never one per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from edge_agent.agent import EdgeAgent
from edge_agent.camera import Frame
from edge_agent.relay import SimulatedRelay
from edge_agent.tracker import IouTracker, iou
from faceengine import protocol as p
from tests.edge_agent.conftest import FakeDetector, Keys, face_at, face_image, make_config


def test_iou() -> None:
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert abs(iou((0, 0, 10, 10), (5, 0, 15, 10)) - 1 / 3) < 1e-9


def test_one_emission_per_track_with_best_item() -> None:
    tracker: IouTracker[str] = IouTracker(max_dwell_s=1.0, timeout_s=0.5)
    out = []
    ranks = [0.2, 0.5, 0.9, 0.4]
    for i, rank in enumerate(ranks):  # person A walks slowly to the right
        out += tracker.update([((100 + 2 * i, 100, 200 + 2 * i, 220), rank, f"a{i}")], ts=i * 0.1)
    assert out == []  # still in view, below max dwell
    out += tracker.update([], ts=1.0)  # unseen for 0.7 s > timeout
    assert [(e.item, e.reason, e.frames) for e in out] == [("a2", "ended", 4)]
    assert tracker.tracks == []


def test_max_dwell_emits_once_while_person_stays() -> None:
    tracker: IouTracker[int] = IouTracker(max_dwell_s=1.0, timeout_s=0.5)
    out = []
    for i in range(40):  # 4 s in view at 10 fps
        out += tracker.update([((100, 100, 200, 220), float(i % 7), i)], ts=i * 0.1)
    assert len(out) == 1 and out[0].reason == "dwell" and out[0].dwell_s >= 1.0
    assert out[0].item == 6  # best rank seen before the dwell deadline
    out += tracker.update([], ts=10.0)
    assert len(out) == 1  # the end of an emitted track emits nothing


def test_two_people_two_tracks() -> None:
    tracker: IouTracker[str] = IouTracker()
    out = []
    for i in range(5):
        obs = [((10, 10, 100, 120), 1.0, "left"), ((300, 10, 390, 120), 1.0, "right")]
        out += tracker.update(obs, ts=i * 0.1)
    out += tracker.flush()
    assert sorted(e.item for e in out) == ["left", "right"]


def test_agent_sends_the_best_crop_once_per_person(tmp_path: Path, keys: Keys) -> None:
    canvas = np.zeros((480, 640, 3), dtype=np.uint8)
    canvas[100:340, 100:340] = np.asarray(Image.fromarray(face_image()).resize((240, 240)))
    sizes = [70, 90, 150, 110, 80]  # the person comes closer then leaves; frame 2 is the best
    script = [[face_at((110, 110, 110 + s, 110 + s * 1.1))] for s in sizes]
    agent = EdgeAgent(
        make_config(tmp_path, keys, "mqtt://127.0.0.1:1"),
        camera=None,
        detector=FakeDetector(script),
        relay=SimulatedRelay(),
    )
    sent = []
    for i in range(12):
        sent += agent.handle_frame(Frame(rgb=canvas, ts=1000.0 + i * 0.1, index=i))
    assert len(sent) == 1
    det = sent[0]
    assert det.quality["face_px"] == 150.0 and det.quality["frames"] == 5.0
    assert det.box == (110, 110, 260, 275)
    assert det.captured_at == 1000.2
    assert len(agent.spool) == 1
    assert p.open_envelope(agent.spool.peek()[0].payload, keys.device_public)["detection_id"] == det.detection_id
    agent.spool.close()


def test_keep_best_keeps_the_next_best_observations_in_rank_order() -> None:
    tracker: IouTracker[str] = IouTracker(max_dwell_s=5.0, timeout_s=0.5, keep_best=3)
    ranks = [0.2, 0.5, 0.9, 0.4, 0.7, 0.1]
    for i, rank in enumerate(ranks):
        tracker.update([((100 + i, 100, 200 + i, 220), rank, f"a{i}")], ts=i * 0.1)
    (emission,) = tracker.flush()
    assert emission.item == "a2" and emission.others == ("a4", "a1")
    single: IouTracker[str] = IouTracker(keep_best=1)
    single.update([((0, 0, 10, 10), 0.3, "x")], ts=0.0)
    single.update([((0, 0, 10, 10), 0.6, "y")], ts=0.1)
    assert single.flush()[0].others == ()  # as before: the best face only


def _walk_past(tmp_path: Path, keys: Keys, track_probes: int) -> p.Detection:
    canvas = np.zeros((480, 640, 3), dtype=np.uint8)
    canvas[100:340, 100:340] = np.asarray(Image.fromarray(face_image()).resize((240, 240)))
    sizes = [70, 90, 150, 110, 80]
    script = [[face_at((110, 110, 110 + s, 110 + s * 1.1))] for s in sizes]
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    config.detection.track_probes = track_probes
    agent = EdgeAgent(config, camera=None, detector=FakeDetector(script), relay=SimulatedRelay())
    sent = []
    for i in range(12):
        sent += agent.handle_frame(Frame(rgb=canvas, ts=1000.0 + i * 0.1, index=i))
    assert len(sent) == 1 and len(agent.spool) == 1
    signed = p.open_envelope(agent.spool.peek()[0].payload, keys.device_public)
    agent.spool.close()
    assert p.Detection.from_dict(signed) == sent[0]  # the probes are inside the signed payload
    return sent[0]


def test_agent_sends_the_best_faces_of_a_track_as_track_probes(tmp_path: Path, keys: Keys) -> None:
    det = _walk_past(tmp_path, keys, track_probes=3)
    assert det.quality["face_px"] == 150.0 and det.probe_count == 3
    # the next best by quality rank: the 110 px and the 90 px frames, each a JPEG crop of its own
    assert [probe.quality["face_px"] for probe in det.track_probes] == [110.0, 90.0]
    assert all(probe.crop_jpeg and probe.crop_jpeg.startswith(b"\xff\xd8\xff") for probe in det.track_probes)
    assert len({probe.crop_jpeg for probe in det.track_probes} | {det.crop_jpeg}) == 3


def test_agent_with_one_track_probe_sends_as_older_agents(tmp_path: Path, keys: Keys) -> None:
    det = _walk_past(tmp_path, keys, track_probes=1)
    assert det.track_probes == () and "track_probes" not in det.to_dict()


def test_a_track_too_large_for_one_message_is_sent_with_its_best_face_alone(tmp_path: Path, keys: Keys) -> None:
    import dataclasses
    import time

    from tests.edge_agent.conftest import candidate

    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    config.detection.track_probes, config.detection.jpeg_quality = 5, 100
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay())
    rng = np.random.default_rng(0)
    noisy = [
        dataclasses.replace(candidate(), crop=rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)) for _ in range(5)
    ]
    try:
        det, size = agent.send_candidate(noisy[0], captured_at=time.time(), others=noisy[1:])
        assert det.track_probes == () and size <= p.MAX_MESSAGE_BYTES and len(agent.spool) == 1
        det, _ = agent.send_candidate(noisy[0], captured_at=time.time(), others=noisy[1:2])
        assert det.probe_count == 2  # two of them fit
    finally:
        agent.spool.close()
