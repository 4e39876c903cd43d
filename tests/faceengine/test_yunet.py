"""YuNet (faceengine/yunet.py): the model file, its graph fix, the decoding, and real faces against MTCNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceengine import yunet
from faceengine.detector import DetectedFace, FaceDetector
from tests.faces import LFW_DIR, dataset_dir

pytest.importorskip("onnxruntime")


def _nuaa_live_frames(count: int) -> list[np.ndarray]:
    root = dataset_dir("nuaa-dev")
    assert root is not None
    frames = []
    for subject in sorted((root / "live").iterdir())[:count]:
        path = sorted(subject.glob("*.jpg"))[0]
        with Image.open(path) as img:
            frames.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    return frames


def _lfw_in_frame(person: str) -> np.ndarray:
    """An LFW photo (250 px) pasted into a grey 640x480 frame, off-centre."""
    with Image.open(sorted((LFW_DIR / person).glob("*.jpg"))[0]) as img:
        face = img.convert("RGB")
    canvas = Image.new("RGB", (640, 480), (100, 100, 100))
    canvas.paste(face, (300, 150))
    return np.asarray(canvas, dtype=np.uint8)


def _close_to_mtcnn(rgb: np.ndarray) -> tuple[DetectedFace, DetectedFace]:
    """The single face of at least 40 px each detector finds, checked to agree with the other's."""
    (yun,) = yunet.detect_faces(rgb, min_face_size=40, num_threads=2)
    (mt,) = [f for f in FaceDetector(min_face_size=32, num_threads=2).detect(rgb) if f.size >= 40]
    assert yun.score >= 0.8
    assert yun.landmarks.shape == (5, 2) and yun.box.shape == (4,)
    inter_ocular = float(np.linalg.norm(mt.landmarks[0] - mt.landmarks[1]))
    # same order (left eye, right eye, nose, left and right mouth corner as seen), close positions
    # (each point within 20 % of the inter-ocular distance, the mouth corners, which YuNet puts a
    # little higher than MTCNN does, within 30 %; typical: ~8 %)
    error = np.linalg.norm(yun.landmarks - mt.landmarks, axis=1) / inter_ocular
    assert np.all(error[:3] < 0.2), error
    assert np.all(error[3:] < 0.3), error
    assert float(np.mean(error)) < 0.15, error
    assert yun.landmarks[0, 0] < yun.landmarks[1, 0] and yun.landmarks[3, 0] < yun.landmarks[4, 0]
    ix = max(0.0, min(yun.box[2], mt.box[2]) - max(yun.box[0], mt.box[0]))
    iy = max(0.0, min(yun.box[3], mt.box[3]) - max(yun.box[1], mt.box[1]))
    iou = ix * iy / (yun.area + mt.area - ix * iy)
    assert iou > 0.7, iou
    return yun, mt


@pytest.mark.dataset("nuaa-dev")
def test_finds_the_face_of_webcam_frames_with_mtcnn_s_landmarks() -> None:
    for rgb in _nuaa_live_frames(3):
        _close_to_mtcnn(rgb)


@pytest.mark.dataset("lfw")
def test_finds_an_lfw_face_pasted_in_a_640x480_frame() -> None:
    for person in ("Colin_Powell", "Donald_Rumsfeld", "George_W_Bush"):
        yun, _ = _close_to_mtcnn(_lfw_in_frame(person))
        assert 300 <= yun.box[0] and yun.box[2] <= 550  # in the frame's pixels, where it was pasted


@pytest.mark.dataset("lfw")
def test_downscaled_run_reports_the_frame_s_pixels() -> None:
    rgb = _lfw_in_frame("Colin_Powell")
    (full,) = yunet.detect_faces(rgb, min_face_size=40)
    (half,) = yunet.detect_faces(rgb, min_face_size=40, scale=0.5)
    assert np.abs(half.box - full.box).max() < 10
    assert np.abs(half.landmarks - full.landmarks).max() < 8


