"""Gallery migration without downtime (recognition/gallery_migration.py, recognition/gallery_versions.py):
promoting ``facenet-casia`` beside the active ``sface`` on real LFW faces, resuming after a killed
run, a photo accepted while the version switches, retiring, and embedding-mode detections decided
in their device's own version meanwhile."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

import recognition.gallery_migration as gallery_migration
from accessctl.models import AccessEvent, AccessGroup, Door, Person
from faceengine.backends.sface import SFACE_MODEL_VERSION
from faceengine.registry import get_embedder
from recognition.engine import embedder_options
from recognition.enrollment import photo_embedding_store, photo_enroll, photo_version_analyse
from recognition.gallery_migration import (
    _analyses_store,
    _Pacer,
    gallery_migration_pause,
    gallery_migration_run,
    gallery_migration_start,
    gallery_migrations_resume,
    gallery_ready,
    gallery_topups_resume,
    photo_versions_topup,
)
from recognition.gallery_versions import PHOTO_VERSIONS_TASK, kept_versions
from recognition.indexing import hnsw_ensure, hnsw_index
from recognition.model_registry import (
    RegistryError,
    model_version_register,
    model_version_retire,
    model_version_transition,
)
from recognition.models import (
    EnrollmentPhoto,
    FaceEmbedding,
    GalleryMigration,
    ModelCalibration,
    ModelStateChange,
    ModelVersion,
)
from tests.faces import face_jpeg

State = ModelVersion.State
CASIA = "facenet-casia-20180408"  # registered by the migration as a candidate, options {"flip": False}
FLIP = "facenet-casia-20180408-fixed-flip"
PEOPLE = ("Colin_Powell", "George_W_Bush")


class Killed(Exception):
    """Stands for a worker killed between two batches."""


@pytest.fixture(scope="module")
def casia_loaded() -> None:
    """Load facenet-casia once for the module (what the gallery worker keeps per process)."""
    get_embedder("facenet-casia", **{**embedder_options("facenet-casia"), "flip": False})


def _enrol(name: str, index: int = 0) -> Person:
    person = Person.objects.get_or_create(name=name.replace("_", " "))[0]
    photo = photo_enroll(person=person, image=face_jpeg(name, index))
    assert photo.status == "accepted", photo.quality_reason
    return person


def _casia() -> ModelVersion:
    return ModelVersion.objects.get(model_version=CASIA)


def _calibrate(version: str) -> None:
    """A threshold for ``version`` as ``manage.py calibrate_threshold`` stores it."""
    ModelCalibration.objects.update_or_create(model_version=version, defaults={"threshold": 0.5, "target_fmr": 1e-3})


@pytest.fixture
def casia_signed() -> ModelVersion:
    """CASIA registered (hashed and signed) and calibrated: only such a version is ever promoted."""
    _calibrate(CASIA)
    return model_version_register(backend="facenet-casia", model_version=CASIA, options={"flip": False})


@pytest.mark.dataset("lfw")
@pytest.mark.django_db
def test_a_killed_build_resumes_and_the_version_switches_only_when_its_gallery_is_complete(
    enrol_env: Path, casia_loaded: None, casia_signed: ModelVersion, django_capture_on_commit_callbacks
) -> None:
    for name in PEOPLE:
        _enrol(name)
    with django_capture_on_commit_callbacks() as sent:
        migration = gallery_migration_start(model=_casia(), note="test")
    assert len(sent) == 1  # the task goes out once the request is committed
    assert migration.state == "queued" and (migration.total, migration.done) == (2, 0)
    assert ModelStateChange.objects.filter(model=_casia(), note__startswith="promotion requested").exists()
    assert CASIA in kept_versions()

    def kill(_: GalleryMigration) -> None:
        raise Killed

    with pytest.raises(Killed), CaptureQueriesContext(connection) as queries:
        gallery_migration_run(migration_id=migration.pk, batch=1, rate=0, between_batches=kill)
    migration.refresh_from_db()
    assert (migration.state, migration.done, migration.embedded) == ("running", 1, 1)
    # the build's writes (vectors, progress) do not wait for the WAL flush the door decisions wait for
    assert sum(q["sql"] == "SET LOCAL synchronous_commit = off" for q in queries.captured_queries) == 2
    assert not gallery_ready(CASIA) and _casia().state == State.CANDIDATE
    with pytest.raises(RegistryError) as refused:  # activating by hand is refused as well
        model_version_transition(model=_casia(), to_state=State.ACTIVE)
    assert refused.value.code == "gallery_incomplete" and "1 accepted photos" in refused.value.message

    # The sweep finds it (no progress written for long) and the next run resumes where it stopped.
    assert gallery_migrations_resume(stale_s=3600) == []
    GalleryMigration.objects.filter(pk=migration.pk).update(heartbeat_at=migration.heartbeat_at.replace(year=2000))
    assert gallery_migrations_resume(stale_s=60) == [migration.pk]
    assert gallery_migration_run(migration_id=migration.pk, batch=2, rate=0) is False
    migration.refresh_from_db()
    assert (migration.state, migration.done, migration.total, migration.embedded) == ("done", 2, 2, 2)
    assert migration.photos_per_s > 0 and migration.finished_at is not None
    states = dict(ModelVersion.objects.values_list("model_version", "state"))
    assert states[CASIA] == State.ACTIVE and states[SFACE_MODEL_VERSION] == State.RETIRED
    # Each photo embedded once per version; the old version keeps its vectors (and is kept up to date).
    assert FaceEmbedding.objects.filter(model_version=CASIA).count() == 2
    assert FaceEmbedding.objects.filter(model_version=SFACE_MODEL_VERSION).count() == 2
    assert set(kept_versions()) == {CASIA, SFACE_MODEL_VERSION} and gallery_ready(CASIA)
    assert hnsw_index(CASIA) is not None
    note = ModelStateChange.objects.get(model=_casia(), to_state=State.ACTIVE).note
    assert note.startswith("promoted: gallery complete")
    # A finished promotion is not run again.
    assert gallery_migration_run(migration_id=migration.pk) is False

    # A photo accepted after the switch by a worker that still has the old model loaded: the gallery
    # worker is asked to embed it with the kept versions it lacks (the new active one included).
    sface = get_embedder("sface", **embedder_options("sface"))
    tony = Person.objects.create(name="Tony Blair")
    with django_capture_on_commit_callbacks() as sent:
        photo = photo_enroll(person=tony, image=face_jpeg("Tony_Blair"), embedder=sface)
    assert len(sent) == 1 and not gallery_ready(CASIA)
    assert photo_versions_topup(photo_id=photo.pk) == [CASIA]
    assert gallery_ready(CASIA) and photo_versions_topup(photo_id=photo.pk) == []


@pytest.mark.dataset("lfw")
@pytest.mark.django_db(transaction=True)
def test_a_photo_accepted_while_the_version_switches_is_embedded_before_it_goes_active(
    enrol_env: Path, casia_loaded: None, casia_signed: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The enrolment holds its transaction open (vector written, not committed) exactly when the
    build has scanned every photo and tries to switch: the switch waits for it, sees the new photo
    missing, embeds it and only then activates."""
    import recognition.enrollment as enrollment

    _enrol("Colin_Powell")
    migration = gallery_migration_start(model=_casia())
    holding = threading.Event()
    real_schedule = enrollment.photo_versions_schedule

    def schedule_then_hold(photo_id: int, *, have: str) -> None:
        real_schedule(photo_id, have=have)
        holding.set()
        # Commit only once another session waits on a lock (the switch, on our share lock).
        deadline = time.monotonic() + 60
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if cursor.fetchone()[0]:
                    return
                time.sleep(0.02)
        raise AssertionError("the switch never waited for the enrolment")

    monkeypatch.setattr(enrollment, "photo_versions_schedule", schedule_then_hold)
    errors: list[BaseException] = []

    def enrol_tony() -> None:
        try:
            _enrol("Tony_Blair")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=enrol_tony)

    def after_first_batch(_: GalleryMigration) -> None:
        if not thread.is_alive() and not holding.is_set():
            thread.start()
            assert holding.wait(60)

    gallery_migration_run(migration_id=migration.pk, batch=1, rate=0, between_batches=after_first_batch)
    thread.join(60)
    assert not errors
    tony = FaceEmbedding.objects.get(person__name="Tony Blair", model_version=SFACE_MODEL_VERSION).photo_id
    assert FaceEmbedding.objects.filter(photo_id=tony, model_version=CASIA).exists()
    assert _casia().state == State.ACTIVE and gallery_ready(CASIA)
    assert GalleryMigration.objects.get(pk=migration.pk).done == 2


