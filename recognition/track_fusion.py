"""Decide on a track, not one frame: fuse the K probes a door sent for one person into one match.

A detection may carry, besides its best crop (or embedding), the next best ones of the same track
(``track_probes`` on the wire, see ``faceengine/PROTOCOL.md``). Each is embedded like the main one;
:func:`tracks_match` turns each track's probes into one :class:`~recognition.matcher.MatchResult`
by one of the :class:`FusionRule` s:

* ``mean_embedding`` / ``quality_embedding``: the (quality-weighted) mean of the normalised
  embeddings, searched as one probe;
* ``mean_score`` / ``quality_score`` / ``max_score``: every probe is searched; for each person any
  probe found, the similarity of every probe to that person (scored exactly, by the gallery's person score) is
  fused by the (quality-weighted) mean or the max; the threshold and margin rules of the matcher
  apply to the fused similarities.

A fused match meets its own threshold: :func:`recognition.calibration.threshold_for` with
``probes_fused`` = K and the rule, i.e. the one-face threshold plus the offset measured for that
rule and K (``manage.py evaluate_door --store-fused-offsets``; none stored: the one-face threshold).

Weights are :func:`faceengine.quality.quality_rank` of each probe's quality metrics (never below
:data:`MIN_WEIGHT`, so that a probe the door measured badly still counts a little). A track of one
probe is matched exactly as a single detection (:func:`recognition.matcher.match_decide_many`).

:data:`TRACK_FUSION_RULE` is the server's rule, chosen by ``manage.py evaluate_door --fusion all``
on celeba-dev (figures next to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from django.db import connection, transaction

from faceengine.quality import quality_rank
from recognition.calibration import margin_for, threshold_for
from recognition.gallery import Candidate, best_per_person, gallery_search_many, person_rescore_many
from recognition.matcher import MatchResult, decide_candidates, match_decide_many

if TYPE_CHECKING:
    from accessctl.models import Door

#: Lowest weight of a probe in the quality-weighted rules.
MIN_WEIGHT = 0.05
#: People looked up per probe for the score rules (the union over the track is scored exactly).
PEOPLE_PER_PROBE = 3


class FusionRule(StrEnum):
    MEAN_EMBEDDING = "mean_embedding"
    QUALITY_EMBEDDING = "quality_embedding"
    MEAN_SCORE = "mean_score"
    QUALITY_SCORE = "quality_score"
    MAX_SCORE = "max_score"


#: The server's rule for a detection with track probes. celeba-dev (in-the-wild; 2 splits of 90
#: enrolled with up to 3 photos through the real enrolment, 30 strangers; sface, people scored by
#: their best photo, at the one-face threshold 0.476 (no fused offset then); ``manage.py evaluate_door
#: --data DIR --probes-per-attempt 1,3 --fusion all --person-score all --seed 0,1``), enrolled
#: rejected / strangers accepted / wrong person admitted:
#:   K=1 (one face)        5.32 % (67/1259)  0.67 % (4/596)   0.24 %
#:   K=3 mean_embedding    1.39 % (5/360)    1.67 % (3/180)   0.28 %
#:   K=3 quality_embedding 1.67 % (6/360)    0.56 % (1/180)   0.28 %
#:   K=3 mean_score        4.17 % (15/360)   0.56 % (1/180)   0.28 %
#:   K=3 quality_score     3.89 % (14/360)   0.56 % (1/180)   0.28 %
#:   K=3 max_score         1.67 % (6/360)    1.67 % (3/180)   0.28 %
#: quality_embedding rejects less than half what the score means reject at the same stranger count
#: and lets in fewer strangers than the plain mean or the max; its measured fused offset (+0.0145,
#: ``recognition.calibration.BUILTIN_FUSED_OFFSETS``) now raises its threshold to the one-face pair
#: false-match rate (figures at that threshold not measured yet). 180 stranger attempts resolve
#: ~1 %. The wrong admissions are one identity pair of the data set that look alike (or are the same
#: person under two labels). Known risk: an averaged embedding can match where no single face did (a
#: look-alike whose frames differ); the score means cannot (their fused similarity never exceeds the
#: best face's).
TRACK_FUSION_RULE = FusionRule.QUALITY_EMBEDDING


def probe_weights(qualities: Sequence[dict[str, float] | None]) -> list[float]:
    """The weight of each probe from its quality metrics (None: weight 1)."""
    return [1.0 if q is None else max(MIN_WEIGHT, float(quality_rank(q))) for q in qualities]


def _normalised(vector: np.ndarray | Sequence[float]) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def fused_embedding(vectors: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The (weighted) mean of the normalised ``vectors``, normalised."""
    stack = np.stack([_normalised(v) for v in vectors])
    w = np.ones(len(vectors), dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
    return _normalised((stack * w[:, None]).sum(axis=0))


def tracks_match(
    tracks: Sequence[Sequence[np.ndarray]],
    *,
    model_version: str,
    doors: Sequence[Door | None],
    weights: Sequence[Sequence[float] | None] | None = None,
    rule: FusionRule | str = TRACK_FUSION_RULE,
) -> list[MatchResult]:
    """One match per track (``tracks[i]``: its probes, main one first, seen at ``doors[i]``)."""
    rule = FusionRule(rule)
    if len(doors) != len(tracks) or (weights is not None and len(weights) != len(tracks)):
        raise ValueError("one door (and one weight list) per track")
    if any(not probes for probes in tracks):
        raise ValueError("a track has at least one probe")
    track_weights = [
        [1.0] * len(probes) if weights is None or weights[i] is None else list(weights[i])  # type: ignore[arg-type]
        for i, probes in enumerate(tracks)
    ]
    if not rule.value.startswith("quality"):
        track_weights = [[1.0] * len(probes) for probes in tracks]
    results: list[MatchResult | None] = [None] * len(tracks)
    single = [i for i, probes in enumerate(tracks) if len(probes) == 1]
    if rule in (FusionRule.MEAN_EMBEDDING, FusionRule.QUALITY_EMBEDDING):
        fused_ids = list(range(len(tracks)))
        vectors = [
            tracks[i][0] if len(tracks[i]) == 1 else fused_embedding(tracks[i], track_weights[i]) for i in fused_ids
        ]
        for i, match in zip(
            fused_ids,
            match_decide_many(
                vectors,
                model_version=model_version,
                doors=[doors[i] for i in fused_ids],
                probes_fused=[len(tracks[i]) for i in fused_ids],
                fusion=rule.value,
            ),
            strict=True,
        ):
            results[i] = match
        return results  # type: ignore[return-value]
    if single:
        for i, match in zip(
            single,
            match_decide_many(
                [tracks[i][0] for i in single], model_version=model_version, doors=[doors[i] for i in single]
            ),
            strict=True,
        ):
            results[i] = match
    several = [i for i, probes in enumerate(tracks) if len(probes) > 1]
    if several:
        for i, match in zip(
            several, _score_fused(tracks, several, track_weights, rule, model_version, doors), strict=True
        ):
            results[i] = match
    return results  # type: ignore[return-value]


def _score_fused(
    tracks: Sequence[Sequence[np.ndarray]],
    ids: list[int],
    track_weights: list[list[float]],
    rule: FusionRule,
    model_version: str,
    doors: Sequence[Door | None],
) -> list[MatchResult]:
    probes = [tracks[i][j] for i in ids for j in range(len(tracks[i]))]
    owner = [n for n, i in enumerate(ids) for _ in tracks[i]]
    found = gallery_search_many(probes, model_version=model_version, limit_people=PEOPLE_PER_PROBE)
    people: list[list[int]] = [[] for _ in ids]
    for n, candidates in zip(owner, found, strict=True):
        for candidate in candidates:
            if candidate.person_id not in people[n]:
                people[n].append(candidate.person_id)
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        rows = person_rescore_many(cursor, probes, [people[n] for n in owner], model_version=model_version)
    # similarity[track][person] = one value per probe (the person's score for that probe)
    scores: list[dict[int, list[float]]] = [{} for _ in ids]
    best_photo: list[dict[int, tuple[float, int]]] = [{} for _ in ids]
    for n, probe_rows in zip(owner, rows, strict=True):
        for candidate in best_per_person(probe_rows, max(len(people[n]), 1)):
            scores[n].setdefault(candidate.person_id, []).append(candidate.similarity)
            kept = best_photo[n].get(candidate.person_id)
            if kept is None or candidate.similarity > kept[0]:
                best_photo[n][candidate.person_id] = (candidate.similarity, candidate.embedding_id)
    min_margin = margin_for(model_version)
    out: list[MatchResult] = []
    for n, i in enumerate(ids):
        w = np.asarray(track_weights[i], dtype=np.float64)
        fused: list[Candidate] = []
        for person_id, values in scores[n].items():
            if len(values) != len(w):  # a person without photos any more (erased meanwhile): skip
                continue
            v = np.asarray(values, dtype=np.float64)
            value = float(v.max()) if rule is FusionRule.MAX_SCORE else float((v * w).sum() / w.sum())
            fused.append(Candidate(person_id=person_id, similarity=value, embedding_id=best_photo[n][person_id][1]))
        fused.sort(key=lambda c: (-c.similarity, c.person_id))
        out.append(
            decide_candidates(
                fused[:2],
                threshold_for(model_version, doors[i], probes_fused=len(tracks[i]), fusion=rule.value),
                min_margin,
                model_version,
                doors[i],
            )
        )
    return out
