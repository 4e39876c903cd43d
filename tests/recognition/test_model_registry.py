"""The model registry: registration, signed manifests, verification, state transitions, and the
engine reading its active model from it (recognition/model_registry.py, recognition/engine.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.db import IntegrityError, transaction

from accessctl.models import Person
from accessctl.server_key import server_public_key_b64
from faceengine.backends.sface import SFACE_MODEL_VERSION, SFACE_SHA256, default_model_path
from faceengine.embedder import Embedder, EmbedderConfigError, InputKind
from faceengine.protocol.model_manifest import bundle_verify
from faceengine.registry import register_backend
from recognition.engine import active_embedder, server_model_version
from recognition.model_registry import (
    BundleRefused,
    RegistryError,
    active_model,
    active_model_cache_clear,
    model_signed_manifest,
    model_version_register,
    model_version_transition,
    model_version_verify,
)
from recognition.models import FaceEmbedding, ModelStateChange, ModelVersion
from tests.accessctl.helpers import user_create

pytestmark = pytest.mark.django_db

State = ModelVersion.State
CASIA = "facenet-casia-20180408"


def _toy(tmp_path: Path, name: str = "sface-copy") -> ModelVersion:
    """A candidate whose weights are a copy of sface's ONNX file (so a byte can be flipped)."""
    copy = tmp_path / "face_recognition_sface_copy.onnx"
    shutil.copyfile(default_model_path(), copy)
    return model_version_register(
        backend="sface", model_version=name, options={"model_path": str(copy)}, licence="Apache-2.0",
        agent_versions=">=0.1.0",
    )  # fmt: skip


def test_the_migration_registered_the_shipped_models_with_the_configured_one_active() -> None:
    rows = dict(ModelVersion.objects.values_list("model_version", "state"))
    assert rows[SFACE_MODEL_VERSION] == State.ACTIVE
    assert rows[CASIA] == rows[f"{CASIA}-fixed-flip"] == State.CANDIDATE
    assert list(ModelVersion.objects.filter(state=State.ACTIVE)) == [ModelVersion.objects.get(state=State.ACTIVE)]
    assert ModelStateChange.objects.filter(model__model_version=SFACE_MODEL_VERSION, to_state=State.ACTIVE).exists()
    assert active_model().model_version == server_model_version() == SFACE_MODEL_VERSION


def test_register_hashes_the_files_and_signs_a_manifest_a_device_accepts() -> None:
    model = model_version_register(backend="sface", agent_versions=">=0.1.0")
    assert model.state == State.ACTIVE  # re-registering the active version keeps it active
    assert model.files == [
        {"name": default_model_path().name, "sha256": SFACE_SHA256, "size": default_model_path().stat().st_size}
    ]
    assert (model.dim, model.input_kind, model.input_size) == (128, InputKind.ARCFACE112, 112)
    assert model.signed_with == server_public_key_b64()
    manifest = model_version_verify(model=model)
    assert manifest.model_version == SFACE_MODEL_VERSION and manifest.agent_versions == ">=0.1.0"
    # What a device gets: the signed manifest file, checked against the files it downloaded.
    device = bundle_verify(
        model_signed_manifest(model), server_public_key_b64(), default_model_path().parent, agent_version="0.1.0"
    )
    assert device == manifest


