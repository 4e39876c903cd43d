"""The agent's view of the face engine: detect faces, cut the crop that leaves the device, score it.

The rest of the agent only sees :class:`Face`, :class:`FaceDetector` and :class:`FaceCandidate`,
so it can be tested with a fake detector. The real implementations use the Django-free face
engine the server uses too (``faceengine.detector``, ``faceengine.alignment``,
``faceengine.quality``, ``faceengine.registry``; torch loads only with the first model); nothing
from the server apps.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from faceengine.alignment import align_arcface, crop_facenet
from faceengine.detector import FaceDetector as EngineDetector
from faceengine.protocol import MIN_FACE_PX
from faceengine.quality import probe_quality, quality_rank
from faceengine.registry import get_embedder

logger = logging.getLogger(__name__)

CROP_SIZE = 112


@dataclass(frozen=True)
class Face:
    """A detected face in frame pixels: box (x1, y1, x2, y2), detector score, 5 landmarks or None."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def size(self) -> float:
        """Shorter side of the box in pixels."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]: ...


@dataclass(frozen=True)
class FaceCandidate:
    """A face prepared for sending: the aligned crop, its quality metrics and the frame it came from
    (and its live score in that frame, when liveness is on and the scorer answered)."""

    face: Face
    crop: np.ndarray
    quality: dict[str, float]
    frame: np.ndarray
    liveness: float | None = None

    @property
    def rank(self) -> float:
        return quality_rank(self.quality)


class MtcnnDetector:
    """:class:`FaceDetector` over ``faceengine.detector`` (MTCNN, torch, lazily loaded)."""

    def __init__(self, *, min_face_px: int = MIN_FACE_PX, threads: int | None = 2) -> None:
        # MTCNN's pyramid starts at min_face_size: smaller faces cost time and are dropped anyway
        self._detector = EngineDetector(min_face_size=detector_min_face_px(min_face_px), num_threads=threads)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return [
            Face(box=tuple(float(v) for v in f.box), score=float(f.score), landmarks=f.landmarks)  # type: ignore[arg-type]
            for f in self._detector.detect(rgb)
        ]


class YunetDetector:
    """:class:`FaceDetector` over ``faceengine.yunet`` (YuNet, onnxruntime, loaded at construction):
    ~8x cheaper than MTCNN on a 640x480 frame, the same five landmarks (``bench/edge_fps.py``)."""

    def __init__(self, *, min_face_px: int = MIN_FACE_PX, threads: int | None = 2) -> None:
        from faceengine.yunet import YunetDetector as EngineYunet
        from faceengine.yunet import get_session

        # YuNet sees every face from ~10 px in one pass: no pyramid to trim, only the size filter
        self._detector = EngineYunet(min_face_size=detector_min_face_px(min_face_px), num_threads=threads)
        get_session(num_threads=threads)  # at start: a missing or altered model file fails here, loudly

    def detect(self, rgb: np.ndarray) -> list[Face]:
        return [
            Face(box=tuple(float(v) for v in f.box), score=float(f.score), landmarks=f.landmarks)  # type: ignore[arg-type]
            for f in self._detector.detect(rgb)
        ]


DETECTORS = ("yunet", "mtcnn")


def detector_build(name: str, *, min_face_px: int = MIN_FACE_PX, threads: int | None = 2) -> FaceDetector:
    """The agent's detector by its ``[detection] detector`` name: ``yunet`` or ``mtcnn``."""
    if name == "yunet":
        return YunetDetector(min_face_px=min_face_px, threads=threads)
    if name == "mtcnn":
        return MtcnnDetector(min_face_px=min_face_px, threads=threads)
    raise ValueError(f"unknown detector {name!r} (expected one of {DETECTORS})")


def align_crop(rgb: np.ndarray, face: Face, size: int = CROP_SIZE) -> np.ndarray:
    """ArcFace 5-point aligned ``size`` x ``size`` RGB crop (box crop when there are no landmarks)."""
    if face.landmarks is not None:
        return align_arcface(rgb, np.asarray(face.landmarks, dtype=np.float64), size)
    return box_crop(rgb, face, size)


def box_crop(rgb: np.ndarray, face: Face, size: int) -> np.ndarray:
    from PIL import Image

    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = face.box
    x1, y1, x2, y2 = max(0, int(x1)), max(0, int(y1)), min(w, math.ceil(x2)), min(h, math.ceil(y2))
    crop = Image.fromarray(np.ascontiguousarray(rgb[y1:y2, x1:x2])).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)


def measure_quality(face: Face, crop: np.ndarray) -> dict[str, float]:
    """face_px, score, sharpness, yaw/pitch and frontal (:func:`faceengine.quality.probe_quality`)."""
    return probe_quality(face_px=face.size, score=face.score, crop=crop, landmarks=face.landmarks)


