"""Redraw another detector's face boxes in MTCNN's convention with MTCNN's own last stages.

The liveness networks (MiniFASNet) are judged at a threshold calibrated on windows cut around
MTCNN's boxes (``faceengine.liveness.crop``: the window is ``scale`` times the box, same centre
and aspect ratio). YuNet's boxes are drawn differently, which moves the window: on nuaa-dev, at
the calibrated 0.0501, APCER 1.19 % / BPCER 0.62 % with YuNet's boxes against 0.40 % / 0 % with
MTCNN's (the agent's 32 px pyramid). A fixed mapping of YuNet's box cannot know the face's
shape; MTCNN's R-Net and O-Net can: they are the stages that draw MTCNN's final box from a
candidate window. Here they run on YuNet's box exactly as MTCNN chains them after P-Net
(``facenet_pytorch``'s ``detect_face``: each box made square about its centre, cut from the frame
clipped to its borders, resized by area averaging to 24x24 (R-Net) then 48x48 (O-Net),
``(x - 127.5) / 128``, each regression applied to its square window with MTCNN's ``+1`` width
convention): two small forward passes per face instead of MTCNN's image pyramid.

What it gives (``bench/onet_refine_fit.py`` on 289 LFW faces in 640x480 frames; scores of all of
nuaa-dev, 1,651 faces): box IoU with MTCNN's from 0.90 (YuNet's box) to 0.93 (O-Net), liveness
window IoU 0.93 -> 0.95; at 0.0501 on nuaa-dev, R-Net + O-Net: APCER 1.09 % / BPCER 0.00 %
(``evaluate_liveness --detector yunet``, which picks the largest face another way: 1.29 % / 0 %)
(O-Net alone 1.39 % / 0.16 %, O-Net twice 1.88 % / 0 %): closer to MTCNN's behaviour than
YuNet's own box, not equal to it (subject 0005: 3.54 %, 7 of 198 printed photos). The variant
was chosen among these three on nuaa-dev itself: a development figure, not a held-out one.
3 of those 7 were not the face at all: YuNet's largest box there is the printed sheet (detector
score 0.58-0.62), which the agent never sends (``min_detector_score`` 0.9). Scoring only the faces
the agent sends (``evaluate_liveness``'s ``--min-detector-score``, 0.9): APCER 0.60 %, BPCER 0 %,
subject 0005 2.02 % (4 of 198; O-Net's box there is as MTCNN's within 3 %, the 4.0 network scores
0.15-0.21 where MTCNN's box gets 0.03-0.06).

``YUNET_TO_ONET_INPUT``, a :class:`faceengine.yunet.BoxMap` applied to YuNet's box first, is the
identity: the median map from YuNet's box to MTCNN's fitted on LFW (never on nuaa-dev) is within
2 % of it (dx -0.0073, dy -0.0059, sw 0.9819, sh 0.9868) and changed the O-Net box's agreement
with MTCNN's by less than 0.001 IoU; ``bench/onet_refine_fit.py`` refits it and prints both.

The R-Net and O-Net weights come from the ``facenet-pytorch`` wheel (the MTCNN the server and
the agent already install); torch is imported lazily; one network each per process.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from faceengine.yunet import BoxMap

logger = logging.getLogger(__name__)

ONET_SIZE = 48
RNET_SIZE = 24
#: YuNet's box -> the window MTCNN's stages are given (see the module's text; bench/onet_refine_fit.py).
YUNET_TO_ONET_INPUT = BoxMap(dx=0.0, dy=0.0, sw=1.0, sh=1.0)

_lock = threading.Lock()
_nets: dict[str, Any] = {}


def _get_net(name: str) -> Any:
    net = _nets.get(name)
    if net is None:
        with _lock:
            net = _nets.get(name)
            if net is None:
                from faceengine.tv_shim import ensure_torchvision

                ensure_torchvision()
                from facenet_pytorch.models import mtcnn

                net = getattr(mtcnn, name)(pretrained=True).eval()
                _nets[name] = net
                logger.info("loaded MTCNN %s for box refinement", name)
    return net


def get_onet() -> Any:
    """The process-wide MTCNN O-Net (facenet-pytorch's weights), in eval mode."""
    return _get_net("ONet")


def get_rnet() -> Any:
    """The process-wide MTCNN R-Net (facenet-pytorch's weights), in eval mode."""
    return _get_net("RNet")


def square(boxes: np.ndarray) -> np.ndarray:
    """MTCNN's ``rerec``: each box made square (side = its longer side) about its centre."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def clip_indices(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """MTCNN's ``pad``: integer (x, y, ex, ey) truncated and clipped to 1..width / 1..height; the
    window cut is ``frame[y - 1 : ey, x - 1 : ex]``."""
    idx = np.trunc(boxes).astype(np.int64)
    idx[:, 0] = np.maximum(idx[:, 0], 1)
    idx[:, 1] = np.maximum(idx[:, 1], 1)
    idx[:, 2] = np.minimum(idx[:, 2], width)
    idx[:, 3] = np.minimum(idx[:, 3], height)
    return idx


@dataclass(frozen=True)
class RefinedFace:
    """O-Net's redrawn box (x1, y1, x2, y2), its face probability and its 5 landmarks (5, 2)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def _windows(frame: np.ndarray, windows: np.ndarray, size: int) -> tuple[Any, list[int]]:
    """MTCNN's network input for square ``windows``: ``(n, 3, size, size)`` and the rows kept."""
    import torch
    from torch.nn.functional import interpolate

    height, width = frame.shape[:2]
    idx = clip_indices(windows, width, height)
    batch, kept = [], []
    for i, (x, y, ex, ey) in enumerate(idx):
        if ey > y - 1 and ex > x - 1:
            window = torch.from_numpy(np.array(frame[y - 1 : ey, x - 1 : ex, :3], dtype=np.float32))  # a copy
            batch.append(interpolate(window.permute(2, 0, 1).unsqueeze(0), size=(size, size), mode="area"))
            kept.append(i)
    if not batch:
        return None, kept
    return (torch.cat(batch) - 127.5) * 0.0078125, kept


def _regress(window: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """MTCNN's ``bbreg``: the box regression applied to a window (``+1`` width convention)."""
    x1, y1, x2, y2 = (float(v) for v in window[:4])
    w, h = x2 - x1 + 1, y2 - y1 + 1
    return np.asarray([x1 + reg[0] * w, y1 + reg[1] * h, x2 + reg[2] * w, y2 + reg[3] * h], dtype=np.float32)


def rnet_refine(frame_rgb: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray) -> list[np.ndarray | None]:
    """MTCNN's second stage (R-Net) on each box, as it runs on P-Net's candidates: the box made
    square, cut, resized to 24x24, its regression applied to the square window."""
    import torch

    frame = np.asarray(frame_rgb)
    windows = square(np.asarray(boxes, dtype=np.float32))
    out: list[np.ndarray | None] = [None] * len(windows)
    if len(windows) == 0:
        return out
    batch, kept = _windows(frame, windows, RNET_SIZE)
    if batch is None:
        return out
    with torch.inference_mode():
        reg, _prob = get_rnet()(batch)
    for row, i in enumerate(kept):
        out[i] = _regress(windows[i], reg[row].numpy())
    return out


def onet_refine(frame_rgb: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray) -> list[RefinedFace | None]:
    """O-Net's box for each input box (already in O-Net's input convention), in one batch.

    None for a box whose window is empty (outside the frame).
    """
    import torch

    frame = np.asarray(frame_rgb)
    windows = square(np.asarray(boxes, dtype=np.float32))
    out: list[RefinedFace | None] = [None] * len(windows)
    if len(windows) == 0:
        return []
    batch, kept = _windows(frame, windows, ONET_SIZE)
    if batch is None:
        return out
    with torch.inference_mode():
        reg, points, prob = get_onet()(batch)
    reg, points, prob = reg.numpy(), points.numpy(), prob.numpy()
    for row, i in enumerate(kept):
        x1, y1, x2, y2 = (float(v) for v in windows[i])
        w, h = x2 - x1 + 1, y2 - y1 + 1
        marks = np.stack([w * points[row, :5] + x1 - 1, h * points[row, 5:] + y1 - 1], axis=1).astype(np.float32)
        out[i] = RefinedFace(box=_regress(windows[i], reg[row]), score=float(prob[row, 1]), landmarks=marks)
    return out


class OnetBoxRefiner:
    """YuNet box -> MTCNN-style box: ``input_map``, then (with ``rnet``) MTCNN's R-Net, then O-Net
    (``passes`` times), each stage as MTCNN chains them (the previous box made square).

    A face a stage cannot redraw (empty window) keeps its previous box.
    """

    def __init__(self, *, input_map: BoxMap = YUNET_TO_ONET_INPUT, passes: int = 1, rnet: bool = True) -> None:
        if passes < 1:
            raise ValueError("passes must be >= 1")
        self.input_map = input_map
        self.passes = passes
        self.rnet = rnet

    def __call__(self, frame_rgb: np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """The refined boxes, float32 ``(N, 4)``."""
        current = np.asarray([self.input_map.apply(np.asarray(b, dtype=np.float64)) for b in boxes], dtype=np.float32)
        current = current.reshape(-1, 4)
        if self.rnet and len(current):
            stage2 = rnet_refine(frame_rgb, current)
            current = np.asarray(
                [b if b is not None else current[i] for i, b in enumerate(stage2)], dtype=np.float32
            ).reshape(-1, 4)
        for _ in range(self.passes):
            refined = onet_refine(frame_rgb, current)
            current = np.asarray(
                [r.box if r is not None else current[i] for i, r in enumerate(refined)], dtype=np.float32
            ).reshape(-1, 4)
        return current


def onet_boxes_detector(detect: Callable[[np.ndarray], Sequence[Any]]) -> Callable[[np.ndarray], list[Any]]:
    """``detect`` (RGB frame -> faces with a ``box``, frozen dataclasses such as
    :class:`faceengine.detector.DetectedFace`) whose faces carry O-Net's redrawn box instead:
    what the liveness scorer sees with ``[liveness] boxes = "onet"`` (``evaluate_liveness --boxes onet``)."""
    refiner = OnetBoxRefiner()

    def detect_redrawn(frame_rgb: np.ndarray) -> list[Any]:
        faces = list(detect(frame_rgb))
        if not faces:
            return []
        boxes = refiner(frame_rgb, [np.asarray(f.box, dtype=np.float64) for f in faces])
        return [dataclasses.replace(f, box=box.astype(np.float32)) for f, box in zip(faces, boxes, strict=True)]

    return detect_redrawn
