"""pgvector gallery search: per-person aggregation, model-version isolation, index use."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from accessctl.models import Person
from recognition.gallery import (
    Candidate,
    GalleryError,
    best_per_person,
    exact_search,
    explain_search,
    gallery_search,
    gallery_search_many,
    person_templates,
)
from recognition.metrics import mean_template
from recognition.models import EMBEDDING_DIMS, FaceEmbedding

SFACE = "sface-2021dec-int8bq"
FACENET = "facenet-casia-20180408"


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def add(person: Person, vector: np.ndarray, model_version: str = SFACE) -> FaceEmbedding:
    return FaceEmbedding.objects.create(person=person, model_version=model_version, embedding=vector.tolist())


def person_score(probe: np.ndarray, person: Person, rule: str) -> float:
    """The score the rule gives ``person`` for ``probe``, computed here in numpy."""
    vectors = [np.asarray(e.embedding) for e in person.embeddings.filter(model_version=SFACE)]
    if rule == "best_photo":
        return max(float(np.dot(probe, v)) for v in vectors)
    return float(np.dot(probe, mean_template(vectors)))


@pytest.fixture(params=["mean_template", "best_photo"])
def rule(request: pytest.FixtureRequest, settings) -> str:
    settings.RECOGNITION_PERSON_SCORE = request.param
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.fixture
def clustered(rng: np.random.Generator) -> tuple[list[Person], np.ndarray, np.ndarray]:
    """Six people with four noisy samples each around their own centre (128-d, unit vectors)."""
    centres = np.stack([unit(rng.normal(size=128)) for _ in range(6)])
    people = [Person.objects.create(name=f"p{i}") for i in range(6)]
    for person, centre in zip(people, centres, strict=True):
        for _ in range(4):
            add(person, unit(centre + rng.normal(scale=0.06, size=128)))
    return people, centres, rng.normal(scale=0.06, size=(6, 128))


@pytest.mark.django_db
def test_search_scores_each_person_once(clustered: tuple[list[Person], np.ndarray, np.ndarray], rule: str) -> None:
    people, centres, noise = clustered
    for i, person in enumerate(people):
        probe = unit(centres[i] + noise[i])
        found = gallery_search(probe, model_version=SFACE, limit_people=3)
        assert [c.person_id for c in found][:1] == [person.pk]
        assert len({c.person_id for c in found}) == len(found) == 3, "one candidate per person"
        assert found[0].similarity > 0.6 > found[1].similarity
        assert all(a.similarity >= b.similarity for a, b in itertools.pairwise(found))
        nearest = FaceEmbedding.objects.get(pk=found[0].embedding_id)
        own = [np.dot(probe, np.asarray(e.embedding)) for e in person.embeddings.all()]
        assert nearest.person_id == person.pk
        assert np.dot(probe, np.asarray(nearest.embedding)) == pytest.approx(max(own), abs=1e-5), "the nearest photo"
        assert found[0].similarity == pytest.approx(person_score(probe, person, rule), abs=1e-5)
        # the index answers exactly what a sequential scan answers on this small gallery
        assert found == exact_search(probe, model_version=SFACE, limit_people=3)


@pytest.mark.django_db
def test_model_versions_are_never_mixed(rng: np.random.Generator) -> None:
    alice = Person.objects.create(name="Alice")
    bob = Person.objects.create(name="Bob")
    probe = unit(rng.normal(size=128))
    add(alice, unit(probe + rng.normal(scale=0.3, size=128)))
    # Bob's vector of another model starts with exactly the probe: it must never be compared.
    add(bob, unit(np.concatenate([probe, np.zeros(EMBEDDING_DIMS[FACENET] - 128)])), model_version=FACENET)
    for search in (gallery_search, exact_search):
        found = search(probe, model_version=SFACE, limit_people=5)
        assert [c.person_id for c in found] == [alice.pk]
    facenet_probe = unit(np.concatenate([probe, np.zeros(384)]))
    assert [c.person_id for c in gallery_search(facenet_probe, model_version=FACENET)] == [bob.pk]


@pytest.mark.django_db
def test_empty_gallery_returns_nothing(rng: np.random.Generator) -> None:
    assert gallery_search(unit(rng.normal(size=128)), model_version=SFACE) == []


@pytest.mark.django_db
def test_bad_queries_raise(rng: np.random.Generator) -> None:
    with pytest.raises(GalleryError, match="unknown model version"):
        gallery_search(unit(rng.normal(size=128)), model_version="made-up-1")
    with pytest.raises(GalleryError, match="128"):
        gallery_search(unit(rng.normal(size=512)), model_version=SFACE)
    with pytest.raises(GalleryError, match="non-finite"):
        gallery_search(np.full(128, np.nan), model_version=SFACE)
    with pytest.raises(GalleryError, match="zeros"):
        exact_search(np.zeros(128), model_version=SFACE)
    with pytest.raises(GalleryError):
        gallery_search(unit(rng.normal(size=128)), model_version=SFACE, limit_people=0)


@pytest.mark.django_db
def test_query_uses_the_partial_hnsw_index(rng: np.random.Generator) -> None:
    from django.db import connection

    person = Person.objects.create(name="Carol")
    FaceEmbedding.objects.bulk_create(
        FaceEmbedding(person=person, model_version=SFACE, embedding=unit(rng.normal(size=128)).tolist())
        for _ in range(50)
    )
    with connection.cursor() as cursor:
        # A 50-row table is cheaper to scan; forbid that to see that the query matches the index
        # (same expression, same partial predicate). SET LOCAL ends with the test's transaction.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL enable_sort = off")  # nor the model_version btree followed by a sort
    plan = explain_search(unit(rng.normal(size=128)), model_version=SFACE, k=10)
    assert "face_hnsw_sface_2021dec_int8bq" in plan, plan
    # Several probes in one statement: the same index, scanned once per probe.
    plan = explain_search(unit(rng.normal(size=128)), model_version=SFACE, k=10, probes=3)
    assert "face_hnsw_sface_2021dec_int8bq" in plan and "Nested Loop" in plan, plan


@pytest.mark.django_db
def test_search_many_equals_one_search_per_probe(clustered: tuple[list[Person], np.ndarray, np.ndarray]) -> None:
    people, centres, noise = clustered
    probes = [unit(centres[i] + noise[i]) for i in range(len(people))] + [unit(noise[0])]
    together = gallery_search_many(probes, model_version=SFACE, limit_people=3)
    assert together == [gallery_search(probe, model_version=SFACE, limit_people=3) for probe in probes]
    assert [found[0].person_id for found in together[:-1]] == [person.pk for person in people]
    assert gallery_search_many([], model_version=SFACE) == []
    with pytest.raises(GalleryError):
        gallery_search_many([probes[0], np.ones(64)], model_version=SFACE)


def test_best_per_person_aggregates_sorted_rows() -> None:
    rows = [(1, 10, 0.30), (2, 10, 0.10), (3, 20, 0.20), (4, 30, 0.50), (5, 20, 0.05)]
    assert best_per_person(rows, 2) == [
        Candidate(person_id=20, similarity=pytest.approx(0.95), embedding_id=5),
        Candidate(person_id=10, similarity=pytest.approx(0.90), embedding_id=2),
    ]


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(probes, ef_search) of every index scan the gallery runs."""
    from recognition import gallery

    seen: list[tuple[int, int]] = []
    original = gallery._scan

    def recording(cursor, embeddings, **kwargs):
        seen.append((len(embeddings), kwargs["ef_search"]))
        return original(cursor, embeddings, **kwargs)

    monkeypatch.setattr(gallery, "_scan", recording)
    return seen


