"""Face detection with MTCNN (facenet-pytorch; the P/R/O-Net weights ship inside its wheel).

torch and facenet_pytorch are imported lazily; the model is built once per process and shared
(module-level cache guarded by a lock). Use :func:`detect_faces` for one RGB image.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from faceengine.tv_shim import ensure_torchvision

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

#: MTCNN defaults (facenet-pytorch / the original paper).
DEFAULT_MIN_FACE_SIZE = 20
DEFAULT_THRESHOLDS = (0.6, 0.7, 0.7)
DEFAULT_FACTOR = 0.709


@dataclass(frozen=True)
class DetectedFace:
    """One detected face, in the coordinates of the input image.

    ``box``: float32 (4,) as (x1, y1, x2, y2); ``score``: detector probability;
    ``landmarks``: float32 (5, 2) as (x, y) for left eye, right eye, nose, left and right mouth
    corner (left/right as seen in the image).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Shorter side of the box, in pixels."""
        return min(self.width, self.height)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Return ``image`` as a C-contiguous uint8 HxWx3 RGB array (PIL is converted to RGB)."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0.0) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    # PIL image (duck-typed so that PIL is not required at import time)
    if getattr(image, "mode", "RGB") != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


_model_lock = threading.Lock()
_models: dict[tuple[Any, ...], Any] = {}


def set_torch_threads(num_threads: int | None) -> None:
    """Set torch intra-op threads (``None`` or <= 0 leaves torch's default)."""
    if num_threads is None or num_threads <= 0:
        return
    import torch

    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


def get_mtcnn(
    *,
    min_face_size: int = DEFAULT_MIN_FACE_SIZE,
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
    factor: float = DEFAULT_FACTOR,
    device: str = "cpu",
    num_threads: int | None = None,
) -> Any:
    """Return the process-wide ``facenet_pytorch.MTCNN`` for these parameters (built once)."""
    key = (int(min_face_size), tuple(float(t) for t in thresholds), float(factor), device)
    model = _models.get(key)
    if model is not None:
        set_torch_threads(num_threads)
        return model
    with _model_lock:
        model = _models.get(key)
        if model is None:
            ensure_torchvision()
            import torch
            from facenet_pytorch import MTCNN

            set_torch_threads(num_threads)
            model = MTCNN(
                min_face_size=key[0],
                thresholds=list(key[1]),
                factor=key[2],
                keep_all=True,
                select_largest=False,
                post_process=False,
                device=torch.device(device),
            ).eval()
            _models[key] = model
            logger.info("loaded MTCNN detector (min_face_size=%s, device=%s)", key[0], device)
    return model


def _as_float_array(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Convert MTCNN output (possibly object dtype under numpy 2) to a float32 array."""
    if value is None:
        return np.zeros((0, *shape[1:]), dtype=np.float32)
    arr = np.asarray(value)
    if arr.dtype == object:
        if arr.size == 0 or any(v is None for v in arr.ravel()):
            return np.zeros((0, *shape[1:]), dtype=np.float32)
        arr = np.array(arr.tolist(), dtype=np.float32)
    return arr.astype(np.float32).reshape(-1, *shape[1:])


def detect_faces(
    image: Image.Image | np.ndarray,
    *,
    min_face_size: int = DEFAULT_MIN_FACE_SIZE,
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
    factor: float = DEFAULT_FACTOR,
    device: str = "cpu",
    num_threads: int | None = None,
) -> list[DetectedFace]:
    """Detect all faces in one RGB image; returns them by decreasing detector score."""
    import torch

    rgb = to_rgb_array(image)
    mtcnn = get_mtcnn(
        min_face_size=min_face_size,
        thresholds=thresholds,
        factor=factor,
        device=device,
        num_threads=num_threads,
    )
    with torch.inference_mode():
        boxes, probs, points = mtcnn.detect(rgb, landmarks=True)
    boxes_a = _as_float_array(boxes, (-1, 4))
    if boxes_a.shape[0] == 0:
        return []
    probs_a = _as_float_array(probs, (-1,))
    points_a = _as_float_array(points, (-1, 5, 2))
    faces = [
        DetectedFace(box=boxes_a[i].copy(), score=float(probs_a[i]), landmarks=points_a[i].copy())
        for i in range(boxes_a.shape[0])
    ]
    faces.sort(key=lambda f: f.score, reverse=True)
    return faces


class FaceDetector:
    """Configured detector; a thin object wrapper over :func:`detect_faces` for injection."""

    def __init__(
        self,
        *,
        min_face_size: int = DEFAULT_MIN_FACE_SIZE,
        thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
        device: str = "cpu",
        num_threads: int | None = None,
    ) -> None:
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.factor = factor
        self.device = device
        self.num_threads = num_threads

    def detect(self, image: Image.Image | np.ndarray) -> list[DetectedFace]:
        return detect_faces(
            image,
            min_face_size=self.min_face_size,
            thresholds=self.thresholds,
            factor=self.factor,
            device=self.device,
            num_threads=self.num_threads,
        )

    __call__ = detect
