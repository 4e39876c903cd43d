"""Alignment: Umeyama similarity, ArcFace warp, FaceNet crop (pure numpy/PIL, no models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faceengine.alignment import (
    ARCFACE_TEMPLATE_112,
    align_arcface,
    arcface_transform,
    crop_facenet,
    facenet_crop_box,
    umeyama,
    warp_affine,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array(
        [
            [scale * math.cos(a), -scale * math.sin(a), tx],
            [scale * math.sin(a), scale * math.cos(a), ty],
            [0.0, 0.0, 1.0],
        ]
    )


def _apply(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ t[:2, :2].T + t[:2, 2]


@pytest.mark.parametrize(("scale", "angle", "tx", "ty"), [(1.0, 0, 0, 0), (0.4, 17, 30, -5), (2.5, -80, -12, 44)])
def test_umeyama_recovers_similarity(scale: float, angle: float, tx: float, ty: float) -> None:
    t = _similarity(scale, angle, tx, ty)
    src = np.random.default_rng(1).uniform(0, 200, size=(5, 2))
    est = umeyama(src, _apply(t, src))
    np.testing.assert_allclose(est, t, atol=1e-9)


def test_umeyama_never_reflects() -> None:
    src = ARCFACE_TEMPLATE_112.copy()
    mirrored = src.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]
    est = umeyama(src, mirrored)
    assert np.linalg.det(est[:2, :2]) > 0


def test_align_identity_when_landmarks_are_the_template() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    out = align_arcface(img, ARCFACE_TEMPLATE_112)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img.astype(int)).max() <= 1


def test_warp_matches_opencv_convention() -> None:
    # a single bright pixel at integer (x, y) must land at M @ (x, y) (OpenCV convention)
    img = np.zeros((100, 100, 3), np.uint8)
    img[40, 30] = 255
    m = _similarity(1.0, 0, 7, -3)[:2]
    out = warp_affine(img, m, (100, 100))
    y, x = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    assert (x, y) == (37, 37)


def test_aligned_landmarks_land_on_template() -> None:
    t = _similarity(0.7, 12, 20, 35)
    lms = _apply(np.linalg.inv(t), ARCFACE_TEMPLATE_112)  # landmarks in a "photo"
    m = arcface_transform(lms)
    np.testing.assert_allclose(lms @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE_112, atol=1e-6)


def test_facenet_crop_box_margin_and_clamp() -> None:
    # a 146x146 box with margin 14 at size 160: 7 px of output margin = 7 px of source per side
    assert facenet_crop_box(np.array([50, 50, 196, 196]), 300, 300) == (43, 43, 203, 203)
    assert facenet_crop_box(np.array([-5, 2, 83, 90]), 85, 92) == (0, 0, 85, 92)


def test_crop_facenet_shape() -> None:
    img = np.full((150, 150, 3), 128, np.uint8)
    out = crop_facenet(img, np.array([50.0, 44.0, 100.0, 110.0]))
    assert out.shape == (160, 160, 3) and out.dtype == np.uint8
    with pytest.raises(ValueError, match="empty face box"):
        crop_facenet(img, np.array([200.0, 200.0, 210.0, 210.0]))