def test_a_flipped_byte_in_a_registered_file_is_refused(tmp_path: Path) -> None:
    model = _toy(tmp_path)
    model_version_verify(model=model)
    path = Path(model.options["model_path"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(BundleRefused) as refused:
        model_version_verify(model=model)
    assert refused.value.code == "bad_file"


def test_a_wrong_signature_or_an_unsigned_edit_of_the_row_is_refused(tmp_path: Path, settings) -> None:
    model = _toy(tmp_path)
    good = model.signature
    ModelVersion.objects.filter(pk=model.pk).update(signature=good[:10] + ("A" if good[10] != "A" else "B") + good[11:])
    with pytest.raises(BundleRefused) as refused:
        model_version_verify(model=ModelVersion.objects.get(pk=model.pk))
    assert refused.value.code == "bad_signature"
    # The row changed in the database (another file, other options) but not re-signed.
    ModelVersion.objects.filter(pk=model.pk).update(signature=good, agent_versions=">=0.0.1")
    with pytest.raises(BundleRefused) as refused:
        model_version_verify(model=ModelVersion.objects.get(pk=model.pk))
    assert refused.value.code in ("missing_file", "manifest_mismatch")  # the signed file is not what it names
    # Signed by a key that is not the server's (the key file replaced).
    ModelVersion.objects.filter(pk=model.pk).update(agent_versions=">=0.1.0")
    settings.SERVER_SIGNING_KEY_FILE = tmp_path / "other-key.pem"
    with pytest.raises(BundleRefused) as refused:
        model_version_verify(model=ModelVersion.objects.get(pk=model.pk))
    assert refused.value.code == "bad_signature"


def test_register_refuses_what_a_device_would_refuse(tmp_path: Path) -> None:
    odd = tmp_path / "weights with spaces.onnx"
    odd.write_bytes(b"x")
    with pytest.raises(RegistryError, match="not a plain file name"):
        model_version_register(backend="sface", model_version="odd", files=[odd])
    with pytest.raises(RegistryError, match="agent version clause"):
        model_version_register(backend="sface", model_version="odd", agent_versions="latest")
    with pytest.raises(RegistryError, match="Unknown backend"):
        model_version_register(backend="dlib", model_version="odd")
    with pytest.raises(RegistryError, match="Not a file"):
        model_version_register(backend="sface", model_version="odd", files=[tmp_path / "nothing.onnx"])
    assert not ModelVersion.objects.filter(model_version="odd").exists()


def test_transitions_are_validated_and_recorded(tmp_path: Path) -> None:
    admin = user_create("ops")
    model = _toy(tmp_path)
    model_version_transition(model=model, to_state=State.SHADOW, actor=admin, note="compare")
    model_version_transition(model=model, to_state=State.CANDIDATE, actor=admin)
    model_version_transition(model=model, to_state=State.RETIRED, actor=admin)
    with pytest.raises(RegistryError, match="retired to shadow"):
        model_version_transition(model=model, to_state=State.SHADOW, actor=admin)
    with pytest.raises(RegistryError, match="Unknown state"):
        model_version_transition(model=model, to_state="live", actor=admin)
    active = ModelVersion.objects.get(state=State.ACTIVE)
    with pytest.raises(RegistryError, match="activate another version instead"):
        model_version_transition(model=active, to_state=State.RETIRED, actor=admin)
    history = list(ModelStateChange.objects.filter(model=model).order_by("at", "id").values_list("to_state", "actor"))
    assert [s for s, _ in history] == [State.CANDIDATE, State.SHADOW, State.CANDIDATE, State.RETIRED]
    assert history[-1][1] == admin.pk
    # A version without a gallery index cannot become active, however it verifies.
    model_version_transition(model=model, to_state=State.CANDIDATE, actor=admin)
    with pytest.raises(RegistryError, match="no gallery index"):
        model_version_transition(model=model, to_state=State.ACTIVE, actor=admin)


def test_a_tampered_bundle_is_never_activated_even_by_force(tmp_path: Path) -> None:
    model = ModelVersion.objects.get(model_version=CASIA)
    with pytest.raises(BundleRefused) as refused:  # registered by the migration, never signed
        model_version_transition(model=model, to_state=State.ACTIVE, force=True)
    assert refused.value.code in ("malformed", "bad_signature")
    model = model_version_register(backend="facenet-casia", model_version=CASIA, options={"flip": False})
    ModelVersion.objects.filter(pk=model.pk).update(files=[{**model.files[0], "size": 1}])
    with pytest.raises(BundleRefused):
        model_version_transition(model=ModelVersion.objects.get(pk=model.pk), to_state=State.ACTIVE, force=True)
    assert ModelVersion.objects.get(state=State.ACTIVE).model_version == SFACE_MODEL_VERSION


def test_activation_needs_the_gallery_then_retires_the_previous_one_and_the_engine_follows() -> None:
    people = [Person.objects.create(name=f"p{i}") for i in range(3)]
    rng = np.random.default_rng(1)
    for person in people:
        FaceEmbedding.objects.create(person=person, model_version=SFACE_MODEL_VERSION, embedding=rng.random(128))
    FaceEmbedding.objects.create(person=people[0], model_version=CASIA, embedding=rng.random(512))
    model = model_version_register(backend="facenet-casia", model_version=CASIA, options={"flip": False})
    with pytest.raises(RegistryError) as refused:
        model_version_transition(model=model, to_state=State.ACTIVE)
    assert refused.value.code == "gallery_incomplete" and "1 people" in refused.value.message
    for person in people[1:]:
        FaceEmbedding.objects.create(person=person, model_version=CASIA, embedding=rng.random(512))
    model_version_transition(model=model, to_state=State.ACTIVE)
    states = dict(ModelVersion.objects.values_list("model_version", "state"))
    assert states[CASIA] == State.ACTIVE and states[SFACE_MODEL_VERSION] == State.RETIRED
    # The engine reads the registry (the process cache is cleared by the save): no settings involved.
    assert server_model_version() == CASIA
    with pytest.raises(RegistryError, match="activate another version"):
        model_version_transition(model=model, to_state=State.CANDIDATE)


def test_the_database_holds_at_most_one_active_version() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.filter(model_version=CASIA).update(state=State.ACTIVE)


class _OtherEmbedder(Embedder):
    name = "registry-test"
    model_version = "something-else"
    dim = 128
    input_kind = InputKind.ARCFACE112

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.ones((len(batch), 128), dtype=np.float32)


def test_the_engine_refuses_a_backend_that_builds_another_version_than_the_registry_names() -> None:
    register_backend("registry-test", _OtherEmbedder)
    ModelVersion.objects.filter(state=State.ACTIVE).update(backend="registry-test")
    active_model_cache_clear()
    with pytest.raises(EmbedderConfigError, match="builds something-else"):
        active_embedder()


def test_no_active_version_is_a_clear_error() -> None:
    ModelVersion.objects.filter(state=State.ACTIVE).update(state=State.RETIRED)
    active_model_cache_clear()
    with pytest.raises(RegistryError, match="No model version is active"):
        server_model_version()
    # Activated by another process (no signal here): seen by the very next lookup, not after the
    # cache's few seconds (a worker started before the first activation refused crops meanwhile).
    ModelVersion.objects.filter(model_version=SFACE_MODEL_VERSION).update(state=State.ACTIVE)
    assert server_model_version() == SFACE_MODEL_VERSION


def test_model_registry_command_lists_registers_verifies_and_activates(tmp_path: Path, capsys) -> None:
    call_command("model_registry", "register", "--backend", "sface", "--agent-versions", ">=0.1.0")
    call_command("model_registry", "verify", SFACE_MODEL_VERSION)
    call_command("model_registry", "list")
    out = capsys.readouterr().out
    assert f"{SFACE_MODEL_VERSION}: ok" in out and "active" in out and CASIA in out
    copy = _toy(tmp_path)
    Path(copy.options["model_path"]).write_bytes(b"not a model")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="bad_file"):
        call_command("model_registry", "verify", "sface-copy")
    call_command("model_registry", "shadow", "sface-copy")
    assert ModelVersion.objects.get(model_version="sface-copy").state == State.SHADOW


def test_admin_shows_the_registry_and_its_actions_go_through_the_services(admin_client, tmp_path: Path) -> None:
    from django.urls import reverse

    model = _toy(tmp_path)
    changelist = reverse("admin:recognition_modelversion_changelist")
    page = admin_client.get(changelist)
    assert page.status_code == 200 and b"sface-copy" in page.content and b"Activate" in page.content
    assert admin_client.get(reverse("admin:recognition_modelversion_change", args=[model.pk])).status_code == 200
    assert admin_client.get(reverse("admin:recognition_recognitionhealth_changelist")).status_code == 200
    Path(model.options["model_path"]).write_bytes(b"tampered")
    answer = admin_client.post(changelist, {"action": "verify_bundles", "_selected_action": [model.pk]}, follow=True)
    assert any(str(m).startswith("bad_file: sface-copy") for m in answer.context["messages"])
    admin_client.post(changelist, {"action": "to_shadow", "_selected_action": [model.pk]})
    assert ModelVersion.objects.get(pk=model.pk).state == State.SHADOW
    assert ModelStateChange.objects.filter(model=model, to_state=State.SHADOW, actor_name="admin").exists()


def test_api_lists_models_for_model_readers_and_moves_them_for_model_writers_only(tmp_path: Path) -> None:
    from django.urls import reverse

    from tests.api_support import make_user, session_client, token_client

    model = _toy(tmp_path)
    listing = token_client(["models:read"]).get(reverse("api-model-version-list")).json()["results"]
    toy = next(m for m in listing if m["model_version"] == "sface-copy")
    assert toy["state"] == "candidate" and toy["signed"] and toy["files"][0]["size"] > 1_000_000
    assert next(m for m in listing if m["model_version"] == SFACE_MODEL_VERSION)["threshold"] is not None
    manifest = token_client(["models:read"]).get(reverse("api-model-version-manifest", args=["sface-copy"])).json()
    assert bundle_verify(manifest, server_public_key_b64(), tmp_path).model_version == "sface-copy"
    transition = reverse("api-model-version-transition", args=[model.pk])
    assert token_client(["models:read"]).post(transition, {"state": "shadow"}, format="json").status_code == 403
    viewer = session_client(make_user(perms=["recognition.view_modelversion"]))
    assert viewer.post(transition, {"state": "shadow"}, format="json").status_code == 403
    admin = session_client(make_user(perms=["recognition.view_modelversion", "recognition.change_modelversion"]))
    assert admin.post(transition, {"state": "shadow"}, format="json").json()["state"] == "shadow"
    refused = admin.post(transition, {"state": "active"}, format="json")
    assert refused.status_code == 400 and "no gallery index" in refused.json()["error"]["message"]
    Path(model.options["model_path"]).write_bytes(b"tampered")
    verify = admin.post(reverse("api-model-version-verify", args=[model.pk]))
    assert verify.status_code == 409 and verify.json()["error"]["code"] == "bad_file"


def test_the_engine_refuses_an_active_row_edited_in_the_database(tmp_path: Path) -> None:
    """Someone who can write the database but not sign: pointing the active version at other weights
    (an option naming a file) is refused before the server loads them, signed or not."""
    evil = tmp_path / "evil.onnx"
    shutil.copyfile(default_model_path(), evil)
    ModelVersion.objects.filter(state=State.ACTIVE).update(options={"model_path": str(evil)})
    active_model_cache_clear()
    with pytest.raises(BundleRefused) as refused:
        active_embedder()
    assert refused.value.code == "unsigned"
    model = model_version_register(backend="sface")  # signed, with its built-in file
    assert active_embedder().model_version == SFACE_MODEL_VERSION
    ModelVersion.objects.filter(pk=model.pk).update(options={"model_path": str(evil)})
    active_model_cache_clear()
    with pytest.raises(BundleRefused) as refused:
        active_embedder()
    assert refused.value.code in ("missing_file", "manifest_mismatch")  # the signed file is not what it names
