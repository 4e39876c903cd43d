"""Passive liveness score of detected faces: MiniFASNetV2 (crop scale 2.7) + MiniFASNetV1SE (4.0).

Each network sees its own crop of the full frame around the detector's box (``crop.py``), resized
to 80x80, as BGR 0-255 floats; the live score of a face is the mean over the networks of the
softmax probability of the "live" class, in 0..1 (higher = more likely a live face). Faces are
scored as one batch per network. The weights ship in ``weights/`` and are checked against their
SHA-256 before loading.

torch is imported lazily. :func:`get_scorer` keeps one scorer per (weights, networks, device)
per process; paths and thread counts are arguments, nothing is read from the environment.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceengine.liveness.crop import crop_resized

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INPUT_SIZE = 80


@dataclass(frozen=True)
class PadModel:
    """One shipped PAD network: its weights file, architecture and crop scale."""

    name: str
    filename: str
    scale: float
    sha256: str


PAD_MODELS: dict[str, PadModel] = {
    model.name: model
    for model in (
        PadModel(
            name="MiniFASNetV2",
            filename="2.7_80x80_MiniFASNetV2.pth",
            scale=2.7,
            sha256="a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
        ),
        PadModel(
            name="MiniFASNetV1SE",
            filename="4_0_0_80x80_MiniFASNetV1SE.pth",
            scale=4.0,
            sha256="84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
        ),
    )
}
DEFAULT_MODELS: tuple[str, ...] = ("MiniFASNetV2", "MiniFASNetV1SE")

#: Stored with every liveness score (one string per weights + fusion recipe).
MODEL_VERSION = "minifasnet-v2@2.7+v1se@4.0"


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


class LivenessScorer:
    """Live probability (0..1) of each face box in a full RGB frame.

    ``weights_dir``: folder holding the ``.pth`` files (default: the package's ``weights/``).
    ``models``: names from :data:`PAD_MODELS` to fuse (default both). ``num_threads``: torch
    intra-op threads (process-wide; ``None`` keeps torch's setting).
    """

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        num_threads: int | None = 2,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        device: str = "cpu",
    ) -> None:
        if not models:
            raise ValueError("at least one PAD model is needed")
        unknown = [name for name in models if name not in PAD_MODELS]
        if unknown:
            raise ValueError(f"unknown PAD models {unknown}; known: {sorted(PAD_MODELS)}")
        self.weights_dir = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
        self.num_threads = num_threads
        self.device = device
        self.specs = tuple(PAD_MODELS[name] for name in models)
        self.model_version = MODEL_VERSION if tuple(models) == DEFAULT_MODELS else "+".join(models)
        self._lock = threading.Lock()
        self._networks = [self._load(spec) for spec in self.specs]
        self._warm_up()

    def _load(self, spec: PadModel) -> Any:
        import torch

        from faceengine.liveness.network import MINIFASNET_V1SE, MINIFASNET_V2, MiniFASNet, state_dict_unwrap

        path = self.weights_dir / spec.filename
        if not path.is_file():
            raise LivenessWeightsError(f"liveness weights not found: {path}")
        digest = _file_sha256(path)
        if digest != spec.sha256:
            raise LivenessWeightsError(f"liveness weights {path} have SHA-256 {digest}, expected {spec.sha256}")
        widths = {"MiniFASNetV2": MINIFASNET_V2, "MiniFASNetV1SE": MINIFASNET_V1SE}[spec.name]
        torch_threads_set(self.num_threads)
        network = MiniFASNet(widths)
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state_dict_unwrap(state), strict=True)
        network.eval().fuse()
        network.to(torch.device(self.device), memory_format=torch.channels_last)
        logger.info("loaded liveness network %s from %s", spec.name, path)
        return network

    def _warm_up(self) -> None:
        """One forward pass per network, so that the first face is not also the slowest."""
        import torch

        with self._lock, torch.inference_mode():
            dummy = torch.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), device=torch.device(self.device))
            dummy = dummy.contiguous(memory_format=torch.channels_last)
            for network in self._networks:
                network(dummy)

    def crops(self, frame_rgb: np.ndarray, boxes: Any, scale: float) -> torch.Tensor:
        """The network input for ``boxes`` at ``scale``: ``(N, 3, 80, 80)`` float32 BGR 0-255."""
        import torch

        frame = _frame_array(frame_rgb)
        box_arr = _boxes_array(boxes)
        batch = np.empty((len(box_arr), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
        for i, box in enumerate(box_arr):
            batch[i] = crop_resized(frame, box, scale, INPUT_SIZE)[:, :, ::-1]  # RGB -> BGR
        # NHWC in memory seen as NCHW: torch's channels-last layout, the faster one for these networks on CPU.
        return torch.from_numpy(batch).permute(0, 3, 1, 2)

    def probabilities(self, frame_rgb: np.ndarray, boxes: Any) -> np.ndarray:
        """Softmax outputs ``(n_models, N, 3)`` of each network for each box (index 1 = live)."""
        import torch

        box_arr = _boxes_array(boxes)
        if len(box_arr) == 0:
            return np.zeros((len(self.specs), 0, 3), dtype=np.float32)
        device = torch.device(self.device)
        results = []
        with self._lock, torch.inference_mode():
            torch_threads_set(self.num_threads)
            for spec, network in zip(self.specs, self._networks, strict=True):
                batch = self.crops(frame_rgb, box_arr, spec.scale).to(device)
                results.append(torch.softmax(network(batch), dim=1).cpu().numpy())
        return np.stack(results).astype(np.float32)

    def score(self, frame_rgb: np.ndarray, boxes: Any) -> np.ndarray:
        """Live score per box, float32 ``(N,)`` in 0..1: the mean over networks of P(live)."""
        from faceengine.liveness.network import LIVE_CLASS

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
) -> LivenessScorer:
    """The process-wide scorer for these weights, networks and device (loaded on first use)."""
    resolved = (Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR).resolve()
    key = (str(resolved), tuple(models), device)
    scorer = _scorers.get(key)
    if scorer is None:
        with _scorers_lock:
            scorer = _scorers.get(key)
            if scorer is None:
                scorer = LivenessScorer(resolved, num_threads, models=models, device=device)
                _scorers[key] = scorer
    scorer.num_threads = num_threads
    return scorer
