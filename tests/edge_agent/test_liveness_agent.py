"""Liveness at the edge: every frame of a track scored, fused (mean of the best k) into the signed
detection, in crop and embedding mode; off -> no fields; a failing scorer never stops the agent.

With ``nuaa-dev``: the agent's own pipeline over a subject's printed-photo frames gives a fused
score below the calibrated threshold and over the live frames above it, in process and as a
separate agent process against a real broker (the agent half of issue 18's end-to-end test).
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from accessctl.project.embedded import ChildService
from edge_agent.agent import EdgeAgent, agent_liveness
from edge_agent.camera import FolderSource, Frame
from edge_agent.config import ConfigError, EdgeConfig, load_config
from edge_agent.liveness import EdgeLiveness, liveness_load
from edge_agent.relay import SimulatedRelay
from edge_agent.tracker import IouTracker
from faceengine import protocol as p
from faceengine.liveness import MODEL_VERSION
from faceengine.liveness.fusion import fuse_median, fuse_top_k
from tests.broker_logins import observer_client
from tests.edge_agent.conftest import (
    DEVICE_PASSWORD,
    OBSERVER,
    UID,
    FakeDetector,
    Keys,
    ServerClient,
    face_at,
    face_image,
    make_config,
)
from tests.faces import ROOT, dataset_dir

#: ``calibrate_liveness --detector yunet`` on nuaa-dev at a target APCER of 1 % (issue 18)
CALIBRATED_THRESHOLD = 0.0846
BOX = (50.0, 36.0, 110.0, 114.0)


class ScriptedScorer:
    """Returns the next scripted score for every box of a frame; an exception in the script is raised."""

    def __init__(self, script: list[float | Exception]) -> None:
        self.script = list(script)
        self.calls: list[int] = []

    def score(self, frame_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        self.calls.append(len(boxes))
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return np.full(len(boxes), item, dtype=np.float32)


def frames(n: int, *, start: float = 1_000.0, step: float = 0.05) -> list[Frame]:
    rgb = face_image()
    return [Frame(rgb=rgb, ts=start + i * step, index=i) for i in range(n)]


def make_agent(
    tmp_path: Path, keys: Keys, *, url: str = "mqtt://127.0.0.1:1", scorer: object | None = None, n_frames: int = 5
) -> EdgeAgent:
    """An agent (link not started) whose detector sees one face on ``n_frames`` frames."""
    config = make_config(tmp_path, keys, url)
    config.detection.max_dwell_s = 60.0  # the track is emitted when the visitor leaves (end_tracks)
    liveness = EdgeLiveness(scorer, fuse_top_k=3) if scorer is not None else None  # type: ignore[arg-type]
    detector = FakeDetector([[face_at(BOX)] for _ in range(n_frames)])
    return EdgeAgent(config, camera=None, detector=detector, relay=SimulatedRelay(), liveness=liveness)


def play(agent: EdgeAgent, n: int) -> list[p.Detection]:
    out: list[p.Detection] = []
    for frame in frames(n):
        out += agent.handle_frame(frame)
    return out + agent.end_tracks()


# -- fusion ------------------------------------------------------------------------------------


def test_fusion_is_the_mean_of_the_best_k_frames() -> None:
    assert fuse_top_k([0.1, 0.9, 0.5, 0.7, 0.2], 3) == pytest.approx(0.7)
    assert fuse_top_k([0.02, 0.01, 0.03, 0.001], 3) == pytest.approx(0.02)
    assert fuse_top_k([0.4], 3) == pytest.approx(0.4)


def test_fusion_with_fewer_frames_than_k_uses_them_all() -> None:
    assert fuse_top_k([0.2, 0.6], 3) == pytest.approx(0.4)
    assert fuse_top_k([], 3) is None
    with pytest.raises(ValueError, match="k must be"):
        fuse_top_k([0.5], 0)


def test_median_fusion_ignores_a_few_outlying_frames_either_way() -> None:
    assert fuse_median([0.01, 0.02, 0.9, 0.03, 0.85]) == pytest.approx(0.03)  # a print's two lucky frames
    assert fuse_median([0.9, 0.95, 0.01, 0.92]) == pytest.approx(0.91)  # a live face's one blurred frame
    assert fuse_median([0.4]) == pytest.approx(0.4) and fuse_median([]) is None
    median = EdgeLiveness(ScriptedScorer([]), fusion="median").fuse([0.01, 0.02, 0.9, 0.03, 0.85])
    top_k = EdgeLiveness(ScriptedScorer([]), fusion="top_k", fuse_top_k=3).fuse([0.01, 0.02, 0.9, 0.03, 0.85])
    assert median is not None and median.score == pytest.approx(0.03) and median.frames == 5
    assert top_k is not None and top_k.score == pytest.approx((0.9 + 0.85 + 0.03) / 3)
    with pytest.raises(ValueError, match="unknown liveness fusion"):
        EdgeLiveness(ScriptedScorer([]), fusion="max")


def test_fusion_config_median_by_default(tmp_path: Path) -> None:
    config = EdgeConfig()
    assert config.liveness.fusion == "median"
    live = agent_liveness(config)
    assert live is not None and live.fusion == "median"
    toml = tmp_path / "agent.toml"
    toml.write_text('[device]\nuid = "d"\n[liveness]\nfusion = "top_k"\nfuse_top_k = 2\n')
    config = load_config(toml, environ={}).validate(need_keys=False)
    live = agent_liveness(config)
    assert live is not None and live.fusion == "top_k" and live.fuse_top_k == 2
    assert load_config(toml, environ={"ACS_EDGE_LIVENESS_FUSION": "median"}).liveness.fusion == "median"
    with pytest.raises(ConfigError, match=r"liveness\.fusion"):
        load_config(toml, environ={"ACS_EDGE_LIVENESS_FUSION": "mean"}).validate(need_keys=False)
    with pytest.raises(ValueError, match="unknown liveness fusion"):
        liveness_load(enabled=True, threads=2, fuse_top_k=3, fusion="mean")


def test_frames_scored_never_exceed_what_the_protocol_accepts() -> None:
    evidence = EdgeLiveness(ScriptedScorer([]), fuse_top_k=3).fuse([0.9] * (p.Detection.MAX_LIVENESS_FRAMES + 5))
    assert evidence is not None and evidence.frames == p.Detection.MAX_LIVENESS_FRAMES
    assert evidence.score == pytest.approx(0.9)


def test_tracker_keeps_every_frames_evidence_until_the_emission() -> None:
    tracker: IouTracker[float | None] = IouTracker(max_dwell_s=0.25, evidence=lambda item: item)
    values = [0.3, None, 0.8, 0.5, 0.9]  # None: that frame was not scored
    emissions = []
    for i, value in enumerate(values):
        emissions += tracker.update([(BOX, 1.0, value)], ts=i * 0.1)
    (emission,) = emissions  # after 0.3 s of dwell, at the fourth frame
    assert emission.frames == 4 and emission.evidence == (0.3, 0.8, 0.5)
    assert tracker.flush() == []


# -- the agent's detections ----------------------------------------------------------------------


def test_track_detection_carries_the_fused_score_and_frames_scored(tmp_path: Path, keys: Keys) -> None:
    scorer = ScriptedScorer([0.1, 0.9, 0.5, 0.7, 0.2])
    agent = make_agent(tmp_path, keys, scorer=scorer)
    try:
        (detection,) = play(agent, 5)
    finally:
        agent.stop()
    assert scorer.calls == [1] * 5  # every frame scored, the frame's boxes in one batch
    assert detection.liveness == pytest.approx(0.7)
    assert detection.liveness_frames == 5 and detection.liveness_model == MODEL_VERSION
    assert detection.quality["frames"] == 5.0


def test_all_boxes_of_a_frame_are_scored_in_one_batch(tmp_path: Path, keys: Keys) -> None:
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    scorer = ScriptedScorer([0.6, 0.6])
    two_faces = [face_at(BOX), face_at((140.0, 36.0, 200.0, 114.0))]
    agent = EdgeAgent(
        config,
        camera=None,
        detector=FakeDetector([two_faces, two_faces]),
        relay=SimulatedRelay(),
        liveness=EdgeLiveness(scorer, fuse_top_k=3),
    )
    try:
        detections = play(agent, 2)
    finally:
        agent.stop()
    assert scorer.calls == [2, 2]
    assert len(detections) == 2 and all(d.liveness_frames == 2 for d in detections)


def test_liveness_disabled_sends_no_liveness_fields(tmp_path: Path, keys: Keys) -> None:
    agent = make_agent(tmp_path, keys, scorer=None)
    try:
        (detection,) = play(agent, 3)
    finally:
        agent.stop()
    assert detection.liveness is None and detection.liveness_frames is None and detection.liveness_model is None
    assert not {"liveness", "liveness_frames", "liveness_model"} & detection.to_dict().keys()


def test_liveness_config_defaults_on_and_can_be_switched_off(tmp_path: Path) -> None:
    config = EdgeConfig()
    assert config.liveness.enabled and config.liveness.fuse_top_k == 3 and config.liveness.threads == 2
    toml = tmp_path / "agent.toml"
    toml.write_text("[liveness]\nenabled = false\nfuse_top_k = 5\n")
    config = load_config(toml, environ={})
    assert not config.liveness.enabled and config.liveness.fuse_top_k == 5
    assert agent_liveness(config) is None
    assert load_config(toml, environ={"ACS_EDGE_LIVENESS_ENABLED": "true"}).liveness.enabled
    assert liveness_load(enabled=False, threads=2, fuse_top_k=3) is None


def test_liveness_boxes_auto_follows_the_detector(tmp_path: Path) -> None:
    """``[liveness] boxes``: auto = O-Net's redrawing with YuNet, the detector's own box with MTCNN;
    either can be forced; anything else is refused at start."""
    from faceengine.onet_refine import OnetBoxRefiner

    config = EdgeConfig()
    assert config.liveness.boxes == "auto"
    assert config.liveness.resolved_boxes("yunet") == "onet"
    assert config.liveness.resolved_boxes("mtcnn") == "detector"
    toml = tmp_path / "agent.toml"
    toml.write_text('[device]\nuid = "d"\n[detection]\ndetector = "yunet"\n[liveness]\nboxes = "detector"\n')
    config = load_config(toml, environ={}).validate(need_keys=False)
    assert config.liveness.resolved_boxes(config.detection.detector) == "detector"
    live = agent_liveness(config)
    assert live is not None and live.redraw is None
    config = load_config(toml, environ={"ACS_EDGE_LIVENESS_BOXES": "onet", "ACS_EDGE_DETECTION_DETECTOR": "mtcnn"})
    live = agent_liveness(config.validate(need_keys=False))
    assert live is not None and isinstance(live.redraw, OnetBoxRefiner)
    with pytest.raises(ConfigError, match=r"liveness\.boxes"):
        load_config(toml, environ={"ACS_EDGE_LIVENESS_BOXES": "mtcnn"}).validate(need_keys=False)
    with pytest.raises(ValueError, match="unknown liveness boxes"):
        liveness_load(enabled=True, threads=2, fuse_top_k=3, boxes="auto")


def test_the_scorer_sees_the_redrawn_boxes_in_one_batch(tmp_path: Path, keys: Keys) -> None:
    """With a redraw, the liveness windows are cut around its boxes; the track keeps the detector's."""
    seen: list[np.ndarray] = []

    class RecordingScorer:
        def score(self, frame_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
            seen.append(np.asarray(boxes))
            return np.full(len(boxes), 0.7)

    def redraw(frame_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return boxes + np.asarray([0.0, 10.0, 0.0, 20.0])

    liveness = EdgeLiveness(RecordingScorer(), fuse_top_k=3, redraw=redraw)
    assert liveness.score_frame(face_image(), [BOX, (200.0, 40.0, 260.0, 120.0)]) == [0.7, 0.7]
    np.testing.assert_allclose(seen[-1], [[50, 46, 110, 134], [200, 50, 260, 140]])

    agent = make_agent(tmp_path, keys, scorer=RecordingScorer(), n_frames=2)
    agent.liveness = liveness
    try:
        (detection,) = play(agent, 2)
    finally:
        agent.stop()
    assert detection.liveness == pytest.approx(0.7) and detection.liveness_frames == 2
    np.testing.assert_allclose(seen[-1], [[50, 46, 110, 134]])


@pytest.mark.parametrize("bad", [RuntimeError("O-Net broke"), "shape", "nan"])
def test_a_failing_redraw_counts_as_a_scorer_failure(bad: object) -> None:
    def redraw(frame_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if isinstance(bad, Exception):
            raise bad
        return np.zeros((len(boxes) + 1, 4)) if bad == "shape" else np.full((len(boxes), 4), np.nan)

    liveness = EdgeLiveness(ScriptedScorer([0.9]), fuse_top_k=3, redraw=redraw)
    assert liveness.score_frame(face_image(), [BOX]) == [None]
    assert liveness.failures == 1


def test_real_onet_redraw_scores_a_face(tmp_path: Path) -> None:
    """The shipped networks around O-Net's redrawing of a real face's box: one finite score."""
    live = liveness_load(enabled=True, threads=2, fuse_top_k=3, boxes="onet")
    assert live is not None and live.redraw is not None
    (score,) = live.score_frame(face_image(), [BOX])
    assert score is not None and 0.0 <= score <= 1.0 and live.failures == 0


def test_scorer_failure_sends_without_a_score_and_the_agent_keeps_running(
    tmp_path: Path, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    scorer = ScriptedScorer([RuntimeError("scorer broke")] * 3)
    agent = make_agent(tmp_path, keys, scorer=scorer, n_frames=3)
    try:
        with caplog.at_level("ERROR", logger="edge_agent.liveness"):
            (detection,) = play(agent, 3)
        assert detection.liveness is None and detection.liveness_frames is None  # server: not measured
        assert agent.liveness is not None and agent.liveness.failures == 3
        assert "liveness scorer failed" in caplog.text

        # some frames fail, some do not: only the scored frames count
        scorer.script = [RuntimeError("again"), 0.4, 0.8]
        agent.detector = FakeDetector([[face_at(BOX)] for _ in range(3)])
        (detection,) = play(agent, 3)
        assert detection.liveness == pytest.approx(0.6) and detection.liveness_frames == 2
    finally:
        agent.stop()


def test_weights_that_do_not_load_leave_the_agent_running_without_liveness(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import faceengine.liveness

    def broken(*args: object, **kwargs: object) -> None:
        raise faceengine.liveness.LivenessWeightsError("liveness weights not found: weights/x.pth")

    monkeypatch.setattr(faceengine.liveness, "get_scorer", broken)
    with caplog.at_level("ERROR", logger="edge_agent.liveness"):
        assert liveness_load(enabled=True, threads=2, fuse_top_k=3) is None
    assert "liveness networks did not load" in caplog.text


def test_a_scorer_returning_garbage_counts_as_a_failure(tmp_path: Path, keys: Keys) -> None:
    class NaNScorer:
        def score(self, frame_rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
            return np.full(len(boxes), np.nan)

    agent = make_agent(tmp_path, keys, scorer=NaNScorer(), n_frames=2)
    try:
        (detection,) = play(agent, 2)
    finally:
        agent.stop()
    assert detection.liveness is None


def test_run_loop_survives_a_failing_scorer(tmp_path: Path, keys: Keys, broker: ChildService) -> None:
    class Camera:
        def frames(self) -> Iterator[Frame]:
            yield from frames(4)

        def close(self) -> None:
            pass

    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    agent = EdgeAgent(
        config,
        camera=Camera(),
        detector=FakeDetector([[face_at(BOX)] for _ in range(4)]),
        relay=SimulatedRelay(),
        liveness=EdgeLiveness(ScriptedScorer([RuntimeError("boom")] * 4)),
    )
    agent.run()
    assert agent.detections_sent == 1 and agent.filter_watch.total.frames == 4


@pytest.mark.parametrize("mode", ["crop", "embedding"])
def test_signed_detection_carries_liveness_in_both_modes(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient, mode: str
) -> None:
    from edge_agent.vision import LocalEmbedder

    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.detection.mode = mode
    config.detection.max_dwell_s = 60.0
    agent = EdgeAgent(
        config,
        camera=None,
        detector=FakeDetector([[face_at(BOX)] for _ in range(4)]),
        relay=SimulatedRelay(),
        embedder=LocalEmbedder("sface") if mode == "embedding" else None,
        liveness=EdgeLiveness(ScriptedScorer([0.91, 0.97, 0.2, 0.95])),
    )
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        (sent,) = play(agent, 4)
        topic, raw = server.next(p.TopicKind.DETECTIONS)
        got = p.open_message(topic, raw, keys.device_public, window_s=p.DETECTION_WINDOW_S)
        assert got == sent and got.mode is p.Mode(mode)
        assert got.liveness == pytest.approx((0.91 + 0.97 + 0.95) / 3, abs=1e-6)
        assert got.liveness_frames == 4 and got.liveness_model == MODEL_VERSION
        payload = p.split_envelope(raw).payload
        assert {"liveness", "liveness_frames", "liveness_model"} <= payload.keys()  # inside what is signed
    finally:
        agent.stop()


# -- nuaa-dev: the real detector and scorer over a subject's captures ------------------------------

SUBJECT = "0001"
FRAMES_PER_VISITOR = 15


def nuaa(kind: str) -> Path:
    folder = dataset_dir("nuaa-dev")
    assert folder is not None  # the dataset marker skipped (or failed, under CI) already
    return folder / kind / SUBJECT


@pytest.fixture(scope="module", params=["yunet", "mtcnn"])
def real_agent_parts(request: pytest.FixtureRequest) -> tuple[object, EdgeLiveness]:
    """Each detector the agent offers (``[detection] detector``), with the shipped liveness."""
    from edge_agent.vision import detector_build

    config = EdgeConfig()
    config.detection.detector = request.param
    liveness = agent_liveness(config)  # [liveness] boxes = "auto": O-Net's redrawing of YuNet's boxes
    assert liveness is not None, "the shipped liveness weights did not load"
    assert (liveness.redraw is not None) == (request.param == "yunet")
    return detector_build(request.param, min_face_px=config.detection.min_face_px, threads=2), liveness


@pytest.mark.dataset("nuaa-dev")
@pytest.mark.parametrize("kind", ["print", "live"])
def test_agent_pipeline_on_nuaa_frames_separates_print_from_live(
    tmp_path: Path, keys: Keys, real_agent_parts: tuple[object, EdgeLiveness], kind: str
) -> None:
    detector, liveness = real_agent_parts
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    config.detection.min_face_px, config.detection.min_detector_score = 40, 0.9
    agent = EdgeAgent(config, camera=None, detector=detector, relay=SimulatedRelay(), liveness=liveness)  # type: ignore[arg-type]
    detections: list[p.Detection] = []
    try:
        for frame in FolderSource(nuaa(kind), limit=FRAMES_PER_VISITOR).frames():
            # a 10 FPS camera: the track is emitted after max_dwell_s = 1 s, i.e. on its 11th frame
            detections += agent.handle_frame(Frame(rgb=frame.rgb, ts=1_000.0 + 0.1 * frame.index, index=frame.index))
        detections += agent.end_tracks()
    finally:
        agent.stop()
    assert detections and all(d.liveness is not None for d in detections)
    assert detections[0].liveness_frames == 11
    scores = [d.liveness for d in detections]
    if kind == "print":
        assert max(scores) < CALIBRATED_THRESHOLD, scores  # type: ignore[type-var]
    else:
        assert min(scores) > CALIBRATED_THRESHOLD, scores  # type: ignore[type-var]


@pytest.mark.dataset("nuaa-dev")
def test_agent_process_holds_a_print_then_a_live_face_to_the_camera(
    tmp_path: Path, keys: Keys, broker: ChildService
) -> None:
    """``python -m edge_agent simulate --frames print/0001 --frames live/0001`` against a real
    broker; an observer on the device's detections topic verifies each envelope with the device's
    public key. The print visitor's fused score is below the calibrated threshold, the live one's
    above. (The server half, denial and alarm at a door requiring liveness, builds on this.)"""
    key_path = tmp_path / "device.key"
    key_path.write_text(keys.device_private)
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[device]\nuid = "{UID}"\nprivate_key_path = "{key_path}"\nserver_public_key = "{keys.server_public}"\n'
        f'[mqtt]\nurl = "mqtt://{broker.host}:{broker.port}"\nusername = "{UID}"\npassword = "{DEVICE_PASSWORD}"\n'
        f'[spool]\ndir = "{tmp_path / "spool"}"\n'
        "[liveness]\nenabled = true\nfuse_top_k = 3\n"
    )
    received: queue.Queue[tuple[str, bytes, float]] = queue.Queue()
    subscribed = queue.Queue[int]()
    observer = observer_client("liveness-observer", login=OBSERVER)
    observer.on_connect = lambda c, *a: c.subscribe(p.detections_topic(UID), 1)
    observer.on_subscribe = lambda *a: subscribed.put(1)
    # fresh when it arrived (checked after the run, which a loaded machine makes long)
    observer.on_message = lambda c, u, m: received.put((m.topic, m.payload, time.time()))
    observer.connect(broker.host, broker.port)
    observer.loop_start()
    try:
        subscribed.get(timeout=10)
        argv = [sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "simulate", "--config", str(toml)]
        argv += ["--frames", str(nuaa("print")), "--frames", str(nuaa("live"))]
        argv += ["--frames-limit", str(FRAMES_PER_VISITOR), "--fps", "0", "--wait", "0"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACS_EDGE_")}
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr
        by_visitor: dict[str, list[str]] = {"print": [], "live": []}
        for line in result.stdout.splitlines():
            if m := re.match(r"visitor \d+/2 (\S+): detection ([0-9a-f-]{36})", line):
                by_visitor[Path(m.group(1)).parent.name].append(m.group(2))
        assert by_visitor["print"] and by_visitor["live"], result.stdout

        scores: dict[str, float] = {}
        while len(scores) < len(by_visitor["print"]) + len(by_visitor["live"]):
            topic, raw, arrived = received.get(timeout=10)
            detection = p.open_message(topic, raw, keys.device_public, now=arrived, window_s=p.DETECTION_WINDOW_S)
            assert isinstance(detection, p.Detection) and detection.device_uid == UID
            assert detection.liveness is not None and detection.liveness_model == MODEL_VERSION
            assert detection.liveness_frames is not None and detection.liveness_frames >= 1
            scores[detection.detection_id] = detection.liveness
    finally:
        observer.disconnect()
        observer.loop_stop()
    assert all(scores[i] < CALIBRATED_THRESHOLD for i in by_visitor["print"]), (scores, result.stdout)
    assert all(scores[i] > CALIBRATED_THRESHOLD for i in by_visitor["live"]), (scores, result.stdout)