@pytest.fixture
def twins(rng: np.random.Generator) -> tuple[Person, Person, np.ndarray, np.ndarray]:
    """Two people, three photos each around their own centre, plus a stranger in the gallery."""
    a, b = unit(rng.normal(size=128)), unit(rng.normal(size=128))
    alice, bob, carol = (Person.objects.create(name=name) for name in ("Alice", "Bob", "Carol"))
    for person, centre in ((alice, a), (bob, b), (carol, unit(rng.normal(size=128)))):
        for _ in range(3):
            add(person, unit(centre + rng.normal(scale=0.05, size=128)))
    return alice, bob, a, b


@pytest.mark.django_db
def test_near_tie_is_searched_again_wider(
    twins: tuple[Person, Person, np.ndarray, np.ndarray], scans: list[tuple[int, int]]
) -> None:
    alice, bob, a, b = twins
    between, clear = unit(a + b), unit(a + 0.1 * b)
    found = gallery_search_many(
        [between, clear, between], model_version=SFACE, limit_people=2, ef_search=40, escalated_ef_search=500
    )
    # the first scan covers all three probes; only the two near-ties are scanned again, wider
    assert scans == [(3, 40), (2, 500)]
    assert {c.person_id for c in found[0]} == {alice.pk, bob.pk}
    assert found[0][0].similarity - found[0][1].similarity < 0.08
    assert found[1][0].person_id == alice.pk and found[1][0].similarity - found[1][1].similarity > 0.08
    for probe, candidates in zip([between, clear, between], found, strict=True):
        assert candidates == exact_search(probe, model_version=SFACE, limit_people=2)


