"""Fixtures shared by the recognition tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from faceengine.registry import DEFAULT_BACKEND


@pytest.fixture
def enrol_env(settings: pytest.FixtureRequest, media_root: Path) -> Path:
    # The shared LFW copy is 150x150 with faces of ~55 px (the production minimum is MIN_FACE_PX, 40 px too).
    settings.RECOGNITION_MIN_FACE_PX = 40  # type: ignore[attr-defined]
    settings.RECOGNITION_EMBEDDER = DEFAULT_BACKEND  # type: ignore[attr-defined]
    settings.RECOGNITION_DEFAULT_THRESHOLD = None  # type: ignore[attr-defined]
    return media_root
