"""Detections and embeddings of dataset images, computed once and cached per image (npz).

The evaluation (``recognition.evaluation``) reads datasets through these: reruns, and other
backends on the same photos, only redo what is missing. The cache lives under
``settings.VAR_DIR / "cache"`` unless a folder is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image

from accessctl.project.progress import progress_bar
from faceengine.detector import DetectedFace, detect_faces
from faceengine.embedder import Embedder
from faceengine.pipeline import crop_for

logger = logging.getLogger(__name__)


def cache_dir_default() -> Path:
    """Where cached detections and embeddings go when no folder is named: ``VAR_DIR/cache``."""
    return Path(settings.VAR_DIR) / "cache"


def _progress(iterable: Sequence[Any], *, desc: str, unit: str) -> Iterable[Any]:
    return progress_bar(iterable, desc=desc, unit=unit, total=len(iterable))  # a bar on a terminal only


def select_central_face(faces: Sequence[DetectedFace], width: int, height: int) -> DetectedFace:
    """Largest face near the centre (Sandberg's rule: box area - 2 x squared centre offset)."""
    cx, cy = width / 2.0, height / 2.0

    def key(f: DetectedFace) -> float:
        bx, by = (f.box[0] + f.box[2]) / 2.0, (f.box[1] + f.box[3]) / 2.0
        return f.area - 2.0 * ((bx - cx) ** 2 + (by - cy) ** 2)

    return max(faces, key=key)


@dataclass
class DetectionCache:
    """Chosen face per image (relative path): box (4,), score, landmarks (5, 2), faces found."""

    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> DetectionCache:
        cache = cls()
        if not path.is_file():
            return cache
        with np.load(path, allow_pickle=False) as data:  # read each array once (npz decompresses per access)
            paths, boxes, scores = data["paths"].tolist(), data["boxes"], data["scores"]
            landmarks, counts, sizes = data["landmarks"], data["counts"], data["sizes"]
        for i, key in enumerate(paths):
            cache.boxes[key] = boxes[i]
            cache.scores[key] = float(scores[i])
            cache.landmarks[key] = landmarks[i]
            cache.counts[key] = int(counts[i])
            cache.sizes[key] = (int(sizes[i][0]), int(sizes[i][1]))
        return cache

    def save(self, path: Path) -> None:
        keys = sorted(self.counts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            paths=np.array(keys),
            boxes=np.array([self.boxes[k] for k in keys], dtype=np.float32).reshape(-1, 4),
            scores=np.array([self.scores[k] for k in keys], dtype=np.float32),
            landmarks=np.array([self.landmarks[k] for k in keys], dtype=np.float32).reshape(-1, 5, 2),
            counts=np.array([self.counts[k] for k in keys], dtype=np.int32),
            sizes=np.array([self.sizes[k] for k in keys], dtype=np.int32).reshape(-1, 2),
        )
        tmp.replace(path)

    def face(self, key: str) -> DetectedFace | None:
        if self.counts.get(key, 0) == 0:
            return None
        return DetectedFace(box=self.boxes[key], score=self.scores[key], landmarks=self.landmarks[key])

    def fallback_face(self, key: str) -> DetectedFace:
        """For an image without detection: the dataset-median face, scaled to its size."""
        found = [k for k, c in self.counts.items() if c > 0]
        if not found:
            raise ValueError("no detections at all to derive a fallback face from")
        wh = np.array([self.sizes[k] for k in found], dtype=np.float64)
        rel_boxes = np.array([self.boxes[k] for k in found]) / np.tile(wh, 2)
        rel_lms = np.array([self.landmarks[k] for k in found]) / wh[:, None, :]
        w, h = self.sizes[key]
        box = np.median(rel_boxes, axis=0) * np.array([w, h, w, h])
        lms = np.median(rel_lms, axis=0) * np.array([w, h])
        return DetectedFace(box=box.astype(np.float32), score=0.0, landmarks=lms.astype(np.float32))


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def detect_images(
    root: str | Path,
    relpaths: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    cache_name: str = "detections",
    save_every: int = 1000,
) -> DetectionCache:
    """MTCNN on each image (skipping cached ones); keeps the central face per image."""
    root = Path(root)
    cache_path = Path(cache_dir or cache_dir_default()) / f"{cache_name}.npz"
    cache = DetectionCache.load(cache_path)
    todo = [p for p in dict.fromkeys(relpaths) if p not in cache.counts]
    if todo:
        logger.info("detecting faces in %d images (%d cached)", len(todo), len(cache.counts))
    for i, rel in enumerate(_progress(todo, desc="detect faces", unit="img")):
        rgb = load_rgb(root / rel)
        h, w = rgb.shape[:2]
        faces = detect_faces(rgb)
        cache.sizes[rel] = (w, h)
        cache.counts[rel] = len(faces)
        if faces:
            face = select_central_face(faces, w, h)
            cache.boxes[rel], cache.scores[rel], cache.landmarks[rel] = face.box, face.score, face.landmarks
        else:
            cache.boxes[rel] = np.zeros(4, np.float32)
            cache.scores[rel] = 0.0
            cache.landmarks[rel] = np.zeros((5, 2), np.float32)
        if (i + 1) % save_every == 0:
            cache.save(cache_path)
    if todo:
        cache.save(cache_path)
    return cache


def embed_images(
    root: str | Path,
    relpaths: Sequence[str],
    embedder: Embedder,
    *,
    detections: DetectionCache,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    save_every: int = 2000,
) -> dict[str, np.ndarray]:
    """Embedding per image (the central face; dataset-median fallback when none was detected),
    cached in ``<cache_dir>/embeddings-<model_version>.npz``."""
    root = Path(root)
    cache_path = Path(cache_dir or cache_dir_default()) / f"embeddings-{embedder.model_version}.npz"
    out: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        data = np.load(cache_path, allow_pickle=False)
        out = dict(zip(data["paths"].tolist(), data["embeddings"], strict=True))

    def save() -> None:
        keys = sorted(out)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, paths=np.array(keys), embeddings=np.stack([out[k] for k in keys]))
        tmp.replace(cache_path)

    todo = [p for p in dict.fromkeys(relpaths) if p not in out]
    if todo:
        logger.info("embedding %d images with %s (%d cached)", len(todo), embedder.model_version, len(out))
    done_since_save = 0
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in _progress(batches, desc=f"embed {embedder.name}", unit="batch"):
        crops = []
        for rel in batch:
            face = detections.face(rel) or detections.fallback_face(rel)
            crops.append(crop_for(load_rgb(root / rel), face, embedder.input_kind))
        for rel, vec in zip(batch, embedder.embed(np.stack(crops)), strict=True):
            out[rel] = vec
        done_since_save += len(batch)
        if done_since_save >= save_every:
            save()
            done_since_save = 0
    if todo:
        save()
    return {p: out[p] for p in relpaths}
