"""The liveness crop: a window ``scale`` times the detector's box, on the full frame.

The PAD networks judge the face's surroundings (the printed sheet's edge, the hand holding it,
a screen's bezel), so the window is much larger than the face and is cut from the full frame,
never from an aligned face crop. The geometry follows the networks' training recipe: the
window keeps the box's aspect ratio and centre; the scale is reduced when the window would be
larger than the frame, and a window that crosses a border is shifted back inside (not padded).
The window is resized with OpenCV's ``INTER_LINEAR`` rule (bilinear, half-pixel centres, no
antialiasing), computed here from only the source pixels it reads. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def crop_window(box: Sequence[float], scale: float, frame_width: int, frame_height: int) -> tuple[int, int, int, int]:
    """Return the window ``(x1, y1, x2, y2)`` (inclusive, integer pixels) for one face box.

    ``box``: ``(x1, y1, x2, y2)`` in frame pixels (the detector's output, floats allowed).
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    box_w = max(x2 - x1, 1.0)
    box_h = max(y2 - y1, 1.0)
    if frame_width < 1 or frame_height < 1:
        raise ValueError("empty frame")
    scale = min(float(scale), (frame_height - 1) / box_h, (frame_width - 1) / box_w)
    centre_x = x1 + box_w / 2
    centre_y = y1 + box_h / 2
    half_w = box_w * scale / 2
    half_h = box_h * scale / 2
    left, right = _shift_inside(centre_x - half_w, centre_x + half_w, frame_width)
    top, bottom = _shift_inside(centre_y - half_h, centre_y + half_h, frame_height)
    return int(left), int(top), int(right), int(bottom)


def _shift_inside(low: float, high: float, size: int) -> tuple[float, float]:
    """Shift the interval ``[low, high]`` into ``[0, size]`` without changing its length."""
    if low < 0:
        low, high = 0.0, high - low
    if high > size:
        low, high = low - (high - size), float(size)
    return low, high


def crop_region(frame: np.ndarray, box: Sequence[float], scale: float) -> np.ndarray:
    """The pixels of :func:`crop_window` (a view into ``frame``, HxWxC), at least 1x1."""
    height, width = frame.shape[:2]
    x1, y1, x2, y2 = crop_window(box, scale, width, height)
    x1 = min(max(x1, 0), width - 1)
    y1 = min(max(y1, 0), height - 1)
    return frame[y1 : max(y2 + 1, y1 + 1), x1 : max(x2 + 1, x1 + 1)]


def _axis_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (low, high) and weight of high for each of ``dst`` samples over ``src`` pixels."""
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    low = np.floor(pos)
    frac = pos - low
    frac[low < 0] = 0.0
    low = np.clip(low, 0, src - 1).astype(np.intp)
    frac[low >= src - 1] = 0.0
    high = np.minimum(low + 1, src - 1)
    return low, high, frac.astype(np.float32)


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (HxWxC) resized to ``height`` x ``width`` as float32, like ``cv2.resize(..., INTER_LINEAR)``.

    The rows both taps read are gathered once, then their columns (two copies of the pixels the
    result reads, instead of four 2-D gathers): the same arithmetic, in half the time.
    """
    y0, y1, fy = _axis_taps(image.shape[0], height)
    x0, x1, fx = _axis_taps(image.shape[1], width)
    taps = image[np.concatenate([y0, y1])][:, np.concatenate([x0, x1])].astype(np.float32)  # (2h, 2w, C)
    fx = fx[None, :, None]
    rows = taps[:, :width] * (1 - fx) + taps[:, width:] * fx  # each tapped row resampled across: (2h, w, C)
    fy = fy[:, None, None]
    return rows[:height] * (1 - fy) + rows[height:] * fy


def crop_resized(frame: np.ndarray, box: Sequence[float], scale: float, size: int) -> np.ndarray:
    """The :func:`crop_window` of ``frame`` as a ``size`` x ``size`` float32 image, rounded to 0..255 levels."""
    return np.rint(resize_bilinear(crop_region(frame, box, scale), size, size))
