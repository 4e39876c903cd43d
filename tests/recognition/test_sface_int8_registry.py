"""The int8 edge variant of SFace in the registry: registered by the migration, its files hashed and
signed, calibrated for doors, and buildable by the engine (recognition/model_catalogue.py,
recognition/calibration.py, manage.py model_quantize)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from accessctl.server_key import server_public_key_b64
from faceengine.backends.sface import SFACE_INT8_FILE, SFACE_INT8_MODEL_VERSION, SFACE_INT8_SHA256
from faceengine.protocol.model_manifest import bundle_verify
from recognition.calibration import offline_threshold_for, threshold_for, threshold_measured
from recognition.model_catalogue import BUILTIN
from recognition.model_registry import model_signed_manifest, model_version_register, model_version_verify
from recognition.models import EMBEDDING_DIMS, ModelVersion

pytestmark = pytest.mark.django_db

pytest.importorskip("onnxruntime")


def test_the_migration_registered_the_int8_variant_as_a_candidate_with_its_figures() -> None:
    row = ModelVersion.objects.get(model_version=SFACE_INT8_MODEL_VERSION)
    assert (row.state, row.backend, row.dim, row.input_kind) == ("candidate", "sface-int8", 128, "arcface112")
    assert EMBEDDING_DIMS[SFACE_INT8_MODEL_VERSION] == 128
    assert row.licence.startswith("Apache-2.0")
    spec = next(s for s in BUILTIN if s["model_version"] == SFACE_INT8_MODEL_VERSION)
    assert row.lfw_accuracy == spec["lfw_accuracy"] is not None
    assert {"tar_at_far_1e-3", "ms_per_face", "calibration_set_sha256"} <= set(row.figures)
    # the figures describe the shipped file (its calibration set), measured beside the float model
    from faceengine.quantization import model_metadata

    meta = model_metadata(SFACE_INT8_FILE)
    assert row.figures["calibration_set_sha256"] == meta["accessctl.quantization.calibration_sha256"]
    assert row.lfw_accuracy >= row.figures["float_beside"]["lfw_accuracy"] - 0.3  # issue 21's target


def test_the_int8_variant_registers_verifies_and_a_device_accepts_its_bundle() -> None:
    model = model_version_register(backend="sface-int8", agent_versions=">=0.1.0")
    assert model.model_version == SFACE_INT8_MODEL_VERSION
    assert model.files == [
        {"name": SFACE_INT8_FILE.name, "sha256": SFACE_INT8_SHA256, "size": SFACE_INT8_FILE.stat().st_size}
    ]
    manifest = model_version_verify(model=model)
    device = bundle_verify(
        model_signed_manifest(model), server_public_key_b64(), SFACE_INT8_FILE.parent, agent_version="0.1.0"
    )
    assert device == manifest and device.backend == "sface-int8"


def test_the_int8_variant_has_a_measured_door_threshold() -> None:
    assert threshold_measured(SFACE_INT8_MODEL_VERSION)
    threshold = threshold_for(SFACE_INT8_MODEL_VERSION)
    assert 0.3 < threshold < 0.7
    from accessctl.models import Door

    assert offline_threshold_for(SFACE_INT8_MODEL_VERSION, Door(name="d")) == threshold


def test_model_quantize_refuses_without_calibration_faces(settings, tmp_path) -> None:
    settings.LFW_DIR = None
    with pytest.raises(CommandError, match="calibration-dir"):
        call_command("model_quantize")
    with pytest.raises(CommandError, match="does not exist"):
        call_command("model_quantize", "--calibration-dir", str(tmp_path / "none"), "--check")
    with pytest.raises(CommandError, match="writes nothing"):
        call_command("model_quantize", "--calibration-dir", str(tmp_path), "--check", "--register")