@pytest.mark.dataset("lfw")
@pytest.mark.django_db
def test_a_person_the_new_version_cannot_embed_keeps_the_old_one_active_and_says_why(
    enrol_env: Path, casia_loaded: None, casia_signed: ModelVersion
) -> None:
    colin = _enrol("Colin_Powell")
    photo = colin.photos.get()
    photo.image.storage.delete(photo.image.name)  # the original is gone: nothing to re-embed
    migration = gallery_migration_start(model=_casia())
    assert gallery_migration_run(migration_id=migration.pk, rate=0) is False
    migration.refresh_from_db()
    assert migration.state == "failed" and migration.failed_photo_ids == [photo.pk]
    assert migration.last_error.startswith(f"cannot activate {CASIA}") and "1 people" in migration.last_error
    assert _casia().state == State.CANDIDATE and not gallery_ready(CASIA)


@pytest.mark.django_db
def test_pausing_stops_the_build_and_a_retired_version_is_no_longer_written(enrol_env: Path) -> None:
    model = _casia()
    migration = gallery_migration_start(model=model, activate=False)
    gallery_migration_pause(migration=migration)
    assert gallery_migration_run(migration_id=migration.pk) is False  # paused: nothing runs
    assert GalleryMigration.objects.get(pk=migration.pk).state == "paused"
    with pytest.raises(RegistryError, match="paused"):
        gallery_migration_pause(migration=migration)
    model_version_retire(model=model)
    assert not GalleryMigration.objects.filter(pk=migration.pk).exists() and CASIA not in kept_versions()
    with pytest.raises(RegistryError) as refused:
        gallery_migration_start(model=ModelVersion.objects.get(pk=model.pk))
    assert refused.value.code == "retired"
    with pytest.raises(RegistryError) as refused:
        gallery_migration_start(model=ModelVersion.objects.get(model_version=SFACE_MODEL_VERSION))
    assert refused.value.code == "active"


