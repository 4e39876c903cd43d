"""O-Net box redrawing (faceengine/onet_refine.py): MTCNN's geometry rules, and YuNet's boxes on
real faces redrawn close to MTCNN's own (the box the liveness threshold was calibrated with)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceengine import onet_refine
from faceengine.detector import FaceDetector
from faceengine.liveness.crop import crop_window
from faceengine.onet_refine import YUNET_TO_ONET_INPUT, OnetBoxRefiner, clip_indices, onet_boxes_detector, square
from faceengine.yunet import BoxMap
from tests.faces import LFW_DIR, dataset_dir

pytest.importorskip("onnxruntime")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def test_square_keeps_the_centre_and_takes_the_longer_side() -> None:
    out = square(np.asarray([[10, 20, 50, 100], [0, 0, 30, 10]], dtype=np.float32))
    np.testing.assert_allclose(out, [[-10, 20, 70, 100], [0, -10, 30, 20]])


def test_clip_indices_follow_mtcnn_s_pad() -> None:
    idx = clip_indices(np.asarray([[-5.7, 0.4, 700.9, 30.2], [10.9, 20.1, 60.5, 470.0]]), 640, 480)
    np.testing.assert_array_equal(idx, [[1, 1, 640, 30], [10, 20, 60, 470]])


def test_the_shipped_input_map_is_the_refiner_s_default() -> None:
    refiner = OnetBoxRefiner()
    assert refiner.input_map == YUNET_TO_ONET_INPUT and refiner.passes == 1 and refiner.rnet  # R-Net, then O-Net
    assert isinstance(YUNET_TO_ONET_INPUT, BoxMap)
    with pytest.raises(ValueError, match="passes"):
        OnetBoxRefiner(passes=0)


def test_no_box_and_a_box_outside_the_frame() -> None:
    frame = np.full((120, 160, 3), 128, dtype=np.uint8)
    refiner = OnetBoxRefiner(input_map=BoxMap())
    assert refiner(frame, []).shape == (0, 4)
    assert onet_refine.onet_refine(frame, np.zeros((0, 4))) == []
    outside = np.asarray([[500.0, 500.0, 540.0, 540.0]])
    assert onet_refine.onet_refine(frame, outside) == [None]
    assert onet_refine.rnet_refine(frame, outside) == [None]
    assert onet_refine.rnet_refine(frame, np.zeros((0, 4))) == []
    np.testing.assert_allclose(refiner(frame, outside), outside)  # not redrawn: kept as mapped


def _faces() -> list[np.ndarray]:
    """Real 640x480 frames with one face: nuaa-dev webcam captures, else LFW photos pasted."""
    frames = []
    root = dataset_dir("nuaa-dev")
    if root is not None:
        for subject in sorted((root / "live").iterdir())[:3]:
            with Image.open(sorted(subject.glob("*.jpg"))[0]) as img:
                frames.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
    if LFW_DIR.is_dir():
        for person in sorted(p for p in LFW_DIR.iterdir() if p.is_dir())[:3]:
            with Image.open(sorted(person.glob("*.jpg"))[0]) as img:
                canvas = Image.new("RGB", (640, 480), (110, 110, 110))
                canvas.paste(img.convert("RGB"), (200, 120))
                frames.append(np.asarray(canvas, dtype=np.uint8))
    if not frames:
        from skimage import data

        frames.append(np.asarray(Image.fromarray(data.astronaut()).resize((480, 480)), dtype=np.uint8))
    return frames


def test_yunet_boxes_redrawn_by_onet_come_close_to_mtcnn_s() -> None:
    """The point of the module: R-Net and O-Net's redrawing of YuNet's box is MTCNN's box (and the
    liveness window cut around it MTCNN's window), closer than YuNet's own box is."""
    from faceengine import yunet

    mtcnn = FaceDetector(min_face_size=32, num_threads=2)
    redraw = OnetBoxRefiner()
    raw_ious, redrawn_ious, windows = [], [], []
    for frame in _faces():
        (yun,) = [f for f in yunet.detect_faces(frame, num_threads=2) if f.size >= 40]
        (mt,) = [f for f in mtcnn.detect(frame) if f.size >= 40]
        (box,) = redraw(frame, [yun.box])
        raw_ious.append(_iou(yun.box, mt.box))
        redrawn_ious.append(_iou(box, mt.box))
        h, w = frame.shape[:2]
        windows.append(_iou(np.asarray(crop_window(box, 2.7, w, h)), np.asarray(crop_window(mt.box, 2.7, w, h))))
    assert min(redrawn_ious) > 0.85, redrawn_ious
    assert np.median(redrawn_ious) > np.median(raw_ious), (redrawn_ious, raw_ious)
    assert min(windows) > 0.85, windows


def test_onet_boxes_detector_swaps_the_box_and_keeps_the_rest() -> None:
    from faceengine import yunet

    frame = _faces()[0]
    detect = yunet.YunetDetector(num_threads=2)
    (face,) = [f for f in detect(frame) if f.size >= 40]
    (redrawn,) = [f for f in onet_boxes_detector(detect)(frame) if f.size >= 30]
    assert redrawn.score == face.score
    np.testing.assert_array_equal(redrawn.landmarks, face.landmarks)
    np.testing.assert_allclose(redrawn.box, OnetBoxRefiner()(frame, [face.box])[0], atol=1e-3)
    blank = np.full((480, 640, 3), 90, dtype=np.uint8)
    assert onet_boxes_detector(detect)(blank) == []
