"""The pgvector gallery: 1:N cosine search over the enrolled face embeddings.

Every model version has its own partial HNSW index on ``(embedding::vector(dim))`` restricted to
``model_version = '<version>'`` (see ``recognition/migrations/0002_hnsw_indexes.py``). The queries
here use exactly that expression and predicate, so the planner picks the index; vectors of another
model version are never compared (they are not even in the index that is scanned).

The version is written into the SQL as a literal (after checking it against
:data:`recognition.models.EMBEDDING_DIMS`), not as a bind parameter: a partial index only matches
a predicate whose value is known when the plan is made, which a generic server-side prepared plan
would not know.

A person has several embeddings (one per accepted enrolment photo). :func:`gallery_search` asks the
index for ``limit_people * neighbours_per_person`` nearest vectors, then scores every person found
exactly on all their embeddings (whichever of their photos the graph walk happened to reach), by the
site's :class:`PersonScore` rule (``settings.RECOGNITION_PERSON_SCORE``): their best photo (the
default, measured best through the real enrolment) or the normalised mean of their photos' vectors
(computed in the statement, so it always holds exactly the person's accepted photos). When the best two
people are nearly tied (``RECOGNITION_SEARCH_ESCALATE_GAP``), the ranking at the top is exactly what
an approximate search gets wrong and what the matcher's margin rule depends on, so those probes are
searched again with a much wider candidate list (``RECOGNITION_HNSW_ESCALATED_EF_SEARCH``). A clear
winner (the usual enrolled face: best ~0.7, runner-up ~0.45) costs one narrow search; near-ties
(strangers, look-alikes) cost a wide one. :func:`exact_search` does the same by a sequential scan
(recall measurement, tests).

``FaceEmbedding`` rows are the gallery: the enrolment services create them only for accepted
photos (see :mod:`recognition.enrollment`), so nothing here filters on photo status.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from accessctl.metrics import GALLERY_SEARCH, Timer
from recognition.metrics import mean_template
from recognition.models import EMBEDDING_DIMS, FaceEmbedding

logger = logging.getLogger(__name__)

# The HNSW candidate list of the first search (settings.RECOGNITION_HNSW_EF_SEARCH) is narrow on
# purpose: what it gets wrong shows up as a near-tie and is searched again wider
# (settings.RECOGNITION_HNSW_ESCALATED_EF_SEARCH, 0: never) when the best two people are closer than
# settings.RECOGNITION_SEARCH_ESCALATE_GAP. bench/search_scale.py, face-like 128-d vectors, 10 %
# strangers among the probes, 2 cores: 100k photos (the migration's index) p50 2.9 ms, recall@1
# 1.000; 1M photos (m=32, ef_construction=128) p50 7.6 ms, recall@1 0.995, 12 % of probes searched
# again (p99 94 ms).
#: How many nearest vectors to fetch per requested person (a person has several embeddings).
DEFAULT_NEIGHBOURS_PER_PERSON = 8
#: pgvector 0.8 iterative index scan: keeps scanning the graph when filtering left too few rows.
ITERATIVE_SCAN = "relaxed_order"
#: Upper bound of tuples an iterative scan may visit (pgvector's default is 20000).
MAX_SCAN_TUPLES = 20000

_TABLE = FaceEmbedding._meta.db_table
#: An index or re-scoring row: (embedding_id, person_id, cosine distance to the probe).
Row = tuple[int, int, float]
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class PersonScore(StrEnum):
    """How a person is scored against a probe (``settings.RECOGNITION_PERSON_SCORE``)."""

    #: Cosine with the normalised mean of the person's (normalised) photo vectors.
    MEAN_TEMPLATE = "mean_template"
    #: Cosine with the person's nearest photo.
    BEST_PHOTO = "best_photo"


def person_score_rule() -> PersonScore:
    """The site's rule, ``settings.RECOGNITION_PERSON_SCORE``."""
    return PersonScore(settings.RECOGNITION_PERSON_SCORE)


class GalleryError(ValueError):
    """A search that cannot be run: unknown model version, wrong dimension, bad vector."""


@dataclass(frozen=True)
class Candidate:
    """The best embedding of one person for a probe; ``similarity`` = 1 - cosine distance."""

    person_id: int
    similarity: float
    embedding_id: int


def dim_for(model_version: str) -> int:
    """Embedding dimension of ``model_version``; :class:`GalleryError` for an unknown version."""
    dim = EMBEDDING_DIMS.get(model_version)
    if dim is None or not _SAFE_VERSION.match(model_version):
        raise GalleryError(f"unknown model version {model_version!r}; known: {', '.join(sorted(EMBEDDING_DIMS))}")
    return dim