class _Broker:
    """Records what the sweep sends to the gallery worker (the worker's part is run by the test)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int], str]] = []

    def send_task(self, name: str, *, args: list[int], queue: str) -> None:
        self.sent.append((name, list(args), queue))


@pytest.mark.dataset("lfw")
@pytest.mark.django_db
def test_a_top_up_that_never_ran_is_sent_again_by_the_sweep(
    enrol_env: Path,
    casia_loaded: None,
    casia_signed: ModelVersion,
    django_capture_on_commit_callbacks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A photo accepted while CASIA is kept, whose top-up message was lost, would never be
    recognised in CASIA: the periodic sweep sends it again once it is older than its grace, and
    leaves alone photos CASIA cannot embed and versions whose build runs."""
    _enrol("Colin_Powell")
    migration = gallery_migration_start(model=_casia(), activate=False)
    assert gallery_migration_run(migration_id=migration.pk, rate=0) is False and gallery_ready(CASIA)
    broker = _Broker()
    monkeypatch.setattr(gallery_migration, "current_app", broker)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:  # the message is lost
        tony = _enrol("Tony_Blair").photos.get()
    assert len(callbacks) == 1 and not gallery_ready(CASIA)
    assert gallery_topups_resume() == {} and broker.sent == []  # its top-up may still be queued
    assert gallery_topups_resume(grace_s=0) == {CASIA: [tony.pk]}
    assert broker.sent == [(PHOTO_VERSIONS_TASK, [tony.pk], settings.GALLERY_QUEUE)]
    assert photo_versions_topup(photo_id=tony.pk) == [CASIA]  # what the gallery worker then does
    assert gallery_ready(CASIA) and gallery_topups_resume(grace_s=0) == {}

    # A photo CASIA cannot embed (its original is gone) is counted as failed, not sent for ever.
    with django_capture_on_commit_callbacks(execute=False):
        blair = _enrol("Tony_Blair", 1).photos.order_by("-pk").first()
    blair.image.storage.delete(blair.image.name)
    assert photo_versions_topup(photo_id=blair.pk) == []
    migration.refresh_from_db()
    assert migration.failed_photo_ids == [blair.pk] and migration.failed == 1
    assert gallery_topups_resume(grace_s=0) == {} and gallery_ready(CASIA)

    # While a build of CASIA runs again, its photos are the build's to embed.
    with django_capture_on_commit_callbacks(execute=False):
        colin = _enrol("Colin_Powell", 1).photos.order_by("-pk").first()
    gallery_migration_start(model=_casia(), activate=False)
    assert gallery_topups_resume(grace_s=0) == {}
    assert gallery_migration_run(migration_id=migration.pk, rate=0) is False
    assert FaceEmbedding.objects.filter(photo=colin, model_version=CASIA).exists()
    assert len(broker.sent) == 1