@pytest.mark.django_db
def test_escalation_follows_settings_and_can_be_off(
    twins: tuple[Person, Person, np.ndarray, np.ndarray], scans: list[tuple[int, int]], settings
) -> None:
    _, _, a, b = twins
    between = unit(a + b)
    settings.RECOGNITION_HNSW_EF_SEARCH = 30
    settings.RECOGNITION_HNSW_ESCALATED_EF_SEARCH = 321
    settings.RECOGNITION_SEARCH_ESCALATE_GAP = 0.08
    gallery_search(between, model_version=SFACE, limit_people=2)
    assert scans == [(1, 30), (1, 321)]
    scans.clear()
    gallery_search(between, model_version=SFACE, limit_people=2, escalated_ef_search=0)
    assert scans == [(1, 30)], "0 turns the wider search off"
    scans.clear()
    settings.RECOGNITION_SEARCH_ESCALATE_GAP = 0.0
    gallery_search(between, model_version=SFACE, limit_people=2)
    assert scans == [(1, 30)], "a gap of 0 never counts as a tie"


@pytest.mark.django_db
def test_found_people_are_scored_on_all_their_photos(
    twins: tuple[Person, Person, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch, rule: str
) -> None:
    """A graph walk that reached only a person's worst photo still scores them on every photo."""
    from recognition import gallery

    alice, bob, a, _ = twins
    probe = unit(a + np.random.default_rng(3).normal(scale=0.05, size=128))
    photos = sorted(alice.embeddings.all(), key=lambda e: -float(np.dot(probe, np.asarray(e.embedding))))
    worst = photos[-1]
    bob_photo = bob.embeddings.first()

    def partial_walk(cursor, embeddings, **kwargs):
        def row(e: FaceEmbedding) -> tuple[int, int, float]:
            return (e.pk, e.person_id, 1.0 - float(np.dot(probe, np.asarray(e.embedding))))

        return [[row(worst), row(bob_photo)] for _ in embeddings]

    monkeypatch.setattr(gallery, "_scan", partial_walk)
    found = gallery_search(probe, model_version=SFACE, limit_people=2, escalated_ef_search=0)
    assert found[0].person_id == alice.pk and found[0].embedding_id == photos[0].pk
    assert found[0].similarity == pytest.approx(person_score(probe, alice, rule), abs=1e-5)
    assert found == exact_search(probe, model_version=SFACE, limit_people=2)


@pytest.mark.django_db
def test_person_rescore_reads_only_the_asked_people_of_the_model(twins, rng: np.random.Generator, rule: str) -> None:
    from django.db import connection, transaction

    from recognition.gallery import person_rescore_many

    alice, bob, a, b = twins
    add(alice, unit(rng.normal(size=512)), model_version=FACENET)  # another model: never compared
    with transaction.atomic(), connection.cursor() as cursor:
        rows = person_rescore_many(cursor, [a, b], [[alice.pk], [alice.pk, bob.pk]], model_version=SFACE)
        assert person_rescore_many(cursor, [a], [[]], model_version=SFACE) == [[]]
    assert [r[1] for r in rows[0]] == [alice.pk], "one row per person"
    assert [r[1] for r in rows[1]] == [bob.pk, alice.pk], "best first"
    for probe, probe_rows in zip([a, b], rows, strict=True):
        for embedding_id, person_id, distance in probe_rows:
            person = Person.objects.get(pk=person_id)
            assert distance == pytest.approx(1.0 - person_score(probe, person, rule), abs=1e-5)
            nearest = max(person.embeddings.filter(model_version=SFACE), key=lambda e: np.dot(probe, e.embedding))
            assert embedding_id == nearest.pk


@pytest.mark.django_db
def test_rule_decides_between_a_lucky_photo_and_a_steady_face(settings) -> None:
    """Alice has one photo very near the probe and two far from it; Bob three fairly near ones. The
    best photo picks Alice, the mean template Bob; index and sequential scan agree under both."""
    rng = np.random.default_rng(11)
    probe = unit(rng.normal(size=128))
    alice, bob = Person.objects.create(name="Alice"), Person.objects.create(name="Bob")

    def near(similarity: float) -> np.ndarray:
        other = rng.normal(size=128)
        other = unit(other - np.dot(other, probe) * probe)  # orthogonal to the probe
        return unit(similarity * probe + np.sqrt(1 - similarity**2) * other)

    for similarity in (0.9, 0.1, 0.1):
        add(alice, near(similarity))
    for similarity in (0.7, 0.7, 0.7):
        add(bob, near(similarity))
    for rule, winner in (("best_photo", alice), ("mean_template", bob)):
        settings.RECOGNITION_PERSON_SCORE = rule
        found = gallery_search(probe, model_version=SFACE, limit_people=2)
        assert found[0].person_id == winner.pk, rule
        assert found == exact_search(probe, model_version=SFACE, limit_people=2)
        assert found[0].similarity == pytest.approx(person_score(probe, winner, rule), abs=1e-5)


@pytest.mark.django_db
def test_person_templates_follow_the_rule(twins, settings) -> None:
    alice, bob, a, _ = twins
    photos = [np.asarray(e.embedding) for e in alice.embeddings.order_by("id")]
    settings.RECOGNITION_PERSON_SCORE = "mean_template"
    templates = person_templates([alice.pk, bob.pk], SFACE)
    assert len(templates[alice.pk]) == 1 and len(templates[bob.pk]) == 1
    assert np.linalg.norm(templates[alice.pk][0]) == pytest.approx(1.0, abs=1e-6)
    assert np.dot(a, templates[alice.pk][0]) == pytest.approx(person_score(a, alice, "mean_template"), abs=1e-5)
    settings.RECOGNITION_PERSON_SCORE = "best_photo"
    found = person_templates([alice.pk], SFACE)[alice.pk]
    assert len(found) == 3 and all(np.allclose(t, p, atol=1e-6) for t, p in zip(found, photos, strict=True))


def test_mean_template_normalises_before_averaging() -> None:
    """A photo stored with a larger norm does not weigh more."""
    x, y = np.eye(4)[0], np.eye(4)[1]
    assert mean_template([x * 10, y]) == pytest.approx(unit(x + y), abs=1e-6)
