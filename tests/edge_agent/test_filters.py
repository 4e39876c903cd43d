"""Issue 16 item 5: an agent whose camera delivers frames but sends no face says why.

An image-folder camera sent 0 detections and the agent exited 0 without a word (its faces were
smaller than the 60 px default). Now it warns, naming the filter and the counts, and the face
size rule is the server's (one constant in the wire protocol module).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image

import edge_agent
from edge_agent.agent import EdgeAgent
from edge_agent.camera import FolderSource, Frame
from edge_agent.config import EdgeConfig
from edge_agent.relay import SimulatedRelay
from edge_agent.vision import FilterWatch
from faceengine import protocol as p
from faceengine.quality import QualityThresholds
from tests.edge_agent.conftest import FakeDetector, Keys, face_at, face_image, make_config

CANVAS = np.zeros((240, 320, 3), dtype=np.uint8)


def _agent(tmp_path: Path, keys: Keys, script: list[list], **detection: object) -> EdgeAgent:
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")  # never started: no network
    for key, value in detection.items():
        setattr(config.detection, key, value)
    return EdgeAgent(config, camera=None, detector=FakeDetector(script), relay=SimulatedRelay())


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "edge_agent.vision"]


def test_one_minimum_face_size_for_agent_and_server() -> None:
    assert p.MIN_FACE_PX == 40
    assert EdgeConfig().detection.min_face_px == p.MIN_FACE_PX
    assert QualityThresholds().min_face_size == p.MIN_FACE_PX
    # the server's setting defaults to it (tests may run with ACCESSCTL_MIN_FACE_PX unset only)
    assert settings.RECOGNITION_MIN_FACE_PX == p.MIN_FACE_PX
    example = Path(edge_agent.__file__).with_name("config.example.toml").read_text()
    assert f"min_face_px = {p.MIN_FACE_PX} " in example


def test_frames_with_only_small_faces_warn_once_per_window_naming_the_filter(
    tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    small = [[face_at((10, 10, 45, 52))] for _ in range(40)]  # 35 px faces, default minimum 40
    agent = _agent(tmp_path, keys, small, min_face_px=p.MIN_FACE_PX)
    agent.filter_watch.every_s = 1.0
    caplog.set_level(logging.WARNING, logger="edge_agent.vision")
    for i in range(40):  # 4 s of frames at 10 fps (their timestamps; nothing waits)
        assert agent.handle_frame(Frame(rgb=CANVAS, ts=1000.0 + i * 0.1, index=i)) == []
    warned = _warnings(caplog)
    assert len(warned) == 3  # once per second of frames, not once per frame
    for text in warned:  # every face of the window counted, and dropped by the size filter
        n = re.search(r"(\d+) face\(s\) in (\d+) frame\(s\)", text)
        assert n is not None and n[1] == n[2] and int(n[1]) in (10, 11), text
        assert f"{n[1]} smaller than [detection] min_face_px = 40 (largest 35 px)" in text
        assert "min_detector_score" not in text
    assert len(agent.spool) == 0
    agent.spool.close()


def test_low_scores_and_empty_frames_are_named_too(tmp_path: Path, keys: Keys) -> None:
    watch = FilterWatch(min_face_px=40, min_score=0.9, every_s=10.0)
    from edge_agent.vision import prepare

    rgb = face_image()
    prepare(rgb, [face_at((50, 36, 110, 114), score=0.7)], min_face_px=40, min_score=0.9, tally=watch.tally)
    prepare(rgb, [face_at((50, 36, 110, 114), score=0.8)], min_face_px=40, min_score=0.9, tally=watch.tally)
    prepare(rgb, [face_at((0, 0, 30, 30))], min_face_px=40, min_score=0.9, tally=watch.tally)
    text = watch.tally.why_none(min_face_px=40, min_score=0.9)
    assert text == (
        "3 face(s) in 3 frame(s), none passed the filters: 1 smaller than [detection] min_face_px = 40 "
        "(largest 30 px); 2 below [detection] min_detector_score = 0.9 (best 0.80)"
    )
    empty = FilterWatch(min_face_px=40, min_score=0.9)
    prepare(rgb, [], min_face_px=40, min_score=0.9, tally=empty.tally)
    assert empty.tally.why_none(min_face_px=40, min_score=0.9).startswith(
        "no face detected in 1 frame(s) (the detector looks for faces from about 32 px"
    )


def test_a_passing_face_silences_the_window(tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    script = [[face_at((10, 10, 45, 52))] for _ in range(15)] + [[face_at((50, 36, 110, 114))]]
    agent = _agent(tmp_path, keys, script, min_face_px=p.MIN_FACE_PX)
    agent.filter_watch.every_s = 5.0
    caplog.set_level(logging.WARNING, logger="edge_agent.vision")
    rgb = face_image()
    for i in range(len(script) + 40):
        agent.handle_frame(Frame(rgb=rgb, ts=1000.0 + i * 0.1, index=i))
    assert _warnings(caplog) == []  # a face passed within the window
    assert agent.filter_watch.total.passed == 1
    agent.spool.close()


def test_image_folder_camera_that_sends_nothing_says_why_when_it_ends(
    tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """The user's case: ``agent run`` over a folder of photos with small faces, 0 detections."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(CANVAS).save(folder / f"visitor-{i}.jpg")
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    config.detection.min_face_px = p.MIN_FACE_PX
    agent = EdgeAgent(
        config,
        camera=FolderSource(folder, max_fps=0, repeat=2),
        detector=FakeDetector([[face_at((10, 10, 40, 44), score=0.99)] for _ in range(6)]),
        relay=SimulatedRelay(),
    )
    caplog.set_level(logging.INFO)
    agent.run()  # the folder ends: the agent stops (the link never connects: nothing to wait for)
    (warning,) = _warnings(caplog)
    assert warning.startswith("camera ended after 6 frame(s) and no face was sent: 6 face(s) in 6 frame(s)")
    assert "6 smaller than [detection] min_face_px = 40 (largest 30 px)" in warning
    assert "camera stopped: 6 frame(s), 0 detection(s) sent" in caplog.text