def vector_literal(embedding: np.ndarray | Sequence[float], dim: int) -> str:
    """pgvector text form ``[x1,x2,...]`` of a finite, non-zero vector of ``dim`` values."""
    arr = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise GalleryError(f"expected a vector of {dim} values, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise GalleryError("the vector has non-finite values")
    if not np.any(arr):
        raise GalleryError("the vector is all zeros (no direction to compare)")
    return "[" + ",".join(f"{x:.9g}" for x in arr.tolist()) + "]"  # 9 digits: exact for float32


def _nearest_sql(model_version: str, dim: int, probe: str) -> str:
    # model_version is a checked literal (see module docstring); ``probe`` is the vector expression
    # (a parameter, or the LATERAL probe column) and the limit a parameter. The ORDER BY expression
    # is the indexed one.
    return (
        f"SELECT id, person_id, (embedding::vector({dim}) <=> {probe}) AS distance "
        f"FROM {_TABLE} WHERE model_version = '{model_version}' "
        f"ORDER BY embedding::vector({dim}) <=> {probe} LIMIT %s"
    )


def _search_sql(model_version: str, dim: int) -> str:
    return _nearest_sql(model_version, dim, f"%s::vector({dim})")


def _search_many_sql(model_version: str, dim: int) -> str:
    # Probes are numbered from 1 (WITH ORDINALITY); the inner query is _search_sql's, per probe.
    return (
        "SELECT q.n, e.id, e.person_id, e.distance "
        f"FROM unnest(%s::vector({dim})[]) WITH ORDINALITY AS q(v, n) CROSS JOIN LATERAL ("
        f"{_nearest_sql(model_version, dim, 'q.v')}) e"
    )


def _people_sql(dim: int, rows: str) -> str:
    # One row per (probe, person) of ``rows`` (columns n: probe number, id, person_id, embedding,
    # d: cosine distance to the probe): the nearest photo's id, the best-photo distance and the
    # mean-template distance. With unit photo vectors u_i and the probe p, cos(p, sum u_i) =
    # sum cos(p, u_i) / |sum u_i|: the template needs no vector of its own.
    return (
        "SELECT n, (array_agg(id ORDER BY d, id))[1] AS nearest_id, person_id, min(d) AS best_photo, "
        f"1 - sum(1 - d) / NULLIF(vector_norm(sum(l2_normalize(embedding::vector({dim})))), 0) AS mean_template "
        f"FROM ({rows}) r GROUP BY n, person_id"
    )


def _rescore_sql(model_version: str, dim: int) -> str:
    # Every embedding of the given people, with its distance to the probe that found them, scored per
    # person (_people_sql); the probes are numbered from 1 like _search_many_sql's. The person_id
    # index finds the rows.
    return _people_sql(
        dim,
        f"SELECT q.n, e.id, e.person_id, e.embedding, (e.embedding::vector({dim}) <=> q.v) AS d "
        f"FROM unnest(%s::vector({dim})[]) WITH ORDINALITY AS q(v, n) "
        "JOIN unnest(%s::bigint[], %s::bigint[]) AS p(n, person_id) ON p.n = q.n "
        f"JOIN {_TABLE} e ON e.person_id = p.person_id AND e.model_version = '{model_version}'",
    )


def _exact_sql(model_version: str, dim: int, rule: PersonScore) -> str:
    # Every person scored (_people_sql), then the best people by the rule (a checked enum value).
    rows = (
        f"SELECT 1 AS n, id, person_id, embedding, (embedding::vector({dim}) <=> %s::vector({dim})) AS d "
        f"FROM {_TABLE} WHERE model_version = '{model_version}'"
    )
    return (
        f"SELECT nearest_id, person_id, best_photo, mean_template FROM ({_people_sql(dim, rows)}) people "
        f"ORDER BY {PersonScore(rule).value} NULLS LAST, nearest_id LIMIT %s"
    )


def ann_neighbours_many(
    cursor: Any,
    embeddings: Sequence[np.ndarray | Sequence[float]],
    *,
    model_version: str,
    k: int,
    ef_search: int,
) -> list[list[Row]]:
    """The ``k`` nearest embeddings of each probe by the HNSW index, in one statement:
    ``(embedding_id, person_id, distance)`` rows per probe, in order.

    One probe is the plain index query; several are a ``LATERAL`` join over the probe array, in
    which the index is scanned once per probe (the probe is a parameter of the inner scan).
    Runs on any DB-API cursor with ``%s`` placeholders that is inside a transaction: the settings
    are ``SET LOCAL`` (``set_config(..., true)``).
    """
    literals = probe_literals(embeddings, model_version)
    return _scan(cursor, literals, model_version=model_version, k=k, ef_search=ef_search)


def person_rescore_many(
    cursor: Any,
    embeddings: Sequence[np.ndarray | Sequence[float]],
    people: Sequence[Sequence[int]],
    *,
    model_version: str,
) -> list[list[Row]]:
    """Each person of ``people[i]`` scored exactly against ``embeddings[i]`` on all their embeddings
    by the site's :class:`PersonScore` rule: one ``(nearest embedding_id, person_id, distance)`` row
    per person (distance = 1 - the person's score), best first, per probe; one statement."""
    return _rescore(cursor, probe_literals(embeddings, model_version), people, model_version=model_version)


def probe_literals(embeddings: Sequence[np.ndarray | Sequence[float]], model_version: str) -> list[str]:
    """The pgvector literal of each probe, checked against ``model_version``'s dimension."""
    dim = dim_for(model_version)
    return [vector_literal(embedding, dim) for embedding in embeddings]


def _scan(cursor: Any, literals: Sequence[str], *, model_version: str, k: int, ef_search: int) -> list[list[Row]]:
    """:func:`ann_neighbours_many` of probes already in pgvector's text form."""
    dim = dim_for(model_version)
    if k < 1:
        raise GalleryError("k must be at least 1")
    ef = max(int(ef_search), 1)
    cursor.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', %s, true), "
        "set_config('hnsw.max_scan_tuples', %s, true)",
        [str(ef), ITERATIVE_SCAN, str(max(MAX_SCAN_TUPLES, ef))],
    )
    if len(literals) == 1:
        cursor.execute(_search_sql(model_version, dim), [literals[0], literals[0], int(k)])
        found = [[(int(r[0]), int(r[1]), float(r[2])) for r in cursor.fetchall()]]
    else:
        cursor.execute(_search_many_sql(model_version, dim), [list(literals), int(k)])
        found = _by_probe(len(literals), cursor.fetchall())
    # relaxed_order may return rows slightly out of order: sort them.
    for rows in found:
        rows.sort(key=lambda r: (r[2], r[0]))
    return found


