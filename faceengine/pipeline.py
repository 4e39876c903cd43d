"""Image -> faces -> crops (-> embeddings): the glue used by enrolment, recognition and evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from faceengine.alignment import align_arcface, crop_facenet
from faceengine.detector import DetectedFace, detect_faces, to_rgb_array
from faceengine.embedder import Embedder, InputKind
from faceengine.quality import QualityThresholds, QualityVerdict, assess_face
from faceengine.registry import get_embedder

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceSample:
    """A detected face with its embedder-ready crop and its quality verdict."""

    face: DetectedFace
    crop: np.ndarray  # (S, S, 3) uint8 RGB, prepared for ``input_kind``
    input_kind: InputKind
    quality: QualityVerdict
    aligned: np.ndarray  # ArcFace-aligned 112x112 crop (thumbnails, blur measure)


@dataclass(frozen=True)
class EmbeddedFace:
    sample: FaceSample
    embedding: np.ndarray  # (dim,) float32, unit norm
    model_version: str


def crop_for(image: np.ndarray, face: DetectedFace, input_kind: InputKind | str) -> np.ndarray:
    """The crop an embedder of ``input_kind`` expects, from an RGB uint8 image."""
    kind = InputKind(input_kind)
    if kind is InputKind.ARCFACE112:
        return align_arcface(image, face.landmarks)
    return crop_facenet(image, face.box)


def faces_from_image(
    image: Image.Image | np.ndarray,
    *,
    input_kind: InputKind | str = InputKind.ARCFACE112,
    thresholds: QualityThresholds | None = None,
    faces: list[DetectedFace] | None = None,
    max_faces: int | None = None,
    min_face_size: int | None = None,
) -> list[FaceSample]:
    """Detect (unless ``faces`` are given), assess and crop every face, largest first."""
    rgb = to_rgb_array(image)
    if faces is None:
        kwargs = {"min_face_size": min_face_size} if min_face_size else {}
        faces = detect_faces(rgb, **kwargs)
    ordered = sorted(faces, key=lambda f: f.area, reverse=True)
    if max_faces is not None:
        ordered = ordered[:max_faces]
    kind = InputKind(input_kind)
    samples = []
    for face in ordered:
        aligned = align_arcface(rgb, face.landmarks)
        crop = aligned if kind is InputKind.ARCFACE112 else crop_facenet(rgb, face.box)
        quality = assess_face(rgb, face, thresholds=thresholds, aligned=aligned)
        samples.append(FaceSample(face=face, crop=crop, input_kind=kind, quality=quality, aligned=aligned))
    return samples


def embed_image(
    image: Image.Image | np.ndarray,
    *,
    embedder: Embedder | None = None,
    thresholds: QualityThresholds | None = None,
    only_ok: bool = False,
    max_faces: int | None = None,
) -> list[EmbeddedFace]:
    """Detect, assess, crop and embed every face (largest first); ``only_ok`` drops the faces
    that fail the quality check."""
    emb = embedder or get_embedder()
    samples = faces_from_image(image, input_kind=emb.input_kind, thresholds=thresholds, max_faces=max_faces)
    if only_ok:
        samples = [s for s in samples if s.quality.ok]
    if not samples:
        return []
    vectors = emb.embed(np.stack([s.crop for s in samples]))
    return [
        EmbeddedFace(sample=s, embedding=v, model_version=emb.model_version)
        for s, v in zip(samples, vectors, strict=True)
    ]
