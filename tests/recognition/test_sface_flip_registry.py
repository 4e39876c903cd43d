"""SFace averaged with the mirrored crop in the registry: registered by the migration as a
candidate with its own index and figures, built by the engine under its own version, calibrated
for doors, and named by its options when registered again (recognition/model_catalogue.py)."""

from __future__ import annotations

import pytest
from django.db import connection

from faceengine.backends.sface import SFACE_FLIP_MODEL_VERSION, SFACE_MODEL_VERSION
from recognition.calibration import threshold_for, threshold_measured
from recognition.engine import version_embedder
from recognition.model_catalogue import BUILTIN
from recognition.model_registry import model_version_register
from recognition.models import EMBEDDING_DIMS, ModelVersion

pytestmark = pytest.mark.django_db

pytest.importorskip("onnxruntime")


def test_the_migration_registered_the_flip_version_as_a_candidate_with_its_index() -> None:
    row = ModelVersion.objects.get(model_version=SFACE_FLIP_MODEL_VERSION)
    assert (row.state, row.backend, row.options, row.dim) == ("candidate", "sface", {"flip": True}, 128)
    assert EMBEDDING_DIMS[SFACE_FLIP_MODEL_VERSION] == 128
    spec = next(s for s in BUILTIN if s["model_version"] == SFACE_FLIP_MODEL_VERSION)
    plain = next(s for s in BUILTIN if s["model_version"] == SFACE_MODEL_VERSION)
    assert row.lfw_accuracy == spec["lfw_accuracy"] > plain["lfw_accuracy"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'face_hnsw_sface_2021dec_int8bq_flip'")
        (definition,) = cursor.fetchone()
    assert "hnsw" in definition and SFACE_FLIP_MODEL_VERSION in definition


def test_the_engine_builds_it_under_its_own_version() -> None:
    embedder = version_embedder(SFACE_FLIP_MODEL_VERSION)
    assert embedder.flip and embedder.model_version == SFACE_FLIP_MODEL_VERSION


def test_registering_sface_with_flip_names_the_flip_version() -> None:
    """Options that change the vectors name the version: never the plain version's name on flipped vectors."""
    model = model_version_register(backend="sface", options={"flip": True})
    assert model.model_version == SFACE_FLIP_MODEL_VERSION and model.options == {"flip": True}
    assert ModelVersion.objects.get(model_version=SFACE_MODEL_VERSION).options == {}


def test_the_flip_version_has_a_measured_door_threshold() -> None:
    assert threshold_measured(SFACE_FLIP_MODEL_VERSION)
    assert 0.3 < threshold_for(SFACE_FLIP_MODEL_VERSION) < 0.7
