"""Quality assessment of detected faces (enrolment feedback, and ``low_quality`` denials).

Per face: too small, low detector score, extreme pose (yaw/pitch estimated from the five
landmarks), blurred (variance of the Laplacian of the ArcFace-aligned grey 112x112 crop).
Per image: no face, several faces. Thresholds are module constants and keyword arguments.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from faceengine.alignment import ARCFACE_TEMPLATE_112, align_arcface, to_grey
from faceengine.detector import DetectedFace
from faceengine.protocol import MIN_FACE_PX

#: shorter side of the detector box, in pixels (the one rule shared with the edge agents)
MIN_FACE_SIZE_PX = float(MIN_FACE_PX)
#: MTCNN probability
MIN_DETECTOR_SCORE = 0.90
#: variance of the Laplacian on the aligned grey 112x112 crop; ~1st percentile of LFW (median 130)
MIN_BLUR_VARIANCE = 25.0
MAX_ABS_YAW_DEG = 45.0
MAX_ABS_PITCH_DEG = 35.0
#: an extra face counts as "another person in the picture" when its box area is at least this
#: fraction of the largest face's (smaller faces are background)
MULTIPLE_FACE_AREA_RATIO = 0.25

# Nose height between the eye line and the mouth line on the frontal ArcFace template.
_FRONTAL_NOSE_RATIO = float(
    (ARCFACE_TEMPLATE_112[2, 1] - ARCFACE_TEMPLATE_112[:2, 1].mean())
    / (ARCFACE_TEMPLATE_112[3:, 1].mean() - ARCFACE_TEMPLATE_112[:2, 1].mean())
)


class QualityReason(StrEnum):
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    TOO_SMALL = "too_small"
    BLURRED = "blurred"
    EXTREME_POSE = "extreme_pose"
    LOW_SCORE = "low_score"


_MESSAGES = {
    QualityReason.NO_FACE: "No face was found in the picture.",
    QualityReason.MULTIPLE_FACES: "Several faces are visible; use a picture of one person only.",
    QualityReason.TOO_SMALL: "The face is too small ({face_size:.0f} px, need {min_face_size:.0f} px); "
    "move closer or use a larger picture.",
    QualityReason.BLURRED: "The face is blurred (sharpness {blur:.0f}, need {min_blur:.0f}).",
    QualityReason.EXTREME_POSE: "The head is turned too far (yaw {yaw:.0f}°, pitch {pitch:.0f}°); look at the camera.",
    QualityReason.LOW_SCORE: "The face is not clearly visible (detector confidence {score:.2f}).",
}


@dataclass(frozen=True)
class QualityThresholds:
    min_face_size: float = MIN_FACE_SIZE_PX
    min_score: float = MIN_DETECTOR_SCORE
    min_blur: float = MIN_BLUR_VARIANCE
    max_yaw: float = MAX_ABS_YAW_DEG
    max_pitch: float = MAX_ABS_PITCH_DEG
    multiple_face_area_ratio: float = MULTIPLE_FACE_AREA_RATIO


@dataclass(frozen=True)
class QualityVerdict:
    """Outcome of a quality check. ``reason`` is the first failed check (None when ok);
    ``reasons`` lists every failed check; ``metrics`` holds the measured values."""

    ok: bool
    reason: QualityReason | None = None
    reasons: tuple[QualityReason, ...] = ()
    message: str = "ok"
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadPose:
    yaw: float
    pitch: float
    roll: float


def estimate_pose(landmarks: np.ndarray) -> HeadPose:
    """Rough head pose in degrees from MTCNN's five landmarks.

    Roll is the angle of the eye line. After undoing roll, yaw comes from the horizontal offset of
    the nose from the eye midpoint relative to half the inter-ocular distance (the nose tip sits
    about that far in front of the eye plane, so ``yaw ~ atan(offset / (iod / 2))``), and pitch
    from how far the nose sits between the eye line and the mouth line compared with a frontal
    face. Signs: positive yaw = nose towards the image right; positive pitch = nose lower (looking
    down). Accurate to ~10-15°, enough to reject profiles and strong tilts.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eye_l, eye_r = pts[0], pts[1]
    dx, dy = eye_r - eye_l
    roll = math.degrees(math.atan2(dy, dx))
    c, s = math.cos(-math.radians(roll)), math.sin(-math.radians(roll))
    rot = np.array([[c, -s], [s, c]])
    p = (pts - pts[:2].mean(axis=0)) @ rot.T  # eye midpoint at origin, eye line horizontal
    iod = float(np.hypot(dx, dy))
    if iod < 1e-6:
        return HeadPose(yaw=90.0, pitch=0.0, roll=roll)
    yaw = math.degrees(math.atan2(p[2, 0], iod / 2.0))
    eye_to_mouth = float(p[3:, 1].mean())
    if eye_to_mouth <= 1e-6:
        return HeadPose(yaw=yaw, pitch=90.0, roll=roll)
    ratio = float(p[2, 1]) / eye_to_mouth
    pitch = math.degrees(math.atan2(2.0 * (ratio - _FRONTAL_NOSE_RATIO), 1.0))
    return HeadPose(yaw=yaw, pitch=pitch, roll=roll)


