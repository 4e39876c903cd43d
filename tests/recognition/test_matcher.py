"""Open-set 1:N matching on real faces (LFW) with the real default embedder, and threshold resolution."""

from __future__ import annotations

import numpy as np
import pytest

from accessctl.codes import Reason
from accessctl.models import Door, Person
from faceengine.embedder import Embedder
from faceengine.registry import DEFAULT_BACKEND, get_embedder
from recognition.calibration import (
    BUILTIN_THRESHOLDS,
    CalibrationError,
    margin_for,
    store_threshold,
    threshold_for,
)
from recognition.matcher import match_decide
from recognition.models import FaceEmbedding, ModelCalibration
from tests.faces import face_paths

pytestmark = pytest.mark.dataset("lfw")

ENROLLED = ("Colin_Powell", "Tony_Blair")
STRANGER = "Donald_Rumsfeld"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return get_embedder(DEFAULT_BACKEND)


@pytest.fixture(scope="module")
def vectors(embedder: Embedder) -> dict[str, np.ndarray]:
    """Embeddings of photos 0..3 of each enrolled person and photo 0 of the stranger (computed once)."""
    from PIL import Image

    from faceengine.pipeline import embed_image

    def embed(person: str, index: int) -> np.ndarray:
        with Image.open(face_paths(person, 1, index)[0]) as img:
            faces = embed_image(img.convert("RGB"), embedder=embedder, max_faces=1)
        return faces[0].embedding

    out = {p: np.stack([embed(p, i) for i in range(4)]) for p in ENROLLED}
    out[STRANGER] = np.stack([embed(STRANGER, 0)])
    return out


@pytest.fixture
def gallery(embedder: Embedder, vectors: dict[str, np.ndarray]) -> dict[str, Person]:
    """Photos 0..2 of each enrolled person in the gallery; photo 3 is kept as the probe."""
    people = {}
    for name in ENROLLED:
        person = Person.objects.create(name=name.replace("_", " "))
        for vec in vectors[name][:3]:
            FaceEmbedding.objects.create(person=person, model_version=embedder.model_version, embedding=vec.tolist())
        people[name] = person
    return people


@pytest.mark.django_db
def test_probe_matches_the_right_person(
    embedder: Embedder, vectors: dict[str, np.ndarray], gallery: dict[str, Person]
) -> None:
    for name, person in gallery.items():
        result = match_decide(vectors[name][3], model_version=embedder.model_version)
        assert result.reason is Reason.MATCHED
        assert result.person_id == person.pk
        assert result.similarity is not None and result.similarity >= result.threshold
        assert result.second_similarity is not None and result.second_similarity < result.threshold
        assert result.margin == pytest.approx(result.similarity - result.second_similarity)


@pytest.mark.django_db
def test_stranger_is_unknown(embedder: Embedder, vectors: dict[str, np.ndarray], gallery: dict[str, Person]) -> None:
    result = match_decide(vectors[STRANGER][0], model_version=embedder.model_version)
    assert result.reason is Reason.UNKNOWN_FACE
    assert result.person_id is None
    assert result.best_person_id in {p.pk for p in gallery.values()}
    assert result.similarity is not None and result.similarity < result.threshold


@pytest.mark.django_db
def test_empty_gallery_is_unknown(embedder: Embedder, vectors: dict[str, np.ndarray]) -> None:
    result = match_decide(vectors[STRANGER][0], model_version=embedder.model_version)
    assert (result.reason, result.person_id, result.similarity, result.margin) == (
        Reason.UNKNOWN_FACE,
        None,
        None,
        None,
    )


@pytest.mark.django_db
def test_lookalike_above_threshold_is_ambiguous(
    embedder: Embedder, vectors: dict[str, np.ndarray], gallery: dict[str, Person]
) -> None:
    # A second person whose enrolment is (almost) the same face as Colin Powell's: a twin, or the
    # same man enrolled twice by mistake.
    rng = np.random.default_rng(3)
    twin = Person.objects.create(name="Colin's twin")
    for vec in vectors["Colin_Powell"][:3]:
        noisy = vec + rng.normal(scale=0.002, size=vec.shape)
        FaceEmbedding.objects.create(
            person=twin, model_version=embedder.model_version, embedding=(noisy / np.linalg.norm(noisy)).tolist()
        )
    result = match_decide(vectors["Colin_Powell"][3], model_version=embedder.model_version)
    assert result.reason is Reason.AMBIGUOUS_MATCH
    assert result.person_id is None
    assert result.best_person_id in {gallery["Colin_Powell"].pk, twin.pk}
    assert result.second_similarity is not None and result.second_similarity >= result.threshold
    assert result.margin is not None and 0 <= result.margin < result.min_margin
    # Tony Blair is still recognised.
    assert match_decide(vectors["Tony_Blair"][3], model_version=embedder.model_version).person_id == (
        gallery["Tony_Blair"].pk
    )


