"""``python -m edge_agent simulate``: play LFW images (or folders of frames) as visitors against a real server.

Each image is one visitor: the real detector finds the largest face, the agent builds one
detection (crop or embedding mode), signs it and sends it through the normal spool + MQTT path;
then the simulator waits for the server's decision on the commands topic. One line per visitor
is written to ``out`` (CLI output) with the decision and the bytes sent.

By default the images are played once, back to back. ``--track-photos K`` makes each visitor up to
K consecutive photos of one person (:func:`photo_tracks`), sent as the agent sends a track: the
best face by quality with the others as ``track_probes`` (the server fuses them).

``--loop`` makes a calm site instead (the demo camera of ``manage.py up --demo``): visitors
seconds apart for ever, mostly the enrolled ``--regulars``, now and then a stranger, never so many
strangers that the door's repeated unknown faces alarm (3 in 60 s) goes off; see
:func:`visitor_schedule`.

``--frames DIR`` plays a folder of consecutive frames instead (name order, e.g. a ``nuaa-dev``
subject's ``print/0001`` or ``live/0001`` captures) as one visitor through the agent's own camera
pipeline (:meth:`EdgeAgent.handle_frame`: detect, liveness on every frame, track, fuse, emit):
what a door camera sees when someone holds a printed photo in front of it; see
:func:`simulate_frames`. Several ``--frames`` are several visitors, one after the other.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.agent import EdgeAgent
from edge_agent.camera import IMAGE_SUFFIXES, FolderSource
from edge_agent.vision import FaceDetector, FilterTally, prepare
from faceengine.protocol import Command, Detection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Visitor:
    """One photo shown to the camera, ``delay_s`` after the previous visitor arrived."""

    photo: Path
    delay_s: float = 0.0
    stranger: bool = False
    #: more photos of the same visitor: one track, sent as the agent sends one (best face + probes)
    more: tuple[Path, ...] = ()


def photo_tracks(images: Sequence[Path], photos_per_track: int) -> list[Visitor]:
    """Visitors of up to ``photos_per_track`` consecutive photos of one person (same folder)."""
    if photos_per_track < 1:
        raise ValueError("photos_per_track >= 1")
    visitors: list[Visitor] = []
    group: list[Path] = []
    for path in images:
        if group and (path.parent != group[0].parent or len(group) == photos_per_track):
            visitors.append(Visitor(group[0], more=tuple(group[1:])))
            group = []
        group.append(path)
    if group:
        visitors.append(Visitor(group[0], more=tuple(group[1:])))
    return visitors


@dataclass(frozen=True)
class Pace:
    """How a calm site looks: visitors ``gap_s`` apart (each gap drawn from ``gap_s`` times 1 plus or
    minus ``jitter``), a share of strangers, and never two strangers within ``stranger_gap_s``
    (so at most two in any minute: the repeated unknown faces alarm wants three)."""

    gap_s: float = 8.0
    jitter: float = 0.5
    stranger_share: float = 0.15
    stranger_gap_s: float = 45.0


def visitor_schedule(
    regulars: Sequence[Path], strangers: Sequence[Path], *, pace: Pace, rng: random.Random | None = None
) -> Iterator[Visitor]:
    """Endless visitors: mostly ``regulars`` (enrolled people), sometimes ``strangers``, paced."""
    if not regulars and not strangers:
        raise ValueError("no photos to play")
    rng = rng or random.Random()
    since_stranger = math.inf
    while True:
        delay = pace.gap_s * rng.uniform(1 - pace.jitter, 1 + pace.jitter)
        if not regulars:  # strangers only: each waits until the last one is far enough back
            delay = max(delay, pace.stranger_gap_s - since_stranger)
        since_stranger += delay
        stranger = bool(strangers) and since_stranger >= pace.stranger_gap_s
        stranger = stranger and (not regulars or rng.random() < pace.stranger_share)
        if stranger:
            since_stranger = 0.0
        yield Visitor(rng.choice(strangers if stranger else regulars), delay_s=delay, stranger=stranger)


def visitors_split(images: Sequence[Path], regulars: Iterable[str]) -> tuple[list[Path], list[Path]]:
    """Photos of the ``regulars`` (LFW folder names, e.g. ``Colin_Powell``) and of everyone else."""
    names = set(regulars)
    known = [path for path in images if path.parent.name in names]
    return known, [path for path in images if path.parent.name not in names]


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
    visitors: Iterable[Path | Visitor],
    *,
    wait_s: float = 10.0,
    connect_timeout_s: float = 15.0,
    out: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Run the visitors through ``agent`` (its link must not be started yet) until they end or
    ``stop`` is set; returns counts. A :class:`Visitor` arrives ``delay_s`` after the previous one
    arrived (waiting on ``stop``, so a stop request ends the wait at once)."""
    from PIL import Image

    stop = stop or threading.Event()
    waiter = DecisionWaiter()
    agent.command_listeners.append(waiter)
    agent.start()
    counts = {"visitors": 0, "no_face": 0, "decided": 0, "bytes": 0}
    total = len(visitors) if isinstance(visitors, Sequence) else None
    d = agent.config.detection
    try:
        if not agent.link.wait_connected(connect_timeout_s):
            out(f"not connected to {agent.config.mqtt.url} after {connect_timeout_s:.0f}s: detections stay spooled")
        arrived = time.monotonic()
        for n, item in enumerate(visitors, 1):
            visitor = item if isinstance(item, Visitor) else Visitor(item)
            if stop.wait(max(0.0, arrived + visitor.delay_s - time.monotonic())):
                break
            arrived = time.monotonic()
            label = f"visitor {n}/{total}" if total is not None else f"visitor {n}"
            path = visitor.photo
            tally = FilterTally()
            faces = []  # the largest face of each photo of the visitor
            for photo in (visitor.photo, *visitor.more):
                with Image.open(photo) as img:
                    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
                candidates = prepare(
                    rgb, detector.detect(rgb), min_face_px=d.min_face_px, min_score=d.min_detector_score, tally=tally
                )
                if candidates:
                    faces.append((max(candidates, key=lambda c: c.face.size), rgb))
            counts["visitors"] += 1
            if not faces:
                counts["no_face"] += 1
                why = tally.why_none(min_face_px=d.min_face_px, min_score=d.min_detector_score)
                out(f"{label} {path.name}: no usable face ({why})")
                continue
            faces.sort(key=lambda found: -found[0].rank)  # the agent sends a track's best face first
            (best,) = agent.score_liveness(faces[0][1], [faces[0][0]])
            liveness = agent.fuse_liveness([best.liveness] if best.liveness is not None else [])
            started = time.monotonic()
            detection, size = agent.send_candidate(
                best,
                captured_at=time.time(),
                extra_quality={"frames": float(len(faces))},
                liveness=liveness,
                others=[candidate for candidate, _ in faces[1:]],
            )
            counts["bytes"] += size
            command = waiter.wait(detection.detection_id, wait_s)
            if command is None:
                out(f"{label} {path.name}: no decision within {wait_s:.0f}s, {size} bytes sent")
                continue
            counts["decided"] += 1
            latency_ms = (time.monotonic() - started) * 1000
            out(
                f"{label} {path.name}: {command.command} ({command.reason})"
                f" pulse {command.pulse_ms} ms, {size} bytes sent, decision after {latency_ms:.0f} ms"
            )
        sent = counts["visitors"] - counts["no_face"]
        if sent:
            out(f"{sent} detection(s), {counts['bytes'] / sent:.0f} bytes per detection ({d.mode} mode)")
        agent.link.wait_drained(5.0)
    finally:
        agent.stop()
    return counts