def laplacian_variance(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian (valid region) of a 2-D grey image."""
    g = np.asarray(grey, dtype=np.float64)
    if g.ndim != 2 or min(g.shape) < 3:
        raise ValueError(f"expected a 2-D image of at least 3x3, got {g.shape}")
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def probe_quality(*, face_px: float, score: float, crop: np.ndarray, landmarks: np.ndarray | None) -> dict[str, float]:
    """What a door says about one face it sends (the detection's ``quality``): face_px, detector
    score, sharpness (Laplacian variance of the grey aligned crop), yaw/pitch and frontal (0..1)."""
    quality = {"face_px": float(face_px), "score": float(score), "sharpness": laplacian_variance(to_grey(crop))}
    if landmarks is not None:
        pose = estimate_pose(landmarks)
        quality.update(yaw=pose.yaw, pitch=pose.pitch)
        quality["frontal"] = max(0.0, 1.0 - max(abs(pose.yaw) / 60.0, abs(pose.pitch) / 45.0))
    return {k: round(v, 4) for k, v in quality.items() if math.isfinite(v)}


def quality_rank(quality: Mapping[str, float]) -> float:
    """One number from :func:`probe_quality`'s metrics: bigger, sharper, more frontal, more certain
    is higher (0 .. ~1.6). The door ranks a track's frames by it (its best K are sent) and the
    server weighs fused probes by it."""
    size = min(quality.get("face_px", 0.0), 160.0) / 160.0
    sharp = quality.get("sharpness", 0.0)
    sharp_term = sharp / (sharp + 50.0) if sharp > 0 else 0.0
    frontal = quality.get("frontal", 0.5)
    return max(0.0, quality.get("score", 1.0)) * size * (0.25 + sharp_term) * (0.25 + frontal)


def blur_score(image: np.ndarray, face: DetectedFace, aligned: np.ndarray | None = None) -> float:
    """Sharpness of a face: Laplacian variance of its aligned grey 112x112 crop."""
    crop = aligned if aligned is not None else align_arcface(image, face.landmarks)
    return laplacian_variance(to_grey(crop))


def _message(reason: QualityReason, metrics: dict[str, float], th: QualityThresholds) -> str:
    values = {
        "min_face_size": th.min_face_size,
        "min_blur": th.min_blur,
        "face_size": metrics.get("face_size", 0.0),
        "blur": metrics.get("blur", 0.0),
        "yaw": metrics.get("yaw", 0.0),
        "pitch": metrics.get("pitch", 0.0),
        "score": metrics.get("score", 0.0),
    }
    return _MESSAGES[reason].format(**values)


def assess_face(
    image: np.ndarray,
    face: DetectedFace,
    *,
    thresholds: QualityThresholds | None = None,
    aligned: np.ndarray | None = None,
) -> QualityVerdict:
    """Check one detected face. ``image`` is the RGB uint8 array the face was detected in;
    pass ``aligned`` (its ArcFace 112 crop) when already computed."""
    th = thresholds or QualityThresholds()
    pose = estimate_pose(face.landmarks)
    metrics = {
        "face_size": face.size,
        "score": face.score,
        "yaw": pose.yaw,
        "pitch": pose.pitch,
        "roll": pose.roll,
        "blur": blur_score(image, face, aligned),
    }
    failed: list[QualityReason] = []
    if face.score < th.min_score:
        failed.append(QualityReason.LOW_SCORE)
    if face.size < th.min_face_size:
        failed.append(QualityReason.TOO_SMALL)
    if abs(pose.yaw) > th.max_yaw or abs(pose.pitch) > th.max_pitch:
        failed.append(QualityReason.EXTREME_POSE)
    if metrics["blur"] < th.min_blur:
        failed.append(QualityReason.BLURRED)
    if not failed:
        return QualityVerdict(ok=True, metrics=metrics)
    return QualityVerdict(
        ok=False,
        reason=failed[0],
        reasons=tuple(failed),
        message=_message(failed[0], metrics, th),
        metrics=metrics,
    )


def significant_faces(faces: list[DetectedFace], *, area_ratio: float = MULTIPLE_FACE_AREA_RATIO) -> list[DetectedFace]:
    """Faces whose box area is at least ``area_ratio`` of the largest, largest first."""
    if not faces:
        return []
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    largest = ordered[0].area
    return [f for f in ordered if f.area >= area_ratio * largest]


def assess_image(
    image: np.ndarray,
    faces: list[DetectedFace],
    *,
    thresholds: QualityThresholds | None = None,
    allow_multiple: bool = False,
) -> QualityVerdict:
    """Whole-picture check (enrolment): exactly one significant face, and that face passes
    :func:`assess_face`. With ``allow_multiple`` the largest face is assessed alone."""
    th = thresholds or QualityThresholds()
    significant = significant_faces(faces, area_ratio=th.multiple_face_area_ratio)
    counts = {"face_count": float(len(faces)), "significant_face_count": float(len(significant))}
    if not significant:
        return QualityVerdict(
            ok=False,
            reason=QualityReason.NO_FACE,
            reasons=(QualityReason.NO_FACE,),
            message=_MESSAGES[QualityReason.NO_FACE],
            metrics=counts,
        )
    if len(significant) > 1 and not allow_multiple:
        return QualityVerdict(
            ok=False,
            reason=QualityReason.MULTIPLE_FACES,
            reasons=(QualityReason.MULTIPLE_FACES,),
            message=_MESSAGES[QualityReason.MULTIPLE_FACES],
            metrics=counts,
        )
    verdict = assess_face(image, significant[0], thresholds=th)
    return QualityVerdict(
        ok=verdict.ok,
        reason=verdict.reason,
        reasons=verdict.reasons,
        message=verdict.message,
        metrics={**counts, **verdict.metrics},
    )