@pytest.mark.parametrize("shape", [(480, 640, 3), (250, 250, 3), (37, 61, 3)])
def test_no_face_on_a_blank_frame(shape: tuple[int, int, int]) -> None:
    assert yunet.detect_faces(np.zeros(shape, np.uint8)) == []
    assert yunet.detect_faces(np.full(shape, 180, np.uint8)) == []


def test_one_session_per_process_with_the_thread_count() -> None:
    first = yunet.get_session(num_threads=2)
    assert yunet.get_session(num_threads=2) is first
    assert first.get_session_options().intra_op_num_threads == 2
    assert yunet.get_session(num_threads=1).get_session_options().intra_op_num_threads == 1
    assert first.get_inputs()[0].shape[2:] == ["H", "W"]


def test_shipped_model_is_checked_and_a_missing_one_is_a_clear_error(tmp_path: Path) -> None:
    import hashlib

    assert hashlib.sha256(yunet.default_model_path().read_bytes()).hexdigest() == yunet.YUNET_SHA256
    with pytest.raises(yunet.YunetConfigError, match="not found"):
        yunet.get_session(model_path=tmp_path / "missing.onnx")


def test_dequantize_blocked_per_axis_and_per_tensor() -> None:
    x = np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], dtype=np.int8)
    scale = np.array([[0.5, 2.0], [1.0, 3.0]], dtype=np.float32)
    zp = np.array([[0, 1], [0, -1]], dtype=np.int8)
    out = yunet.dequantize(x, scale, zp, axis=1, block=2)
    assert np.allclose(out, [[0.5, 1.0, 4.0, 6.0], [-1.0, -2.0, -6.0, -9.0]])
    assert np.allclose(yunet.dequantize(x, np.array([0.5], np.float32), np.array([1], np.int8), 0, 64), (x - 1) * 0.5)
    per_axis = yunet.dequantize(x, np.array([1.0, 2.0], np.float32), None, axis=0, block=0)
    assert np.allclose(per_axis, [[1, 2, 3, 4], [-2, -4, -6, -8]])


def _outputs(h: int, w: int) -> dict[str, np.ndarray]:
    out = {}
    for s in yunet.STRIDES:
        n = (h // s) * (w // s)
        out[f"cls_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"obj_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((1, n, 10), np.float32)
    return out


def test_decode_follows_opencv_s_rule() -> None:
    out = _outputs(64, 96)
    cols = 96 // 16
    idx = 2 * cols + 3  # row 2, column 3 of the stride-16 grid
    out["cls_16"][0, idx, 0], out["obj_16"][0, idx, 0] = 0.81, 1.3  # obj clipped to 1: sqrt(0.81) = 0.9
    out["bbox_16"][0, idx] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    out["kps_16"][0, idx] = [0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 1.0, 1.0]
    boxes, scores, marks = yunet.decode(out, (64, 96), score_threshold=0.5)
    assert np.allclose(scores, [0.9])
    cx, cy, bw, bh = (3 + 0.5) * 16, (2 + 0.25) * 16, 2.0 * 16, 3.0 * 16
    assert np.allclose(boxes, [[cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]])
    assert np.allclose(marks[0], [[48, 32], [64, 32], [56, 40], [48, 48], [64, 48]])
    with pytest.raises(ValueError, match="cells"):
        yunet.decode(out, (96, 96))


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert yunet.nms(boxes, scores, 0.3).tolist() == [1, 2]


def test_box_map() -> None:
    mapped = yunet.BoxMap(dx=0.1, dy=-0.05, sw=1.5, sh=1.2).apply(np.array([10, 20, 30, 60], np.float32))
    assert np.allclose(mapped, [22 - 15, 38 - 24, 22 + 15, 38 + 24])
    assert np.allclose(yunet.BoxMap().apply(np.array([1, 2, 3, 4])), [1, 2, 3, 4])
