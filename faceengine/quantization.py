"""Static int8 quantisation of the SFace embedder (the ``sface-int8`` backend's weights).

The shipped SFace file (``face_recognition_sface_2021dec_int8bq.onnx``) is int8 only on disk: each
weight is a ``DequantizeLinear`` (blocks of 64) of int8 values, which onnxruntime folds into float
weights when it loads the graph, so every convolution runs in float32. This module turns it into a
network that computes in int8:

1. :func:`sface_float_model`: the shipped graph with its real inputs and a dynamic batch
   (:func:`faceengine.backends.sface.load_fixed_model`), its weights dequantised once
   (:func:`faceengine.yunet.fold_dequantize`: the very float weights onnxruntime runs today), then
   onnxruntime's quantisation pre-processing (shape inference, BatchNorm folded into the convolutions);
2. :func:`calibration_crops`: a deterministic sample of a folder of face images, as ArcFace-aligned
   112x112 crops (a 112x112 image is taken as aligned already; any other is detected with YuNet and
   aligned from its landmarks), with the SHA-256 of the files used;
3. :func:`sface_quantize`: onnxruntime's static quantisation (QDQ, int8 weights per output channel,
   uint8 activations, min/max ranges measured on the crops in order); the calibration set's digest and
   the source file's SHA-256 go into the model's metadata.

Same source file, same crops, same onnxruntime: the same bytes (the calibration is a min/max over
the crops, in a fixed order; nothing random, no time stamps). ``manage.py model_quantize`` is the
adapter. onnx and onnxruntime are imported inside the functions (heavy, optional).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceengine.detector import DetectedFace

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ALIGNED_SIZE = 112
#: crops used to measure the activation ranges (min/max): more changes the ranges very little
DEFAULT_CALIBRATION_COUNT = 200
#: recorded in the model's metadata: a change of the recipe below must change this
RECIPE = "qdq-minmax-s8w-perchannel-u8a-v1"


class QuantizationError(RuntimeError):
    """The quantisation cannot be done as asked (no calibration faces, unreadable source)."""


@dataclass(frozen=True)
class CalibrationSet:
    """Aligned crops (N, 112, 112, 3) uint8 RGB and what they were made from."""

    crops: np.ndarray
    files: tuple[str, ...]  # relative paths used, in order
    skipped: tuple[str, ...]  # relative paths where no face was found
    sha256: str  # over (relative path, file SHA-256) of every file used, in order

    def as_dict(self) -> dict[str, Any]:
        return {"count": len(self.files), "skipped": len(self.skipped), "sha256": self.sha256}


@dataclass(frozen=True)
class QuantizationReport:
    """What :func:`sface_quantize` wrote."""

    output: str
    sha256: str
    size: int
    source_sha256: str
    recipe: str
    calibration: dict[str, Any]
    onnxruntime: str
    ops: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def image_files(folder: str | Path) -> list[str]:
    """Every image below ``folder`` (relative POSIX paths, sorted)."""
    root = Path(folder)
    if not root.is_dir():
        raise QuantizationError(f"calibration folder {root} does not exist")
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def evenly_spaced(items: Sequence[str], count: int) -> list[str]:
    """``count`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if count <= 0:
        raise QuantizationError(f"the calibration count must be positive, got {count}")
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def central_face(faces: Sequence[DetectedFace], width: int, height: int) -> DetectedFace:
    """The largest face near the centre (box area - 2 x squared centre offset, as the evaluation picks)."""

    def key(face: DetectedFace) -> float:
        cx, cy = (face.box[0] + face.box[2]) / 2.0, (face.box[1] + face.box[3]) / 2.0
        return face.area - 2.0 * ((cx - width / 2.0) ** 2 + (cy - height / 2.0) ** 2)

    return max(faces, key=key)


def calibration_crops(
    folder: str | Path, *, count: int = DEFAULT_CALIBRATION_COUNT, num_threads: int | None = None
) -> CalibrationSet:
    """``count`` aligned crops from the images of ``folder`` (evenly spaced over its sorted files).

    A 112x112 image is an aligned crop already; in any other the most central face found by YuNet is
    aligned with the ArcFace template. Raises :class:`QuantizationError` when no face is found at all.
    """
    from PIL import Image

    from faceengine.alignment import align_arcface
    from faceengine.detector import to_rgb_array
    from faceengine.yunet import detect_faces

    root = Path(folder)
    chosen = evenly_spaced(image_files(root), count)
    crops, used, skipped = [], [], []
    digest = hashlib.sha256()
    for rel in chosen:
        path = root / rel
        with Image.open(path) as img:
            rgb = to_rgb_array(img.convert("RGB"))
        if rgb.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE):
            crop = rgb
        else:
            faces = detect_faces(rgb, num_threads=num_threads)
            if not faces:
                skipped.append(rel)
                continue
            crop = align_arcface(rgb, central_face(faces, rgb.shape[1], rgb.shape[0]).landmarks)
        crops.append(crop)
        used.append(rel)
        digest.update(f"{rel}\0{_sha256(path)}\n".encode())
    if not crops:
        raise QuantizationError(f"no face found in the {len(chosen)} calibration images of {root}")
    logger.info("calibration set: %d crops from %s (%d without a face)", len(crops), root, len(skipped))
    return CalibrationSet(np.stack(crops), tuple(used), tuple(skipped), digest.hexdigest())


def sface_float_model(source: str | Path) -> Any:
    """The float32 network the shipped SFace file computes (an ``onnx.ModelProto``), prepared for
    quantisation: real inputs, dynamic batch, weights dequantised, BatchNorm folded."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from faceengine.backends.sface import load_fixed_model
    from faceengine.yunet import fold_dequantize

    model = onnx.ModelProto()
    model.ParseFromString(load_fixed_model(source))
    folded = fold_dequantize(model)  # as load_fixed_model(fold_weights=True), counted
    logger.info("SFace %s: %d weights dequantised to float", source, folded)
    with tempfile.TemporaryDirectory(prefix="sface-quant-") as tmp:
        raw, prepared = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(model, raw)
        quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=False)
        return onnx.load(str(prepared))


def sface_quantize(
    *, source: str | Path, calibration: CalibrationSet, output: str | Path, exclude: Sequence[str] = ()
) -> QuantizationReport:
    """Write the statically quantised (QDQ int8) SFace to ``output``; ``exclude``: node names left in float."""
    import collections

    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    source, output = Path(source), Path(output)
    nchw = np.ascontiguousarray(calibration.crops.transpose(0, 3, 1, 2), dtype=np.float32)
    float_model = sface_float_model(source)
    input_name = float_model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: nchw[i : i + 1]} for i in range(nchw.shape[0])])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sface-quant-") as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save(float_model, prepared)
        quantize_static(
            str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=list(exclude),
        )  # fmt: skip
        model = onnx.load(str(quantised))
    source_sha = _sha256(source)
    meta = {
        "accessctl.quantization.recipe": RECIPE,
        "accessctl.quantization.source_sha256": source_sha,
        "accessctl.quantization.calibration_sha256": calibration.sha256,
        "accessctl.quantization.calibration_count": str(len(calibration.files)),
        "accessctl.quantization.excluded_nodes": ",".join(exclude),
        "accessctl.quantization.onnxruntime": onnxruntime.__version__,
    }
    del model.metadata_props[:]
    for key, value in sorted(meta.items()):
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "accessctl faceengine.quantization", RECIPE
    tmp_out = output.with_name(output.name + ".part")
    tmp_out.write_bytes(model.SerializeToString())
    tmp_out.replace(output)
    ops = collections.Counter(node.op_type for node in model.graph.node)
    report = QuantizationReport(
        output=str(output), sha256=_sha256(output), size=output.stat().st_size, source_sha256=source_sha,
        recipe=RECIPE, calibration=calibration.as_dict(), onnxruntime=onnxruntime.__version__,
        ops=dict(sorted(ops.items())),
    )  # fmt: skip
    logger.info("SFace int8 written to %s (sha256 %s, %d bytes)", output, report.sha256, report.size)
    return report


def model_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (the calibration digest of a quantised one)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}