@pytest.mark.dataset("lfw")
@pytest.mark.django_db(transaction=True)
def test_a_photo_written_twice_at_once_gets_one_vector(enrol_env: Path, casia_loaded: None) -> None:
    """A top-up the sweep sent again while the first still runs: the second writer waits on the
    photo's lock and then finds the first one's vector, instead of adding a second."""
    photo = _enrol("Colin_Powell").photos.get()
    gallery_migration_start(model=_casia(), activate=False)
    casia = get_embedder("facenet-casia", **{**embedder_options("facenet-casia"), "flip": False})
    analysis = photo_version_analyse(photo, casia)
    locked, errors, results = threading.Event(), [], []

    def second_writer() -> None:
        try:
            assert locked.wait(30)
            results.append(_analyses_store(_casia().pk, {photo.pk: analysis}))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=second_writer)
    thread.start()
    with transaction.atomic():
        locked_photo = EnrollmentPhoto.objects.select_for_update().get(pk=photo.pk)
        locked.set()
        deadline = time.monotonic() + 30
        with connection.cursor() as cursor:
            while time.monotonic() < deadline:  # the second writer waits on the photo's lock
                # (pg_locks: its session may belong to another database role than this one)
                cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the second writer never waited for the photo")
        photo_embedding_store(photo=locked_photo, analysis=analysis)
    thread.join(30)
    assert not errors and results == [(0, [])]
    assert FaceEmbedding.objects.filter(photo=photo, model_version=CASIA).count() == 1


def test_the_pacer_keeps_the_rate() -> None:
    pacer = _Pacer(rate=200.0)
    started = time.monotonic()
    for _ in range(4):
        pacer.after(10)
    assert time.monotonic() - started >= 40 / 200.0 - 0.005
    assert pacer.speed() <= 200.0 * 1.05
    unlimited = _Pacer(rate=0)
    unlimited.after(1000)
    assert time.monotonic() - unlimited.started < 0.1


@pytest.fixture
def flip_index_restored():
    yield
    hnsw_ensure(FLIP)  # other tests expect every shipped version's index


@pytest.mark.django_db(transaction=True)
def test_retiring_removes_vectors_and_index_and_waits_for_the_devices(flip_index_restored: None) -> None:
    from devices.models import EdgeDevice

    person = Person.objects.create(name="Ada")
    rng = np.random.default_rng(1)
    for _ in range(3):
        FaceEmbedding.objects.create(person=person, model_version=FLIP, embedding=rng.random(512).tolist())
    FaceEmbedding.objects.create(person=person, model_version=SFACE_MODEL_VERSION, embedding=rng.random(128).tolist())
    model = ModelVersion.objects.get(model_version=FLIP)
    EdgeDevice.objects.create(uid="door-7", public_key="x", model_version=FLIP)
    with pytest.raises(RegistryError) as refused:
        model_version_retire(model=model)
    assert refused.value.code == "in_use" and "door-7" in refused.value.message
    assert FaceEmbedding.objects.filter(model_version=FLIP).count() == 3
    with pytest.raises(RegistryError, match="activate another version instead"):
        model_version_retire(model=ModelVersion.objects.get(model_version=SFACE_MODEL_VERSION), force=True)

    assert hnsw_index(FLIP) is not None
    model_version_retire(model=model, force=True, note="fleet moved")
    assert not FaceEmbedding.objects.filter(model_version=FLIP).exists()
    assert FaceEmbedding.objects.filter(model_version=SFACE_MODEL_VERSION).count() == 1
    assert hnsw_index(FLIP) is None
    change = ModelStateChange.objects.get(model=model, to_state=State.RETIRED)
    assert change.forced and "3 vectors" in change.note and "fleet moved" in change.note
    assert ModelVersion.objects.get(pk=model.pk).state == State.RETIRED