def _liveness_text(detection: Detection) -> str:
    if detection.liveness is None:
        return "liveness not measured"
    return f"liveness {detection.liveness:.4f} over {detection.liveness_frames} frame(s)"


def simulate_frames(
    agent: EdgeAgent,
    folders: Sequence[Path],
    *,
    max_fps: float = 0.0,
    limit: int | None = None,
    wait_s: float = 10.0,
    connect_timeout_s: float = 15.0,
    out: Callable[[str], None] = print,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Play each folder of frames (name order, the first ``limit``) as one visitor through the
    agent's per-frame pipeline (``agent.detector`` must be set, its link not started); when a
    folder ends the visitor leaves (its track is emitted). Then wait up to ``wait_s`` for each
    detection's decision (0: do not wait). Returns counts."""
    assert agent.detector is not None, "simulate_frames needs the agent's detector"
    stop = stop or threading.Event()
    waiter = DecisionWaiter()
    agent.command_listeners.append(waiter)
    agent.start()
    counts = {"visitors": 0, "frames": 0, "detections": 0, "decided": 0}
    try:
        if not agent.link.wait_connected(connect_timeout_s):
            out(f"not connected to {agent.config.mqtt.url} after {connect_timeout_s:.0f}s: detections stay spooled")
        for n, folder in enumerate(folders, 1):
            if stop.is_set():
                break
            label = f"visitor {n}/{len(folders)} {folder}"
            camera = FolderSource(folder, max_fps=max_fps, limit=limit)
            detections: list[Detection] = []
            for frame in camera.frames():
                if stop.is_set():
                    camera.close()
                    break
                counts["frames"] += 1
                detections += agent.handle_frame(frame)
            detections += agent.end_tracks()  # the visitor left the view
            counts["visitors"] += 1
            if not detections:
                out(f"{label}: no usable face in {len(camera.paths)} frame(s)")
            for detection in detections:
                counts["detections"] += 1
                command = waiter.wait(detection.detection_id, wait_s) if wait_s > 0 else None
                decided = "no decision" if command is None else f"{command.command} ({command.reason})"
                counts["decided"] += command is not None
                out(f"{label}: detection {detection.detection_id}, {_liveness_text(detection)}: {decided}")
        agent.link.wait_drained(5.0)
    finally:
        agent.stop()
    return counts