def _rescore(
    cursor: Any, literals: Sequence[str], people: Sequence[Sequence[int]], *, model_version: str
) -> list[list[Row]]:
    """:func:`person_rescore_many` of probes already in pgvector's text form."""
    numbers = [n for n, ids in enumerate(people, start=1) for _ in ids]
    person_ids = [int(person_id) for ids in people for person_id in ids]
    if not person_ids:
        return [[] for _ in literals]
    cursor.execute(_rescore_sql(model_version, dim_for(model_version)), [list(literals), numbers, person_ids])
    found: list[list[Row]] = [[] for _ in literals]
    for probe, *scored in cursor.fetchall():
        found[int(probe) - 1].append(_person_row(*scored))
    for rows in found:
        rows.sort(key=lambda r: (r[2], r[0]))
    return found


def _person_row(embedding_id: int, person_id: int, best_photo: float, template: float | None) -> Row:
    """A person's row by the site's rule from _people_sql's columns (a template without direction,
    never seen: no match)."""
    if person_score_rule() is PersonScore.BEST_PHOTO:
        return (int(embedding_id), int(person_id), float(best_photo))
    return (int(embedding_id), int(person_id), 2.0 if template is None else float(template))


def _by_probe(count: int, fetched: Sequence[Sequence[Any]]) -> list[list[Row]]:
    """Rows ``(probe number from 1, embedding_id, person_id, distance)`` grouped per probe."""
    found: list[list[Row]] = [[] for _ in range(count)]
    for probe, embedding_id, person_id, distance in fetched:
        found[int(probe) - 1].append((int(embedding_id), int(person_id), float(distance)))
    return found


def best_per_person(rows: Sequence[Row], limit_people: int) -> list[Candidate]:
    """Keep the closest embedding of each person, best people first (rows sorted by distance)."""
    seen: dict[int, Candidate] = {}
    for embedding_id, person_id, distance in sorted(rows, key=lambda r: (r[2], r[0])):
        if person_id in seen:
            continue
        seen[person_id] = Candidate(person_id=person_id, similarity=1.0 - distance, embedding_id=embedding_id)
        if len(seen) >= limit_people:
            break
    return list(seen.values())