@pytest.mark.django_db(transaction=True)
def test_a_device_still_on_a_removed_version_is_denied_model_mismatch_not_unknown_face(
    media_root: Path, monkeypatch: pytest.MonkeyPatch, flip_index_restored: None
) -> None:
    from devices.provisioning import device_provision
    from recognition.detections import detections_decide
    from tests.recognition.test_detections import stage

    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)
    door = Door.objects.create(name="Dock")
    device = device_provision(uid="dock-late", door=door).device
    ada = Person.objects.create(name="Ada")
    group = AccessGroup.objects.create(name="Dockers")
    group.people.add(ada)
    group.doors.add(door)
    vector = [1.0] + [0.0] * 511
    FaceEmbedding.objects.create(person=ada, model_version=FLIP, embedding=vector)
    _calibrate(FLIP)

    def decide() -> AccessEvent:
        detection_id = stage(device, mode="embedding", model_version=FLIP, values=vector)
        detections_decide([detection_id])
        return AccessEvent.objects.get(detection_id=detection_id)

    before = decide()
    assert (before.reason, before.person_id, before.model_version) == ("matched", ada.pk, FLIP)
    model_version_retire(model=ModelVersion.objects.get(model_version=FLIP), force=True)
    # The device missed the rollout: its faces are not strangers, its model is no longer served.
    late = decide()
    assert (late.decision, late.reason, late.person_id) == ("deny", "model_mismatch", None)
    assert late.model_version == "" and "retired" in str(late.details) and FLIP in str(late.details)  # none used


SFACE_DIM, CASIA_DIM = 128, 512


def _axis(i: int, dim: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(dim)]


@pytest.mark.django_db(transaction=True)
def test_embedding_mode_detections_are_decided_in_their_devices_version_during_and_after_a_migration(
    media_root: Path, monkeypatch: pytest.MonkeyPatch, casia_signed: ModelVersion
) -> None:
    from devices.provisioning import device_provision
    from recognition.detections import detections_decide
    from tests.recognition.test_detections import stage

    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)
    door = Door.objects.create(name="Dock")
    old = device_provision(uid="dock-old", door=door).device
    new = device_provision(uid="dock-new", door=door).device
    ada, bob = Person.objects.create(name="Ada"), Person.objects.create(name="Bob")
    group = AccessGroup.objects.create(name="Dockers")
    group.people.add(ada, bob)
    group.doors.add(door)
    for i, person in enumerate((ada, bob)):
        FaceEmbedding.objects.create(person=person, model_version=SFACE_MODEL_VERSION, embedding=_axis(i, SFACE_DIM))
    # The build of CASIA is half way: Bob is embedded, Ada not yet.
    migration = GalleryMigration.objects.create(model=ModelVersion.objects.get(model_version=CASIA), state="running")
    FaceEmbedding.objects.create(person=bob, model_version=CASIA, embedding=_axis(5, CASIA_DIM))

    def decide() -> list[tuple[str, str, int | None]]:
        ids = [
            stage(old, mode="embedding", model_version=SFACE_MODEL_VERSION, values=_axis(0, SFACE_DIM)),  # Ada
            stage(new, mode="embedding", model_version=CASIA, values=_axis(5, CASIA_DIM)),  # Bob
            stage(new, mode="embedding", model_version=CASIA, values=_axis(0, CASIA_DIM)),  # Ada: not in CASIA yet
        ]
        detections_decide(ids)
        events = {str(e.detection_id): e for e in AccessEvent.objects.filter(detection_id__in=ids)}
        return [(events[i].model_version, events[i].reason, events[i].person_id) for i in ids]

    during = decide()
    assert during[0] == (SFACE_MODEL_VERSION, "matched", ada.pk)
    assert during[1] == (CASIA, "matched", bob.pk)
    assert during[2][0] == CASIA and during[2][2] is None  # never matched against another version's vectors
    # The switch (forced here: the build is a stand-in): sface devices keep being decided in sface.
    FaceEmbedding.objects.create(person=ada, model_version=CASIA, embedding=_axis(0, CASIA_DIM))
    model_version_transition(model=migration.model, to_state=State.ACTIVE)
    after = decide()
    assert after[0] == (SFACE_MODEL_VERSION, "matched", ada.pk)
    assert after[2] == (CASIA, "matched", ada.pk)


