"""Quality checks on synthetic landmarks and on real face photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from faceengine.alignment import ARCFACE_TEMPLATE_112
from faceengine.detector import DetectedFace
from faceengine.quality import (
    QualityReason,
    QualityThresholds,
    assess_face,
    assess_image,
    estimate_pose,
    laplacian_variance,
)
from tests.faces import LFW_DIR

LFW_IMAGES = LFW_DIR


def _photo() -> tuple[np.ndarray, DetectedFace]:
    """A real face photo with hand-checked MTCNN-like landmarks (no detector needed)."""
    if (LFW_IMAGES / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg").is_file():
        img = np.asarray(Image.open(LFW_IMAGES / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg").convert("RGB"))
        box = np.array([49.7, 43.8, 100.3, 110.8], np.float32)
        lms = np.array([[63.8, 68.8], [87.3, 68.3], [76.6, 84.3], [65.1, 92.4], [89.2, 91.5]], np.float32)
    else:
        skimage_data = pytest.importorskip("skimage.data")
        img = skimage_data.astronaut()
        box = np.array([181.1, 62.2, 267.7, 172.1], np.float32)
        lms = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]], np.float32)
    return img, DetectedFace(box=box, score=0.9999, landmarks=lms)


def test_frontal_template_pose_is_zero() -> None:
    pose = estimate_pose(ARCFACE_TEMPLATE_112)
    assert abs(pose.yaw) < 3 and abs(pose.pitch) < 1 and abs(pose.roll) < 1


def test_pose_roll_and_yaw_signs() -> None:
    a = np.radians(30)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    rolled = (ARCFACE_TEMPLATE_112 - 56) @ rot.T + 56
    pose = estimate_pose(rolled)
    assert pose.roll == pytest.approx(30, abs=1) and abs(pose.yaw) < 3
    turned = ARCFACE_TEMPLATE_112.copy()
    turned[2, 0] += 25  # nose far to the image right
    assert estimate_pose(turned).yaw > 45
    down = ARCFACE_TEMPLATE_112.copy()
    down[2, 1] += 15
    assert estimate_pose(down).pitch > 35


def test_laplacian_variance() -> None:
    flat = np.full((50, 50), 100.0)
    noise = np.random.default_rng(0).uniform(0, 255, (50, 50))
    assert laplacian_variance(flat) == 0.0
    assert laplacian_variance(noise) > 1000


def test_real_face_passes() -> None:
    img, face = _photo()
    verdict = assess_face(img, face)
    assert verdict.ok, verdict.message
    assert verdict.reason is None and verdict.metrics["blur"] > 25


def test_blurred_face_fails() -> None:
    img, face = _photo()
    blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(4)))
    verdict = assess_face(blurred, face)
    assert not verdict.ok and verdict.reason is QualityReason.BLURRED
    assert verdict.metrics["blur"] < assess_face(img, face).metrics["blur"]
    assert "blurred" in verdict.message


def test_small_low_score_and_pose() -> None:
    img, face = _photo()
    assert assess_face(img, face, thresholds=QualityThresholds(min_face_size=200)).reason is QualityReason.TOO_SMALL
    low = DetectedFace(box=face.box, score=0.5, landmarks=face.landmarks)
    verdict = assess_face(img, low)
    assert verdict.reason is QualityReason.LOW_SCORE and verdict.reasons[0] == "low_score"
    lms = face.landmarks.copy()
    lms[2, 0] += 0.9 * (lms[1, 0] - lms[0, 0])  # nose beyond the right eye: a profile
    assert QualityReason.EXTREME_POSE in assess_face(img, DetectedFace(face.box, face.score, lms)).reasons


def test_image_level_checks() -> None:
    img, face = _photo()
    assert assess_image(img, []).reason is QualityReason.NO_FACE
    other = DetectedFace(box=face.box + 3, score=0.99, landmarks=face.landmarks + 3)
    assert assess_image(img, [face, other]).reason is QualityReason.MULTIPLE_FACES
    assert assess_image(img, [face, other], allow_multiple=True).ok
    tiny = DetectedFace(box=np.array([0, 0, 8, 8], np.float32), score=0.95, landmarks=face.landmarks / 10)
    verdict = assess_image(img, [face, tiny])  # background face far smaller: ignored
    assert verdict.ok and verdict.metrics["face_count"] == 2
    assert QualityReason.MULTIPLE_FACES == "multiple_faces"
