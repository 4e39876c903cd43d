"""Passive liveness score of detected faces: MiniFASNetV2 (crop scale 2.7) + MiniFASNetV1SE (4.0).

Each network sees its own crop of the full frame around the detector's box (``crop.py``), resized
to 80x80, as BGR 0-255 floats; the live score of a face is the mean over the networks of the
softmax probability of the "live" class, in 0..1 (higher = more likely a live face). Faces are
scored as one batch per network.

Two backends run the same networks: ``onnx`` (the default where onnxruntime is installed: the
``.onnx`` files in ``weights/``, exported from the ``.pth`` state dicts by
``python -m faceengine.liveness.onnx_export``, probabilities within 1e-4 of torch's) and
``torch`` (the reference: the state dicts loaded into ``network.py``'s implementation, batch norms
folded). onnxruntime runs a face through both networks in about a third of torch's time at
batch 1 (``bench/liveness_speed.py``); given a thread per network, it runs them side by side, one
thread each; its threads sleep between calls instead of spinning, so that they leave the cores to
the detector that runs next. Every weights file is checked against its SHA-256
before loading.

torch and onnxruntime are imported lazily. :func:`get_scorer` keeps one scorer per (weights,
networks, device, backend) per process; paths and thread counts are arguments, nothing is read
from the environment.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceengine.liveness.crop import crop_resized

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INPUT_SIZE = 80
#: index of the "live" class in the networks' outputs (0 and 2: attack classes)
LIVE_CLASS = 1


@dataclass(frozen=True)
class PadModel:
    """One shipped PAD network: its weights files (state dict, its ONNX export) and crop scale."""

    name: str
    filename: str
    scale: float
    sha256: str
    onnx_filename: str
    onnx_sha256: str


PAD_MODELS: dict[str, PadModel] = {
    model.name: model
    for model in (
        PadModel(
            name="MiniFASNetV2",
            filename="2.7_80x80_MiniFASNetV2.pth",
            scale=2.7,
            sha256="a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
            onnx_filename="2.7_80x80_MiniFASNetV2.onnx",
            onnx_sha256="f25066ff539e7e740b731dddc7200652eae5ed8c0a61cd03c42a0167701c53c6",
        ),
        PadModel(
            name="MiniFASNetV1SE",
            filename="4_0_0_80x80_MiniFASNetV1SE.pth",
            scale=4.0,
            sha256="84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
            onnx_filename="4_0_0_80x80_MiniFASNetV1SE.onnx",
            onnx_sha256="c3a6540344c6e3735037438b82a0f5af054b4641ba27763fa00e3b6d76572993",
        ),
    )
}
DEFAULT_MODELS: tuple[str, ...] = ("MiniFASNetV2", "MiniFASNetV1SE")

#: Stored with every liveness score (one string per weights + fusion recipe; both backends give
#: the same scores within 1e-4, so they share it).
MODEL_VERSION = "minifasnet-v2@2.7+v1se@4.0"
#: ``auto`` picks ``onnx`` where onnxruntime is installed, else ``torch``
BACKENDS = ("auto", "onnx", "torch")


class LivenessWeightsError(RuntimeError):
    """A weights file is missing or is not the one this code was written for."""


def torch_threads_set(num_threads: int | None) -> None:
    """Set torch's intra-op threads (process-wide); ``None`` or <= 0 leaves torch's default."""
    if num_threads is None or num_threads <= 0:
        return
    import torch

    if torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _boxes_array(boxes: Any) -> np.ndarray:
    """``boxes`` (array-like ``(N, 4)``, or objects with a ``box`` attribute) as float64 ``(N, 4)``."""
    if isinstance(boxes, np.ndarray):
        arr = boxes
    else:
        arr = np.asarray([getattr(b, "box", b) for b in boxes], dtype=np.float64)
    arr = np.asarray(arr, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[1] < 4 or not np.all(np.isfinite(arr[:, :4])):
        raise ValueError("boxes must be finite (x1, y1, x2, y2)")
    return arr[:, :4]


def _frame_array(frame_rgb: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame_rgb)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"expected an HxWx3 RGB frame, got shape {frame.shape}")
    return frame[:, :, :3]


def backend_resolve(backend: str) -> str:
    """``onnx`` or ``torch``: what ``backend`` (one of :data:`BACKENDS`) means here."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown liveness backend {backend!r} (expected one of {BACKENDS})")
    if backend != "auto":
        return backend
    import importlib.util

    return "onnx" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class _TorchNetwork:
    """A network run by torch: NCHW float32 crops -> class probabilities (numpy)."""

    def __init__(self, spec: PadModel, path: Path, device: str) -> None:
        import torch

        from faceengine.liveness.network import network_load

        self._torch = torch
        self.device = torch.device(device)
        self.network = network_load(spec.name, path).to(self.device, memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
            return torch.softmax(self.network(x), dim=1).cpu().numpy()


class _OnnxNetwork:
    """A network run by onnxruntime (its own session, ``threads`` intra-op threads, no spinning)."""

    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None and threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path.read_bytes(), sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return _softmax(self.session.run(None, {self.input_name: batch})[0])


class LivenessScorer:
    """Live probability (0..1) of each face box in a full RGB frame.

    ``weights_dir``: folder holding the weights files (default: the package's ``weights/``).
    ``models``: names from :data:`PAD_MODELS` to fuse (default both). ``num_threads``: threads for
    the networks (onnxruntime: fixed when the sessions are built; with at least one per network,
    the networks run side by side with an equal share each, else in turn with all of them; torch:
    its process-wide intra-op threads, ``None`` keeps torch's setting). ``backend``: one of :data:`BACKENDS`;
    ``device`` (torch only): where the networks run.
    """

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        num_threads: int | None = 2,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        device: str = "cpu",
        backend: str = "auto",
    ) -> None:
        if not models:
            raise ValueError("at least one PAD model is needed")
        unknown = [name for name in models if name not in PAD_MODELS]
        if unknown:
            raise ValueError(f"unknown PAD models {unknown}; known: {sorted(PAD_MODELS)}")
        self.backend = backend_resolve(backend)
        if self.backend == "onnx" and device != "cpu":
            raise ValueError("the onnx liveness backend runs on the CPU; use backend='torch' for another device")
        self.weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        self.num_threads = num_threads
        self.device = device
        self.specs = tuple(PAD_MODELS[name] for name in models)
        self.model_version = MODEL_VERSION if tuple(models) == DEFAULT_MODELS else "+".join(models)
        self._lock = threading.Lock()
        # onnxruntime with a thread per network: the networks run side by side, one thread each
        # (at batch 1 two small networks gain more from that than from two threads each in turn)
        self.parallel = self.backend == "onnx" and len(self.specs) > 1 and (num_threads or 0) >= len(self.specs)
        self._pool = ThreadPoolExecutor(len(self.specs) - 1, thread_name_prefix="liveness") if self.parallel else None
        self._networks = [self._load(spec) for spec in self.specs]
        self._warm_up()

    def _load(self, spec: PadModel) -> Any:
        filename, expected = (
            (spec.onnx_filename, spec.onnx_sha256) if self.backend == "onnx" else (spec.filename, spec.sha256)
        )
        path = self.weights_dir / filename
        if not path.is_file():
            raise LivenessWeightsError(f"liveness weights not found: {path}")
        digest = _file_sha256(path)
        if digest != expected:
            raise LivenessWeightsError(f"liveness weights {path} have SHA-256 {digest}, expected {expected}")
        if self.backend == "onnx":
            threads = self.num_threads // len(self.specs) if self.parallel and self.num_threads else self.num_threads
            network: Any = _OnnxNetwork(path, threads)
        else:
            torch_threads_set(self.num_threads)
            network = _TorchNetwork(spec, path, self.device)
        logger.info("loaded liveness network %s (%s) from %s", spec.name, self.backend, path)
        return network

    def _warm_up(self) -> None:
        """One forward pass per network, so that the first face is not also the slowest."""
        dummy = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        with self._lock:
            for network in self._networks:
                network(dummy)

    def crops(self, frame_rgb: np.ndarray, boxes: Any, scale: float) -> np.ndarray:
        """The network input for ``boxes`` at ``scale``: ``(N, 3, 80, 80)`` float32 BGR 0-255 (C-contiguous)."""
        frame = _frame_array(frame_rgb)
        box_arr = _boxes_array(boxes)
        batch = np.empty((len(box_arr), 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        for i, box in enumerate(box_arr):
            batch[i] = crop_resized(frame, box, scale, INPUT_SIZE)[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR, CHW
        return batch

    def probabilities(self, frame_rgb: np.ndarray, boxes: Any) -> np.ndarray:
        """Softmax outputs ``(n_models, N, 3)`` of each network for each box (index 1 = live)."""
        box_arr = _boxes_array(boxes)
        if len(box_arr) == 0:
            return np.zeros((len(self.specs), 0, 3), dtype=np.float32)

        def run(spec: PadModel, network: Any) -> np.ndarray:
            return network(self.crops(frame_rgb, box_arr, spec.scale))

        pairs = list(zip(self.specs, self._networks, strict=True))
        with self._lock:
            if self.backend == "torch":
                torch_threads_set(self.num_threads)
            if self._pool is not None:
                others = [self._pool.submit(run, spec, network) for spec, network in pairs[1:]]
                results = [run(*pairs[0])] + [future.result() for future in others]
            else:
                results = [run(spec, network) for spec, network in pairs]
        return np.stack(results).astype(np.float32)

    def score(self, frame_rgb: np.ndarray, boxes: Any) -> np.ndarray:
        """Live score per box, float32 ``(N,)`` in 0..1: the mean over networks of P(live)."""
        return self.probabilities(frame_rgb, boxes)[:, :, LIVE_CLASS].mean(axis=0)

    __call__ = score


_scorers_lock = threading.Lock()
_scorers: dict[tuple[Any, ...], LivenessScorer] = {}


def get_scorer(
    weights_dir: str | Path | None = None,
    num_threads: int | None = 2,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    device: str = "cpu",
    backend: str = "auto",
) -> LivenessScorer:
    """The process-wide scorer for these weights, networks, device and backend (loaded on first use)."""
    resolved = (Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR).resolve()
    backend = backend_resolve(backend)
    key = (str(resolved), tuple(models), device, backend)
    scorer = _scorers.get(key)
    if scorer is None:
        with _scorers_lock:
            scorer = _scorers.get(key)
            if scorer is None:
                scorer = LivenessScorer(resolved, num_threads, models=models, device=device, backend=backend)
                _scorers[key] = scorer
    scorer.num_threads = num_threads
    return scorer
