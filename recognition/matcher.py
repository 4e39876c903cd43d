"""Open-set 1:N decision: who is this face, if anyone we know?

:func:`match_decide` searches the gallery for the two closest people of the same model version
and decides:

* the best similarity is below the threshold -> ``UNKNOWN_FACE`` (open set: strangers are expected);
* the two best people are both at or above the threshold and their similarities are closer than
  the minimum margin -> ``AMBIGUOUS_MATCH`` (no one is granted: better ask again than pick wrong);
* otherwise -> ``MATCHED`` with the best person.

The threshold comes from :func:`recognition.calibration.threshold_for` (door override first) and
the margin from :func:`recognition.calibration.margin_for`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from accessctl.codes import Reason
from recognition.calibration import margin_for, threshold_for
from recognition.gallery import Candidate, escalation_defaults, gallery_search_many

if TYPE_CHECKING:
    from accessctl.models import Door

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MatchResult:
    """Outcome of a 1:N match.

    ``person_id`` is set only for ``MATCHED``. ``best_person_id`` is the nearest person whatever
    the decision (for audit and review, never for granting). ``similarity`` and
    ``second_similarity`` are the cosine similarities of the two best people (None when the
    gallery has fewer); ``margin`` is their difference (None without a second person).
    """

    person_id: int | None
    similarity: float | None
    second_similarity: float | None
    margin: float | None
    threshold: float
    reason: Reason
    model_version: str
    min_margin: float
    best_person_id: int | None = None
    embedding_id: int | None = None
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)

    @property
    def matched(self) -> bool:
        return self.reason is Reason.MATCHED


def match_decide(
    embedding: np.ndarray | list[float],
    *,
    model_version: str,
    door: Door | None = None,
    ef_search: int | None = None,
) -> MatchResult:
    """Decide who ``embedding`` (of ``model_version``) is, at ``door`` (threshold override)."""
    return match_decide_many([embedding], model_version=model_version, doors=[door], ef_search=ef_search)[0]


def match_decide_many(
    embeddings: Sequence[np.ndarray | list[float]],
    *,
    model_version: str,
    doors: Sequence[Door | None],
    ef_search: int | None = None,
    probes_fused: Sequence[int] | None = None,
    fusion: str | None = None,
) -> list[MatchResult]:
    """:func:`match_decide` for several probes of one model version (one gallery statement);
    ``doors[i]`` is where ``embeddings[i]`` was seen. ``probes_fused[i]`` > 1: ``embeddings[i]``
    is K probes fused by ``fusion`` (its threshold: :func:`recognition.calibration.threshold_for`)."""
    if len(doors) != len(embeddings) or (probes_fused is not None and len(probes_fused) != len(embeddings)):
        raise ValueError("one door (or None) and one probe count per embedding")
    fused = list(probes_fused) if probes_fused is not None else [1] * len(embeddings)
    min_margin = margin_for(model_version)
    # An ambiguous-match decision (margin below min_margin) always rests on the wide search.
    escalate_gap = max(escalation_defaults()[1], min_margin)
    found = gallery_search_many(
        embeddings, model_version=model_version, limit_people=2, ef_search=ef_search, escalate_gap=escalate_gap
    )
    return [
        decide_candidates(
            candidates,
            threshold_for(model_version, door, probes_fused=k, fusion=fusion),
            min_margin,
            model_version,
            door,
        )
        for candidates, door, k in zip(found, doors, fused, strict=True)
    ]


def decide_candidates(
    candidates: Sequence[Candidate], threshold: float, min_margin: float, model_version: str, door: Door | None
) -> MatchResult:
    """The open-set decision (module docstring) on ``candidates``, best first (the best two count)."""
    best = candidates[0] if candidates else None
    second = candidates[1] if len(candidates) > 1 else None
    similarity = best.similarity if best else None
    second_similarity = second.similarity if second else None
    margin = similarity - second_similarity if similarity is not None and second_similarity is not None else None

    if best is None or best.similarity < threshold:
        reason = Reason.UNKNOWN_FACE
    elif second is not None and second.similarity >= threshold and margin is not None and margin < min_margin:
        reason = Reason.AMBIGUOUS_MATCH
    else:
        reason = Reason.MATCHED

    result = MatchResult(
        person_id=best.person_id if best is not None and reason is Reason.MATCHED else None,
        similarity=similarity,
        second_similarity=second_similarity,
        margin=margin,
        threshold=threshold,
        reason=reason,
        model_version=model_version,
        min_margin=min_margin,
        best_person_id=best.person_id if best else None,
        embedding_id=best.embedding_id if best else None,
        candidates=tuple(candidates),
    )
    logger.debug(
        "match %s: %s (best %s, similarity %s, margin %s, threshold %.3f, door %s)",
        model_version,
        reason,
        result.best_person_id,
        None if similarity is None else round(similarity, 4),
        None if margin is None else round(margin, 4),
        threshold,
        getattr(door, "pk", None),
    )
    return result
