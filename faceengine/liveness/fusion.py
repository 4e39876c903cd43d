"""How a track's per-frame live scores become the track's score (the edge agent's ``[liveness]
fusion``, and ``evaluate_liveness --track-frames``, which judges recorded frames the same way).

- ``median`` (the agent's default): the median of all the track's frame scores;
- ``top_k``: the mean of the best ``k`` frame scores (all of them when there are fewer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: the fusions by name
FUSIONS = ("median", "top_k")


def fuse_top_k(scores: Sequence[float], k: int) -> float | None:
    """The mean of the best ``k`` scores (all of them when there are fewer); None when empty.

    The best frames, not all of them: a live face turning away or blurring for a few frames must
    not look like an attack, while a printed photo rarely scores high on any frame.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if not scores:
        return None
    best = sorted(scores, reverse=True)[:k]
    return float(min(1.0, max(0.0, sum(best) / len(best))))


def fuse_median(scores: Sequence[float]) -> float | None:
    """The median of the track's frame scores; None when empty.

    Robust both ways: a printed photo's few frames that happen to score high (a reflection, a
    bend) do not lift it, and a live face's few blurred or turned frames do not sink it. On
    nuaa-dev (``evaluate_liveness --track-frames 11``, threshold 0.0501) it accepted none of 64
    printed-photo tracks where the mean of the best 3 accepted 3 (MTCNN's boxes) or 6 (YuNet's
    redrawn by R-Net and O-Net); neither rejected any of 54 live tracks.
    """
    if not scores:
        return None
    return float(min(1.0, max(0.0, float(np.median(np.asarray(scores, dtype=np.float64))))))


def fuse(scores: Sequence[float], fusion: str, *, k: int = 3) -> float | None:
    """``scores`` fused by the named ``fusion`` (:data:`FUSIONS`); None when empty."""
    if fusion == "median":
        return fuse_median(scores)
    if fusion == "top_k":
        return fuse_top_k(scores, k)
    raise ValueError(f"unknown liveness fusion {fusion!r} (expected one of {FUSIONS})")