def default_ef_search() -> int:
    """``settings.RECOGNITION_HNSW_EF_SEARCH``."""
    return int(settings.RECOGNITION_HNSW_EF_SEARCH)


def gallery_search(
    embedding: np.ndarray | list[float],
    *,
    model_version: str,
    limit_people: int = 5,
    ef_search: int | None = None,
    neighbours_per_person: int = DEFAULT_NEIGHBOURS_PER_PERSON,
    escalated_ef_search: int | None = None,
    escalate_gap: float | None = None,
) -> list[Candidate]:
    """The ``limit_people`` people closest to ``embedding`` (HNSW, cosine), best first.

    Only embeddings of ``model_version`` are searched. ``ef_search`` defaults to
    :func:`default_ef_search`; a near-tie at the top is searched again wider (see
    :func:`gallery_search_many`). Raises :class:`GalleryError` for an unknown model version or a
    vector of the wrong dimension.
    """
    return gallery_search_many(
        [embedding],
        model_version=model_version,
        limit_people=limit_people,
        ef_search=ef_search,
        neighbours_per_person=neighbours_per_person,
        escalated_ef_search=escalated_ef_search,
        escalate_gap=escalate_gap,
    )[0]


def gallery_search_many(
    embeddings: Sequence[np.ndarray | Sequence[float]],
    *,
    model_version: str,
    limit_people: int = 5,
    ef_search: int | None = None,
    neighbours_per_person: int = DEFAULT_NEIGHBOURS_PER_PERSON,
    escalated_ef_search: int | None = None,
    escalate_gap: float | None = None,
) -> list[list[Candidate]]:
    """:func:`gallery_search` for several probes together: each step is one statement for all
    probes (one index scan per probe); the candidates of each probe, in the order of ``embeddings``.

    Every person found is scored exactly on all their embeddings; probes whose best two people are
    within ``escalate_gap`` are searched again with ``escalated_ef_search`` (module docstring).
    Both default to the settings (:func:`escalation_defaults`).
    """
    if limit_people < 1:
        raise GalleryError("limit_people must be at least 1")
    if not embeddings:
        return []
    k = limit_people * max(neighbours_per_person, 1)
    if ef_search is None:
        ef_search = default_ef_search()
    default_wide, default_gap = escalation_defaults()
    wide = default_wide if escalated_ef_search is None else escalated_ef_search
    gap = default_gap if escalate_gap is None else escalate_gap
    literals = probe_literals(embeddings, model_version)  # formatted once for every statement below
    # No savepoint inside a caller's transaction (the decision's): SET LOCAL lasts until it ends.
    with Timer() as took, transaction.atomic(savepoint=False), connection.cursor() as cursor:
        rows = _scan(cursor, literals, model_version=model_version, k=k, ef_search=max(ef_search, k))
        rows = _rescored(cursor, literals, rows, model_version)
        again = [i for i, probe_rows in enumerate(rows) if wide > ef_search and _nearly_tied(probe_rows, gap)]
        if again:
            again_literals = [literals[i] for i in again]
            wider = _scan(cursor, again_literals, model_version=model_version, k=k, ef_search=max(wide, k))
            wider = _rescored(cursor, again_literals, wider, model_version)
            for i, more in zip(again, wider, strict=True):
                rows[i] = _merged(rows[i], more)
    GALLERY_SEARCH.labels(model_version).observe(took.seconds)
    return [best_per_person(probe_rows, limit_people) for probe_rows in rows]


def escalation_defaults() -> tuple[int, float]:
    """(escalated ef_search, gap): ``settings.RECOGNITION_HNSW_ESCALATED_EF_SEARCH`` and
    ``settings.RECOGNITION_SEARCH_ESCALATE_GAP``."""
    return int(settings.RECOGNITION_HNSW_ESCALATED_EF_SEARCH), float(settings.RECOGNITION_SEARCH_ESCALATE_GAP)


def _rescored(cursor: Any, literals: Sequence[str], rows: list[list[Row]], model_version: str) -> list[list[Row]]:
    """Every person the index found for each probe (``rows``), scored exactly: one row per person.

    All of them, not only the nearest few: a person's mean template can outscore the photo-nearest
    people (their photos disagree with each other more than with the probe)."""
    people = [sorted({person_id for _, person_id, _ in probe_rows}) for probe_rows in rows]
    return _rescore(cursor, literals, people, model_version=model_version)