@pytest.mark.django_db
def test_ambiguous_decisions_rest_on_the_wide_search(
    embedder: Embedder,
    vectors: dict[str, np.ndarray],
    gallery: dict[str, Person],
    settings: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recognition import gallery as gallery_module

    twin = Person.objects.create(name="Colin's twin")
    for vec in vectors["Colin_Powell"][:3]:
        FaceEmbedding.objects.create(person=twin, model_version=embedder.model_version, embedding=vec.tolist())
    scans: list[int] = []
    original = gallery_module._scan

    def recording(cursor, embeddings, **kwargs):
        scans.append(kwargs["ef_search"])
        return original(cursor, embeddings, **kwargs)

    monkeypatch.setattr(gallery_module, "_scan", recording)
    settings.RECOGNITION_HNSW_EF_SEARCH, settings.RECOGNITION_HNSW_ESCALATED_EF_SEARCH = 40, 400
    settings.RECOGNITION_SEARCH_ESCALATE_GAP = 0.0  # the gallery's own gap: never
    result = match_decide(vectors["Colin_Powell"][3], model_version=embedder.model_version)
    assert result.reason is Reason.AMBIGUOUS_MATCH and scans == [40, 400], "the margin is the gap at least"
    scans.clear()
    match_decide(vectors["Tony_Blair"][3], model_version=embedder.model_version)
    assert scans == [40], "a clear match is searched once"


@pytest.mark.django_db
def test_other_model_version_is_not_searched(
    embedder: Embedder, vectors: dict[str, np.ndarray], gallery: dict[str, Person]
) -> None:
    # The same face under another model's gallery (512-d, padded): never compared with 128-d probes.
    other = Person.objects.create(name="Other model")
    padded = np.concatenate([vectors[STRANGER][0], np.zeros(384, dtype=np.float32)])
    FaceEmbedding.objects.create(person=other, model_version="facenet-casia-20180408", embedding=padded.tolist())
    result = match_decide(vectors[STRANGER][0], model_version=embedder.model_version)
    assert result.reason is Reason.UNKNOWN_FACE
    assert other.pk not in {c.person_id for c in result.candidates}


@pytest.mark.django_db
def test_door_threshold_override(
    embedder: Embedder, vectors: dict[str, np.ndarray], gallery: dict[str, Person]
) -> None:
    strict = Door.objects.create(name="vault", match_threshold=0.99)
    lax = Door.objects.create(name="lobby", match_threshold=0.05)
    plain = Door.objects.create(name="office")
    colin, stranger = vectors["Colin_Powell"][3], vectors[STRANGER][0]
    mv = embedder.model_version

    at_vault = match_decide(colin, model_version=mv, door=strict)
    assert (at_vault.reason, at_vault.threshold) == (Reason.UNKNOWN_FACE, 0.99)
    assert match_decide(colin, model_version=mv, door=plain).person_id == gallery["Colin_Powell"].pk
    # An absurdly low override lets a stranger in: the override really is what decides.
    assert match_decide(stranger, model_version=mv, door=lax).reason is Reason.MATCHED
    assert match_decide(stranger, model_version=mv, door=plain).reason is Reason.UNKNOWN_FACE


@pytest.mark.django_db
def test_threshold_resolution_order(settings: pytest.FixtureRequest) -> None:
    mv = "sface-2021dec-int8bq"
    settings.RECOGNITION_DEFAULT_THRESHOLD = None  # type: ignore[attr-defined]
    assert threshold_for(mv) == BUILTIN_THRESHOLDS[mv]
    settings.RECOGNITION_DEFAULT_THRESHOLD = 0.5  # type: ignore[attr-defined]
    assert threshold_for(mv) == 0.5
    store_threshold(model_version=mv, threshold=0.42, target_fmr=1e-3, details={"source": "test"})
    assert threshold_for(mv) == 0.42
    store_threshold(model_version=mv, threshold=0.44, target_fmr=1e-4, min_margin=0.08)
    calibration = ModelCalibration.objects.get(model_version=mv)
    assert (calibration.threshold, calibration.target_fmr, calibration.min_margin) == (0.44, 1e-4, 0.08)
    assert threshold_for(mv, Door(name="x", match_threshold=0.7)) == 0.7
    assert threshold_for(mv, Door(name="y")) == 0.44
    assert margin_for(mv) == 0.08
    assert threshold_for("unknown-model") == 0.5  # the setting applies to every model version
    settings.RECOGNITION_DEFAULT_THRESHOLD = None  # type: ignore[attr-defined]
    with pytest.raises(CalibrationError):
        threshold_for("unknown-model")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        store_threshold(model_version=mv, threshold=1.5, target_fmr=1e-3)


@pytest.mark.django_db
def test_margin_defaults_to_setting(settings: pytest.FixtureRequest) -> None:
    settings.RECOGNITION_MIN_MARGIN = 0.07  # type: ignore[attr-defined]
    assert margin_for("sface-2021dec-int8bq") == 0.07