@dataclass
class FilterTally:
    """What the filters of :func:`prepare` did to the faces of some frames (see :class:`FilterWatch`)."""

    frames: int = 0
    faces: int = 0
    passed: int = 0
    too_small: int = 0
    low_score: int = 0
    largest_small_px: float = 0.0  # the largest face dropped as too small
    best_low_score: float = 0.0  # the best detector score dropped as too low

    def add(self, other: FilterTally) -> None:
        self.frames += other.frames
        self.faces += other.faces
        self.passed += other.passed
        self.too_small += other.too_small
        self.low_score += other.low_score
        self.largest_small_px = max(self.largest_small_px, other.largest_small_px)
        self.best_low_score = max(self.best_low_score, other.best_low_score)

    def why_none(self, *, min_face_px: float, min_score: float) -> str:
        """Why no face passed, naming the filter (config key) and the counts."""
        if not self.faces:
            return (
                f"no face detected in {self.frames} frame(s) (the detector looks for faces from about "
                f"{detector_min_face_px(min_face_px)} px, see [detection] min_face_px = {min_face_px:g}; is the "
                "camera pointed at the door, lit and in focus?)"
            )
        reasons = []
        if self.too_small:
            reasons.append(
                f"{self.too_small} smaller than [detection] min_face_px = {min_face_px:g} "
                f"(largest {self.largest_small_px:.0f} px)"
            )
        if self.low_score:
            reasons.append(
                f"{self.low_score} below [detection] min_detector_score = {min_score:g} "
                f"(best {self.best_low_score:.2f})"
            )
        return f"{self.faces} face(s) in {self.frames} frame(s), none passed the filters: " + "; ".join(reasons)


def detector_min_face_px(min_face_px: float) -> int:
    """The smallest face the detectors look for, given the configured ``min_face_px`` (a margin
    below it, so that the filter of :func:`prepare` names the faces it drops)."""
    return max(20, int(min_face_px * 0.8))


def prepare(
    rgb: np.ndarray,
    faces: Sequence[Face],
    *,
    min_face_px: float,
    min_score: float,
    tally: FilterTally | None = None,
) -> list[FaceCandidate]:
    """Filter faces by size and score and cut + score a crop for each (counted into ``tally``)."""
    out = []
    tally = tally if tally is not None else FilterTally()
    tally.frames += 1
    for face in faces:
        tally.faces += 1
        if face.size < min_face_px:
            tally.too_small += 1
            tally.largest_small_px = max(tally.largest_small_px, float(face.size))
            continue
        if face.score < min_score:
            tally.low_score += 1
            tally.best_low_score = max(tally.best_low_score, float(face.score))
            continue
        crop = align_crop(rgb, face)
        out.append(FaceCandidate(face=face, crop=crop, quality=measure_quality(face, crop), frame=rgb))
        tally.passed += 1
    return out


class FilterWatch:
    """Warns when frames arrive but no face passes the filters: once per ``every_s`` seconds of
    frames (by their timestamps), naming the filter and the counts; :meth:`finish` sums up the run.

    An agent that sends nothing looks the same as a quiet door from the server; this says why.
    """

    def __init__(self, *, min_face_px: float, min_score: float, every_s: float = 30.0) -> None:
        self.min_face_px = min_face_px
        self.min_score = min_score
        self.every_s = every_s
        self.tally = FilterTally()  # the current window: pass it to prepare()
        self.total = FilterTally()
        self.warnings = 0
        self._window_start: float | None = None

    def frame_done(self, ts: float) -> None:
        """Call after each frame's :func:`prepare` (``ts``: the frame's capture time)."""
        if self._window_start is None:
            self._window_start = ts
        if ts - self._window_start < self.every_s:
            return
        window, self.tally = self.tally, FilterTally()
        self._window_start = ts
        self.total.add(window)
        if window.frames and not window.passed:
            self.warnings += 1
            logger.warning(
                "no face sent in the last %.0f s: %s",
                self.every_s,
                window.why_none(min_face_px=self.min_face_px, min_score=self.min_score),
            )

    def finish(self) -> FilterTally:
        """The camera ended: warn if no face ever passed; returns the totals."""
        self.total.add(self.tally)
        self.tally = FilterTally()
        if self.total.frames and not self.total.passed:
            self.warnings += 1
            logger.warning(
                "camera ended after %d frame(s) and no face was sent: %s",
                self.total.frames,
                self.total.why_none(min_face_px=self.min_face_px, min_score=self.min_score),
            )
        return self.total


def encode_jpeg(crop: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class LocalEmbedder:
    """Privacy mode: embed on the device with ``faceengine.registry.get_embedder(name)``."""

    def __init__(
        self,
        name: str,
        *,
        threads: int | None = None,
        options: dict[str, Any] | None = None,
        model_version: str | None = None,
    ) -> None:
        # ``threads``: the model's intra-op threads (the device budget; None: the runtime's default);
        # ``options``: the backend's (a model bundle's file); ``model_version``: the registry's name
        # of the version (a bundle's manifest), which detections carry
        kwargs = {**(options or {}), **({"num_threads": threads} if threads else {})}
        self._embedder: Any = get_embedder(name, **kwargs)
        self.model_version: str = model_version or self._embedder.model_version
        self.input_kind = str(self._embedder.input_kind)

    def _input(self, candidate: FaceCandidate) -> np.ndarray:
        if self.input_kind == "facenet160":
            return crop_facenet(candidate.frame, np.asarray(candidate.face.box, dtype=np.float32))
        return candidate.crop

    def embed(self, candidate: FaceCandidate) -> np.ndarray:
        """Prepare the crop the model wants (ArcFace 112 or FaceNet 160) and return its vector."""
        return self._embedder.embed(self._input(candidate))[0]

    def embed_many(self, candidates: Sequence[FaceCandidate]) -> np.ndarray:
        """:meth:`embed` of several faces in one batch (one row each)."""
        return np.asarray(self._embedder.embed(np.stack([self._input(c) for c in candidates])))