@pytest.mark.django_db
def test_api_promotes_for_administrators_only_and_shows_progress(
    enrol_env: Path, django_capture_on_commit_callbacks
) -> None:
    from tests.api_support import make_user, session_client, token_client

    FaceEmbedding.objects.create(
        person=Person.objects.create(name="Ada"), model_version=SFACE_MODEL_VERSION, embedding=_axis(0, SFACE_DIM)
    )
    model = _casia()
    promote = reverse("api-model-version-promote", args=[model.pk])
    assert promote.endswith(f"/api/v1/models/{model.pk}/promote/")
    assert token_client(["models:read"]).post(promote, {}, format="json").status_code == 403
    viewer = session_client(make_user(perms=["devices.view_edgedevice"]))
    assert viewer.post(promote, {}, format="json").status_code == 403
    admin = session_client(make_user(perms=["devices.view_edgedevice", "recognition.change_modelversion"]))
    uncalibrated = admin.post(promote, {}, format="json")  # it would deny every crop once active
    assert uncalibrated.status_code == 400 and uncalibrated.json()["error"]["code"] == "not_calibrated"
    _calibrate(CASIA)
    unsigned = admin.post(promote, {}, format="json")  # never hours of re-embedding for a refused bundle
    assert unsigned.status_code == 409 and unsigned.json()["error"]["code"] == "unsigned"
    model_version_register(backend="facenet-casia", model_version=CASIA, options={"flip": False})
    with django_capture_on_commit_callbacks() as sent:
        answer = admin.post(promote, {"note": "quarterly"}, format="json")
    assert answer.status_code == 202 and len(sent) == 1
    gallery = answer.json()["gallery"]
    assert gallery["state"] == "queued" and gallery["activate"] and gallery["ready"] is False
    assert {"done", "total", "photos_per_s", "eta_s", "percent"} <= set(gallery)
    _calibrate(FLIP)
    flip = model_version_register(backend="facenet-casia", model_version=FLIP, options={"flip": True})
    second = admin.post(reverse("api-model-version-promote", args=[flip.pk]), {}, format="json")
    assert second.status_code == 400 and second.json()["error"]["code"] == "promotion_in_progress"
    pause = admin.post(reverse("api-model-version-gallery-pause", args=[model.pk]))
    assert pause.status_code == 200 and pause.json()["gallery"]["state"] == "paused"
    listed = token_client(["models:read"]).get(reverse("api-model-version-detail", args=[model.pk])).json()
    assert listed["gallery"]["state"] == "paused"
    sface = ModelVersion.objects.get(model_version=SFACE_MODEL_VERSION)
    refused = admin.post(reverse("api-model-version-promote", args=[sface.pk]), {}, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "active"
    missing = admin.post(reverse("api-model-version-gallery-resume", args=[sface.pk]))
    assert missing.status_code == 404


@pytest.mark.django_db
def test_command_promotes_shows_progress_and_retires(enrol_env: Path, capsys) -> None:
    from django.core.management import call_command

    call_command("model_registry", "promote", FLIP, "--build-only")
    call_command("model_registry", "progress")
    out = capsys.readouterr().out
    assert f"{FLIP}: gallery queued (build only), 0/0 photos" in out
    call_command("model_registry", "retire", FLIP)
    assert ModelVersion.objects.get(model_version=FLIP).state == State.RETIRED
    assert not GalleryMigration.objects.filter(model__model_version=FLIP).exists()


def test_gallery_tasks_have_their_own_queue_and_worker() -> None:
    from accessctl.project.celery import app
    from accessctl.project.supervisor import default_children

    tasks = ("recognition.gallery_migrate", "recognition.gallery_photo_versions", "recognition.gallery_topups_resume")
    for task in tasks:
        assert app.amqp.router.route({}, task)["queue"].name == settings.GALLERY_QUEUE
    assert app.amqp.router.route({}, "recognition.decide")["queue"].name == settings.RECOGNITION_QUEUE
    children = {c.name: c for c in default_children("127.0.0.1", 8000)}
    gallery, worker = children["gallery-worker"].argv, children["worker"].argv
    assert gallery[gallery.index("-Q") + 1] == settings.GALLERY_QUEUE
    assert gallery[gallery.index("--concurrency") + 1] == "1"
    assert settings.GALLERY_QUEUE not in worker[worker.index("-Q") + 1]
    threads = str(settings.RECOGNITION_GALLERY_WORKER_THREADS)
    assert children["gallery-worker"].env == {"ACCESSCTL_TORCH_THREADS": threads, "ACCESSCTL_ORT_THREADS": threads}
