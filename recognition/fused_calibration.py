"""The threshold of a fused match, measured: how much K fused probes shift the impostor scores.

Fusing a track's K probes (``recognition.track_fusion``) changes the score a stranger gets against
a person: an averaged embedding sits nearer the centre of its own identity and can drift towards a
look-alike; a mean of scores is narrower than one score; a max of K scores is higher. One threshold
for both keeps neither the same stranger acceptance.

:func:`fused_offset` compares impostor (probe, other person) scores of single probes and of fused
attempts and returns the shift that gives fused attempts the same pair false-match rate as one
probe has at the door's threshold: ``offset = t_K - t_1`` with ``t_1`` and ``t_K`` the thresholds
of that rate on each distribution (:func:`recognition.metrics.threshold_for_far`). When the door's
threshold leaves fewer than ``min_tail`` single impostor scores above it, the rate is raised until
both distributions hold ``min_tail`` (the tail's shift is taken as the shift at the threshold).

The offset is stored per rule and K (:func:`recognition.calibration.store_fused_offsets`) and
added to the threshold of a fused match. ``manage.py evaluate_door --store-fused-offsets`` measures
it on the evaluation's own embeddings: (probe or attempt, every enrolled person but their own) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recognition.metrics import threshold_for_far

#: Fewest impostor scores above the threshold on each side before an offset is trusted.
MIN_TAIL = 25


@dataclass(frozen=True)
class FusedOffset:
    offset: float
    pair_rate: float
    single_threshold: float
    fused_threshold: float
    single_pairs: int
    fused_pairs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def person_scores(vectors: np.ndarray, templates: Sequence[np.ndarray]) -> np.ndarray:
    """``(n probes, people)`` cosine similarity of each normalised probe to each person: the best over
    ``templates[p]`` (that person's normalised vectors, one per row:
    :func:`recognition.gallery.person_templates`)."""
    probes = np.asarray(vectors, dtype=np.float64)
    return np.stack([(probes @ np.asarray(t, dtype=np.float64).T).max(axis=1) for t in templates], axis=1)


def fused_offset(
    single_impostor: np.ndarray, fused_impostor: np.ndarray, *, threshold: float, min_tail: int = MIN_TAIL
) -> FusedOffset:
    """The offset (module docstring) from impostor scores of single probes and of fused attempts."""
    single = np.asarray(single_impostor, dtype=np.float64).ravel()
    fused = np.asarray(fused_impostor, dtype=np.float64).ravel()
    if single.size < min_tail or fused.size < min_tail:
        raise ValueError(f"need at least {min_tail} impostor scores on each side")
    rate = max(float((single >= threshold).mean()), min_tail / single.size, min_tail / fused.size)
    t1 = threshold_for_far(single, rate)
    tk = threshold_for_far(fused, rate)
    return FusedOffset(
        offset=round(tk - t1, 6),
        pair_rate=rate,
        single_threshold=round(t1, 6),
        fused_threshold=round(tk, 6),
        single_pairs=int(single.size),
        fused_pairs=int(fused.size),
    )
