"""Minimal stand-ins for the two torchvision functions that facenet-pytorch's MTCNN uses.

``facenet_pytorch.models.utils.detect_face`` does, at import time::

    from torchvision.transforms import functional as F   # uses F.to_tensor
    from torchvision.ops.boxes import batched_nms

torchvision is a large, torch-version-locked dependency that we do not install. When it is not
importable, :func:`ensure_torchvision` registers tiny fake modules in ``sys.modules`` providing
pure-torch ``batched_nms`` and ``to_tensor`` with torchvision's semantics, so that
``import facenet_pytorch`` works. When a real torchvision is importable it is used untouched.

torch is imported lazily, inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import threading
import types
from typing import Any

logger = logging.getLogger(__name__)

SHIM_MARKER = "__accessctl_tv_shim__"
_SHIM_MODULES = (
    "torchvision",
    "torchvision.ops",
    "torchvision.ops.boxes",
    "torchvision.transforms",
    "torchvision.transforms.functional",
)
_lock = threading.Lock()


def nms(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """Greedy non-maximum suppression, same contract as ``torchvision.ops.nms``.

    ``boxes`` is a float tensor (N, 4) in (x1, y1, x2, y2), ``scores`` (N,). Returns the int64
    indices of the kept boxes, sorted by decreasing score. A box is suppressed when its IoU with a
    kept, higher-scoring box is strictly greater than ``iou_threshold``.

    The IoU matrix is computed once (float32, as torchvision does) in row blocks; the greedy pass
    then touches one numpy row per kept box. MTCNN calls this about ten times per frame with up
    to a few thousand boxes: a per-box loop of small torch ops cost the edge agent ~10 ms a frame.
    """
    import numpy as np
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True)
    b = boxes.detach().to(device="cpu", dtype=torch.float32)[order.cpu()].numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    n = b.shape[0]
    threshold = np.float32(iou_threshold)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    block = max(1, _NMS_BLOCK_ELEMENTS // n)  # rows of the IoU matrix held at once
    for start in range(0, n, block):
        stop = min(n, start + block)
        rows = slice(start, stop)
        xx1 = np.maximum(x1[rows, None], x1[None, :])
        yy1 = np.maximum(y1[rows, None], y1[None, :])
        xx2 = np.minimum(x2[rows, None], x2[None, :])
        yy2 = np.minimum(y2[rows, None], y2[None, :])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        with np.errstate(divide="ignore", invalid="ignore"):
            over = inter / (areas[rows, None] + areas[None, :] - inter) > threshold
        for i in range(start, stop):
            if suppressed[i]:
                continue
            keep.append(i)
            row = over[i - start]
            row[: i + 1] = False  # only lower-scoring boxes are suppressed by box i
            suppressed |= row
    kept = torch.as_tensor(keep, dtype=torch.int64)
    return order[kept.to(order.device)]


#: IoU matrix elements computed at once by :func:`nms` (4 M float32: 16 MiB)
_NMS_BLOCK_ELEMENTS = 4_000_000


def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
    """NMS done independently per category ``idxs``; same contract as torchvision's.

    Uses torchvision's coordinate-offset trick: boxes of different categories are shifted apart
    so that they never overlap, then a single NMS is run.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def to_tensor(pic: Any) -> Any:
    """Convert a PIL image or numpy ``HxW[xC]`` array to a ``CxHxW`` tensor (torchvision rules).

    uint8 input is scaled to float in [0, 1]; other dtypes are returned unscaled.
    """
    import numpy as np
    import torch

    if not isinstance(pic, np.ndarray):
        pic = np.asarray(pic)
    if pic.ndim == 2:
        pic = pic[:, :, None]
    if pic.ndim != 3:
        raise TypeError(f"to_tensor expects an HxW or HxWxC image, got shape {pic.shape}")
    img = torch.from_numpy(np.ascontiguousarray(pic.transpose((2, 0, 1)))).contiguous()
    if img.dtype == torch.uint8:
        return img.to(dtype=torch.get_default_dtype()).div(255)
    return img


def _real_torchvision_available() -> bool:
    existing = sys.modules.get("torchvision")
    if existing is not None:
        return not getattr(existing, SHIM_MARKER, False)
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision.ops.boxes")
        importlib.import_module("torchvision.transforms.functional")
    except Exception:
        logger.warning("torchvision is installed but not importable; using the pure-torch shim")
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]
        return False
    return True


def _make_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name, "accessctl stand-in for torchvision (see faceengine.tv_shim)")
    module.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=True)
    module.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    setattr(module, SHIM_MARKER, True)
    return module


def ensure_torchvision() -> bool:
    """Make ``torchvision.ops.boxes.batched_nms`` and ``...functional.to_tensor`` importable.

    Returns True when the shim was (or already is) installed, False when real torchvision is used.
    Idempotent and thread-safe; call it before importing ``facenet_pytorch``.
    """
    with _lock:
        if _real_torchvision_available():
            return False
        if getattr(sys.modules.get("torchvision"), SHIM_MARKER, False):
            return True
        mods = {name: _make_module(name) for name in _SHIM_MODULES}
        mods["torchvision.ops.boxes"].batched_nms = batched_nms
        mods["torchvision.ops.boxes"].nms = nms
        mods["torchvision.ops"].batched_nms = batched_nms
        mods["torchvision.ops"].nms = nms
        mods["torchvision.ops"].boxes = mods["torchvision.ops.boxes"]
        mods["torchvision.transforms.functional"].to_tensor = to_tensor
        mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
        mods["torchvision"].ops = mods["torchvision.ops"]
        mods["torchvision"].transforms = mods["torchvision.transforms"]
        mods["torchvision"].__version__ = "0.0.0+accessctl.shim"
        sys.modules.update(mods)
        logger.debug("registered pure-torch torchvision shim for facenet-pytorch")
        return True


def is_shim_active() -> bool:
    """True when ``torchvision`` in ``sys.modules`` is this module's stand-in."""
    return bool(getattr(sys.modules.get("torchvision"), SHIM_MARKER, False))
