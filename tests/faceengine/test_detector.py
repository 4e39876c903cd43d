"""MTCNN wrapper and the torchvision shim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.faces import LFW_DIR

LFW_IMAGES = LFW_DIR
REPO_ROOT = Path(__file__).resolve().parents[2]


def _face_photo() -> np.ndarray:
    path = LFW_IMAGES / "Aaron_Peirsol/Aaron_Peirsol_0001.jpg"
    if path.is_file():
        return np.asarray(Image.open(path).convert("RGB"))
    return pytest.importorskip("skimage.data").astronaut()


def test_importing_detector_does_not_import_torch() -> None:
    code = (
        "import sys; import faceengine.detector, faceengine.embedder, faceengine.quality, "
        "faceengine.pipeline, faceengine.alignment, faceengine.tv_shim; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'onnxruntime' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, thr: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            if idxs[i] != idxs[j]:
                continue
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(xx2 - xx1, 0) * max(yy2 - yy1, 0)
            area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (area_i + area_j - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(int(i))
    return keep


@pytest.mark.parametrize("block_elements", [4_000_000, 900, 1])
def test_shim_batched_nms_matches_reference(block_elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when the IoU matrix is computed a few rows at a time (many boxes)."""
    torch = pytest.importorskip("torch")
    from faceengine import tv_shim
    from faceengine.tv_shim import batched_nms

    monkeypatch.setattr(tv_shim, "_NMS_BLOCK_ELEMENTS", block_elements)

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, (300, 2))
    wh = rng.uniform(5, 40, (300, 2))
    boxes = np.hstack([xy, xy + wh]).astype(np.float32)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    idxs = rng.integers(0, 3, 300)
    got = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), 0.5)
    assert got.dtype == torch.int64
    assert got.tolist() == _reference_nms(boxes, scores, idxs, 0.5)
    assert batched_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0), 0.5).numel() == 0


def test_shim_to_tensor() -> None:
    torch = pytest.importorskip("torch")
    from faceengine.tv_shim import to_tensor

    u8 = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    t = to_tensor(u8)
    assert t.shape == (3, 2, 4) and t.dtype == torch.float32
    assert float(t[1, 0, 1]) == pytest.approx(4 / 255)
    f = to_tensor(u8.astype(np.float32))
    assert float(f[1, 0, 1]) == 4.0


def test_shim_registered_only_without_torchvision() -> None:
    import importlib.util

    from faceengine.tv_shim import ensure_torchvision, is_shim_active

    ensure_torchvision()
    real = importlib.util.find_spec("torchvision") is not None and not is_shim_active()
    if not real:
        from torchvision.ops.boxes import batched_nms  # noqa: F401 - the shim provides it
        from torchvision.transforms import functional

        assert hasattr(functional, "to_tensor") and is_shim_active()


def test_detects_one_face_with_landmarks() -> None:
    from faceengine.detector import DetectedFace, detect_faces

    img = _face_photo()
    faces = detect_faces(img)
    assert len(faces) == 1
    face = faces[0]
    assert isinstance(face, DetectedFace)
    assert face.box.shape == (4,) and face.landmarks.shape == (5, 2)
    assert face.box.dtype == np.float32 and face.landmarks.dtype == np.float32
    assert face.score > 0.99 and face.size > 40
    x1, y1, x2, y2 = face.box
    assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
    assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
    eyes_y, mouth_y = face.landmarks[:2, 1].mean(), face.landmarks[3:, 1].mean()
    assert eyes_y < face.landmarks[2, 1] < mouth_y
    # PIL input gives the same result as the numpy array
    pil_faces = detect_faces(Image.fromarray(img))
    np.testing.assert_allclose(pil_faces[0].box, face.box, atol=1e-3)


def test_no_face_and_model_cached() -> None:
    from faceengine.detector import detect_faces, get_mtcnn

    assert detect_faces(np.zeros((120, 160, 3), np.uint8)) == []
    assert get_mtcnn() is get_mtcnn()