def _merged(rows: Sequence[Row], more: Sequence[Row]) -> list[Row]:
    """Per-person rows of two searches of one probe (a person scored twice scores the same)."""
    by_person = {row[1]: row for row in rows}
    by_person.update((row[1], row) for row in more)
    return sorted(by_person.values(), key=lambda r: (r[2], r[0]))


def _nearly_tied(rows: Sequence[Row], gap: float) -> bool:
    """Whether the best two people of ``rows`` are within ``gap`` (False with fewer than two)."""
    best = best_per_person(rows, 2)
    return len(best) == 2 and best[0].similarity - best[1].similarity < gap


def exact_search(
    embedding: np.ndarray | list[float],
    *,
    model_version: str,
    limit_people: int = 5,
) -> list[Candidate]:
    """Like :func:`gallery_search` but by a sequential scan over everyone: exact, slow on big galleries."""
    if limit_people < 1:
        raise GalleryError("limit_people must be at least 1")
    dim = dim_for(model_version)
    literal = vector_literal(embedding, dim)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('enable_indexscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
        )
        cursor.execute(_exact_sql(model_version, dim, person_score_rule()), [literal, int(limit_people)])
        rows = [_person_row(*r) for r in cursor.fetchall()]
    return [Candidate(person_id=r[1], similarity=1.0 - r[2], embedding_id=r[0]) for r in rows]


def explain_search(embedding: np.ndarray | list[float], *, model_version: str, k: int = 10, probes: int = 1) -> str:
    """``EXPLAIN`` of the ANN query (tests and diagnostics: shows which index is used); with
    ``probes`` > 1, of the statement that searches that many copies of ``embedding`` together."""
    dim = dim_for(model_version)
    literal = vector_literal(embedding, dim)
    with transaction.atomic(), connection.cursor() as cursor:
        if probes > 1:
            cursor.execute("EXPLAIN " + _search_many_sql(model_version, dim), [[literal] * probes, int(k)])
        else:
            cursor.execute("EXPLAIN " + _search_sql(model_version, dim), [literal, literal, int(k)])
        return "\n".join(r[0] for r in cursor.fetchall())


def gallery_templates(person_ids: Sequence[int], model_version: str) -> dict[int, list[np.ndarray]]:
    """Every gallery vector of ``person_ids`` in ``model_version`` (the accepted photos: rejected
    and erased ones have no ``FaceEmbedding`` row), per person in a stable order (by id).

    Read as text and parsed by numpy in one go (the ORM's per-row parsing was most of the time of
    a 10,000-person allow-list); an unusable vector (wrong length, non-finite, zero) is left out.
    """
    dim = dim_for(model_version)
    ids = list(person_ids)
    if not ids:
        return {}
    owners: list[int] = []
    texts: list[str] = []
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT person_id, embedding::text FROM {_TABLE} WHERE model_version = %s AND person_id = ANY(%s) "
            "ORDER BY person_id, id",
            [model_version, ids],
        )
        for person_id, text in cursor.fetchall():
            owners.append(person_id)
            texts.append(text.strip("[]"))
    out: dict[int, list[np.ndarray]] = {}
    for person_id, text in zip(owners, texts, strict=True):
        arr = np.fromstring(text, dtype=np.float32, sep=",")
        if arr.shape[0] != dim or not np.all(np.isfinite(arr)) or not np.any(arr):
            logger.warning("embedding of person %s in %s is unusable; left out", person_id, model_version)
            continue
        out.setdefault(person_id, []).append(arr)
    return out


def person_templates(person_ids: Sequence[int], model_version: str) -> dict[int, list[np.ndarray]]:
    """What each person of ``person_ids`` is compared with under the site's :class:`PersonScore`
    rule, so that a face's score is its best cosine over them: the mean template (one vector) or
    every photo vector (:func:`gallery_templates`). The search scores people this way in SQL; this is
    for what scores them elsewhere (a device's allow-list, evaluations)."""
    found = gallery_templates(person_ids, model_version)
    if person_score_rule() is PersonScore.BEST_PHOTO:
        return found
    return {person_id: [mean_template(vectors)] for person_id, vectors in found.items()}


def gallery_people_count(model_version: str) -> int:
    """How many people hold at least one gallery vector of ``model_version`` (the size a 1:N search
    of that version is against: :func:`recognition.calibration.threshold_for` sizes its threshold by it)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(DISTINCT person_id) FROM {_TABLE} WHERE model_version = %s", [model_version])
        return int(cursor.fetchone()[0])
