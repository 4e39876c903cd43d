"""Shadow decisions (recognition/shadow_sampling.py, recognition/shadow.py): a model version in state
``shadow`` decides a sample of live crop-mode detections without acting; the sample is bounded, a
crop gone is handled, the real decision is untouched; the figures in the admin and the API."""

from __future__ import annotations

import datetime as dt
import io
import json
import time
import uuid
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.urls import reverse
from PIL import Image

from accessctl import metrics
from accessctl.audit import EventDraft, events_record
from accessctl.broker_queue import broker_queue_depth
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, AccessGroup, Alarm, Door, Person, WebhookDelivery, WebhookSubscription
from accessctl.project.celery import app
from faceengine import protocol as p
from faceengine.backends.sface import SFACE_MODEL_VERSION
from recognition.gallery_versions import gallery_ready
from recognition.metric_gauges import broker_gauges
from recognition.model_registry import model_version_transition
from recognition.models import FaceEmbedding, InboundDetection, ModelVersion, ShadowDecision
from recognition.shadow import shadow_decide, shadow_summary
from recognition.shadow_sampling import (
    Outcome,
    ShadowCandidate,
    shadow_caches_clear,
    shadow_offer,
    shadow_versions_usable,
)
from tests import faces
from tests.api_support import make_user, session_client, token_client
from tests.waiting import wait_until

CASIA = "facenet-casia-20180408"
State = ModelVersion.State


def _count(outcome: str) -> float:
    return metrics.SHADOW_DECISIONS.labels(outcome)._value.get()


def _gallery(people: list[Person], versions: dict[str, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for person in people:
        for version, dim in versions.items():
            vector = rng.normal(size=dim)
            FaceEmbedding.objects.create(
                person=person, model_version=version, embedding=vector / np.linalg.norm(vector)
            )


def _shadow(version: str = CASIA) -> ModelVersion:
    return model_version_transition(model=ModelVersion.objects.get(model_version=version), to_state=State.SHADOW)


def _candidates(n: int, person_id: int | None = None) -> list[ShadowCandidate]:
    return [ShadowCandidate(1000 + i, SFACE_MODEL_VERSION, person_id, "matched" if person_id else "unknown_face")
            for i in range(n)]  # fmt: skip


@pytest.fixture
def queue(settings):
    """A shadow queue of this test's own on the real broker, deleted afterwards."""
    name = f"shadow-test-{uuid.uuid4().hex[:8]}"
    settings.RECOGNITION_SHADOW_QUEUE = name
    yield name
    with app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_delete(queue=name)
        except Exception:
            pass


@pytest.mark.django_db
def test_only_a_shadow_version_whose_gallery_covers_the_active_one_gets_a_sample(settings) -> None:
    settings.RECOGNITION_SHADOW_SAMPLE_RATE = 0.2
    people = [Person.objects.create(name=f"p{i}") for i in range(2)]
    _gallery(people, {SFACE_MODEL_VERSION: 128})
    _gallery(people[:1], {CASIA: 512}, seed=1)
    sent: list[dict] = []
    offer = {"depth": lambda: 0, "send": sent.append}
    assert shadow_offer(_candidates(5), draw=lambda: 0.0, **offer) == 0  # no version in shadow
    _shadow()
    assert not gallery_ready(CASIA)
    assert shadow_versions_usable(SFACE_MODEL_VERSION) == ()
    assert shadow_offer(_candidates(5), draw=lambda: 0.0, **offer) == 0  # half a gallery: no figures from it
    _gallery(people[1:], {CASIA: 512}, seed=2)
    shadow_caches_clear()
    assert shadow_versions_usable(SFACE_MODEL_VERSION) == (CASIA,)
    draws = iter([0.05, 0.5, 0.19, 0.2, 0.99, 0.0])
    assert shadow_offer(_candidates(6, people[0].pk), draw=lambda: next(draws), **offer) == 3
    assert [a["event_id"] for a in sent] == [1000, 1002, 1005]  # the draws below the rate
    assert sent[0]["model_version"] == CASIA and sent[0]["active_person_id"] == people[0].pk
    json.dumps(sent)  # ids and codes only: a JSON task
    settings.RECOGNITION_SHADOW_SAMPLE_RATE = 0.0
    assert shadow_offer(_candidates(6), draw=lambda: 0.0, **offer) == 0


@pytest.mark.django_db
def test_a_flood_of_detections_leaves_a_bounded_shadow_queue_and_counts_the_drops(settings, queue) -> None:
    settings.RECOGNITION_SHADOW_SAMPLE_RATE = 1.0
    settings.RECOGNITION_SHADOW_MAX_BACKLOG = 5
    people = [Person.objects.create(name="p")]
    _gallery(people, {SFACE_MODEL_VERSION: 128, CASIA: 512})
    _shadow()
    dropped = _count(Outcome.BACKLOG)
    assert shadow_offer(_candidates(40)) == 5  # the real broker and its real count
    assert broker_queue_depth(app, queue) == 5
    assert _count(Outcome.BACKLOG) - dropped == 35
    shadow_caches_clear()  # the next count is read from the broker: still full
    assert shadow_offer(_candidates(10)) == 0 and broker_queue_depth(app, queue) == 5
    gauges = {g.name: g.samples[0].value for g in broker_gauges()}
    assert gauges["accessctl_shadow_queue_tasks"] == 5  # what an operator sees

    # The task waits in its own queue, off the decision queue (a worker of its own takes it).
    assert app.amqp.router.route({}, "recognition.shadow_decide")["queue"].name == "shadow"

    def broker_down() -> int:
        raise ConnectionError("broker away")

    shadow_caches_clear()
    assert shadow_offer(_candidates(3), depth=broker_down, send=lambda _: None) == 0  # unknown room: none


def _event(
    door: Door, *, snapshot: str = "", person: Person | None = None, occurred_at: dt.datetime | None = None
) -> AccessEvent:
    (event, _), = events_record([EventDraft(
        detection_id=uuid.uuid4(), occurred_at=occurred_at or dt.datetime.now(dt.UTC), door_id=door.pk,
        device_uid="cam", decision=Decision.DENY, reason=Reason.UNKNOWN_FACE, similarity=0.2, margin=0.05,
        model_version=SFACE_MODEL_VERSION, snapshot=snapshot, person_id=person.pk if person else None,
    )])  # fmt: skip
    return event


@pytest.mark.django_db
def test_a_late_a_gone_or_an_unshadowed_sample_is_dropped_and_counted(media_root) -> None:
    door = Door.objects.create(name="Dock")
    stored = default_storage.save("crops/2026/12/01/x.jpg", ContentFile(b"irrelevant"))
    kept, gone, none = _event(door, snapshot=stored), _event(door, snapshot="crops/2026/12/01/gone.jpg"), _event(door)

    def decide(event_id: int, queued_at: float | None = None) -> str:
        return shadow_decide(event_id=event_id, model_version=CASIA, active_person_id=None,
                             active_reason="unknown_face", queued_at=queued_at or time.time())  # fmt: skip

    assert decide(kept.pk) == Outcome.NOT_SHADOW  # still a candidate (or moved back since it was queued)
    _shadow()
    late = _count(Outcome.LATE)
    assert decide(kept.pk, queued_at=time.time() - 3600) == Outcome.LATE and _count(Outcome.LATE) == late + 1
    crop_gone = _count(Outcome.CROP_GONE)
    assert decide(gone.pk) == Outcome.CROP_GONE  # deleted by retention or an erasure meanwhile
    assert decide(none.pk) == Outcome.CROP_GONE  # its reference cleared
    assert _count(Outcome.CROP_GONE) == crop_gone + 2
    assert decide(kept.pk + 1000) == Outcome.EVENT_GONE
    assert not ShadowDecision.objects.exists()


def _row(model: ModelVersion, door: Door, n: int, **fields) -> ShadowDecision:
    values = {
        "model": model, "event_id": n, "door": door, "occurred_at": dt.datetime.now(dt.UTC),
        "active_model_version": SFACE_MODEL_VERSION, "active_decision": "grant", "active_reason": "matched",
        "shadow_decision": "grant", "shadow_reason": "matched", "agreed_person": True, "agreed_decision": True,
        "ms": 40.0, **fields,
    }  # fmt: skip
    return ShadowDecision.objects.create(**values)


@pytest.mark.django_db
def test_the_figures_agreement_confusion_and_both_distributions_in_the_api_and_the_admin(admin_client, capsys) -> None:
    model = _shadow()
    door = Door.objects.create(name="Hall")
    _row(model, door, 1, active_similarity=0.71, shadow_similarity=0.62)
    _row(model, door, 2, active_similarity=0.72, shadow_similarity=0.64)
    _row(model, door, 3, active_similarity=0.55, shadow_similarity=0.41, shadow_decision="deny",
         shadow_reason="unknown_face", agreed_person=False, agreed_decision=False)  # fmt: skip
    _row(model, door, 4, active_decision="deny", active_reason="unknown_face", shadow_decision="deny",
         shadow_reason="unknown_face", active_similarity=0.2, shadow_similarity=-0.05)  # fmt: skip
    _row(model, door, 5, active_decision="deny", active_reason="not_in_group", shadow_decision="grant",
         agreed_decision=False, active_similarity=0.8, shadow_similarity=None)  # fmt: skip
    figures = shadow_summary(model=model)
    assert figures["samples"] == 5 and figures["mean_ms"] == 40.0
    assert figures["agreement"] == {
        "same_person": 4, "same_decision": 3, "same_both": 3, "person_rate": 0.8, "decision_rate": 0.6,
        "both_rate": 0.6,
    }  # fmt: skip
    assert figures["confusion"] == {"grant": {"grant": 2, "deny": 1}, "deny": {"grant": 1, "deny": 1}}
    buckets = {(b["low"], b["high"]): (b["active"], b["shadow"]) for b in figures["similarity"]["buckets"]}
    assert len(buckets) == 22 and buckets[(None, 0.0)] == (0, 1) and buckets[(0.6, 0.65)] == (0, 2)
    assert buckets[(0.7, 0.75)] == (2, 0) and buckets[(0.4, 0.45)] == (0, 1) and buckets[(0.8, 0.85)] == (1, 0)
    assert figures["similarity"]["no_score"] == {"active": 0, "shadow": 1}
    assert figures["gallery_covers_active"] is True  # nobody enrolled: nothing missing
    _gallery([Person.objects.create(name="new")], {SFACE_MODEL_VERSION: 128})
    assert shadow_summary(model=model)["gallery_covers_active"] is False  # enrolled since, not re-embedded

    by_name = reverse("api-model-version-shadow", args=[CASIA])
    reader = token_client(["models:read"])
    answer = reader.get(by_name)
    assert answer.status_code == 200 and answer.json()["agreement"]["decision_rate"] == 0.6
    assert reader.get(reverse("api-model-version-shadow", args=[model.pk])).json()["samples"] == 5
    assert reader.get(reverse("api-model-version-shadow", args=["no-such-model"])).status_code == 404
    assert token_client(["events:read"]).get(by_name).status_code == 403

    call_command("model_registry", "shadow-report", CASIA)
    out = capsys.readouterr().out
    assert "5 shadow decisions" in out and "same decision" in out and "60.0 %" in out
    call_command("model_registry", "shadow-report", CASIA, "--json")
    assert json.loads(capsys.readouterr().out)["confusion"]["grant"]["deny"] == 1

    page = admin_client.get(reverse("admin:recognition_modelversion_change", args=[model.pk]))
    html = page.content.decode()
    assert page.status_code == 200 and "5 live detections decided in shadow" in html and "60.0 %" in html
    assert "does not cover every person" in html
    assert "<script" not in html.split("shadow-figures")[1].split("</div>\n</div>")[0]


@pytest.mark.django_db
def test_model_scopes_read_and_write_and_device_readers_no_longer_see_models() -> None:
    model = ModelVersion.objects.get(model_version=CASIA)
    listing, transition = reverse("api-model-version-list"), reverse("api-model-version-transition", args=[model.pk])
    assert token_client(["models:read"]).get(listing).status_code == 200
    assert token_client(["devices:read"]).get(listing).status_code == 403  # a new token needs models:read
    assert token_client(["models:read"]).post(transition, {"state": "shadow"}, format="json").status_code == 403
    moved = token_client(["models:write"]).post(transition, {"state": "shadow"}, format="json")
    assert moved.status_code == 200 and moved.json()["state"] == "shadow"
    # The scope alone is not enough: the owner must hold the permission now.
    viewer = make_user(perms=["recognition.view_modelversion"])
    assert session_client(viewer).get(listing).status_code == 200
    assert session_client(make_user(perms=["devices.view_edgedevice"])).get(listing).status_code == 403


@pytest.mark.django_db
def test_the_migration_keeps_existing_device_reader_tokens_reading_models() -> None:
    import importlib

    from django.apps import apps
    from django.contrib.auth.models import Group, Permission
    from django.db import connection

    from accessctl.models import ApiToken
    from tests.api_support import issue_token

    migration = importlib.import_module("recognition.migrations.0010_models_token_scopes")
    old, _ = issue_token(scopes=["devices:read"])
    other, _ = issue_token(scopes=["events:read"])
    group = Group.objects.create(name="fleet viewers")
    group.permissions.add(Permission.objects.get(codename="view_edgedevice"))
    migration.forwards(apps, SimpleNamespace(connection=connection))
    assert ApiToken.objects.get(pk=old.pk).scopes == ["devices:read", "models:read"]
    assert ApiToken.objects.get(pk=other.pk).scopes == ["events:read"]
    owner = type(old.user).objects.get(pk=old.user_id)
    assert owner.has_perm("recognition.view_modelversion")
    assert group.permissions.filter(codename="view_modelversion").exists()


def _noise_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def _stage_crop(device, jpeg: bytes) -> str:
    now = time.time()
    det = p.Detection.with_crop(
        jpeg=jpeg, device_uid=device.uid, detection_id=p.new_id(), captured_at=now, sent_at=now, detector_score=0.9,
        box=(0, 0, 120, 120), quality={"face_px": 120.0},
    )  # fmt: skip
    payload = det.to_dict()
    payload.pop("crop_jpeg", None)
    name = default_storage.save(f"crops/test/{det.detection_id}.jpg", ContentFile(jpeg))
    InboundDetection.objects.create(
        detection_id=det.detection_id, device_uid=device.uid, device_id=device.pk, door=device.door, payload=payload,
        crop=name,
    )  # fmt: skip
    return det.detection_id


@pytest.mark.django_db(transaction=True)
def test_the_decision_path_hands_a_sample_off_after_the_real_decision_and_changes_nothing(
    settings, queue, media_root, monkeypatch
) -> None:
    from devices.provisioning import device_provision
    from recognition.detections import detections_decide

    commands: list[int] = []
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: commands.append(event.pk))
    monkeypatch.setattr("accessctl.webhooks._SENDERS", [lambda pk: None])
    settings.RECOGNITION_SHADOW_SAMPLE_RATE = 1.0
    WebhookSubscription.objects.create(name="siem", url="https://siem.example/hook", secret="s", event_types=["*"])
    door = Door.objects.create(name="Dock")
    device = device_provision(uid="dock-1", door=door).device
    _gallery([Person.objects.create(name="p")], {SFACE_MODEL_VERSION: 128, CASIA: 512})
    ids = [_stage_crop(device, _noise_jpeg(1))]
    assert detections_decide(ids) == ["unknown_face"]  # no shadow yet
    _shadow()
    ids.append(_stage_crop(device, _noise_jpeg(1)))
    assert detections_decide(ids[1:]) == ["unknown_face"]
    first, second = (AccessEvent.objects.get(detection_id=i) for i in ids)
    # The same face decides the same way with a version in shadow: same verdict, score, door command,
    # one webhook each, no alarm, nothing recorded by the shadow yet (its task waits in its queue).
    assert (first.decision, first.reason, first.similarity) == (second.decision, second.reason, second.similarity)
    assert second.model_version == SFACE_MODEL_VERSION and commands == [first.pk, second.pk]
    assert WebhookDelivery.objects.filter(payload__event_id=second.pk).count() == 1
    assert WebhookDelivery.objects.count() == 2 and not Alarm.objects.exists()
    assert wait_until(lambda: broker_queue_depth(app, queue) == 1)  # handed off by the process's thread
    assert not ShadowDecision.objects.exists()
    with app.connection_for_read() as conn:
        message = conn.default_channel.basic_get(queue, no_ack=True)
        kwargs = message.decode()[1]  # Celery's message: [args, kwargs, embed]
    assert kwargs["event_id"] == second.pk and kwargs["model_version"] == CASIA
    assert kwargs["active_person_id"] is None and kwargs["active_reason"] == "unknown_face"


@pytest.mark.slow
@pytest.mark.dataset("lfw")
@pytest.mark.django_db(transaction=True)
def test_a_shadow_version_decides_live_crops_without_acting(enrol_env, monkeypatch) -> None:
    """End to end on the service level: enrolled in both versions (the candidate's vectors through the
    enrolment code, as the gallery job will), a real crop decided by sface, then by facenet-casia in shadow."""
    from devices.provisioning import device_provision
    from recognition.calibration import store_threshold
    from recognition.detections import detections_decide
    from recognition.engine import version_embedder
    from recognition.enrollment import face_analyse, photo_enroll
    from recognition.tasks import shadow_decide as shadow_task
    from tests.devices.e2e import aligned_crop_jpeg

    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)
    door = Door.objects.create(name="Hall")
    device = device_provision(uid="hall-1", door=door).device
    group = AccessGroup.objects.create(name="Hall")
    group.doors.add(door)
    model = ModelVersion.objects.get(model_version=CASIA)
    casia = version_embedder(model.model_version)
    people = {}
    for name in ("Colin_Powell", "George_W_Bush"):
        person = Person.objects.create(name=name)
        group.people.add(person)
        photo = photo_enroll(person=person, image=faces.face_jpeg(name, 0))
        analysis = face_analyse(faces.face_jpeg(name, 0), embedder=casia)
        FaceEmbedding.objects.create(person=person, photo=photo, model_version=CASIA, embedding=analysis.embedding)
        people[name] = person
    store_threshold(model_version=CASIA, threshold=0.45, target_fmr=1e-3)
    _shadow()
    detection_id = _stage_crop(device, aligned_crop_jpeg(faces.face_paths("Colin_Powell", 1, offset=2)[0]))
    assert detections_decide([detection_id]) == ["matched"]
    event = AccessEvent.objects.get(detection_id=detection_id)
    events, deliveries = AccessEvent.objects.count(), WebhookDelivery.objects.count()
    args = {"event_id": event.pk, "model_version": CASIA, "active_person_id": people["Colin_Powell"].pk,
            "active_reason": "matched", "queued_at": time.time()}  # fmt: skip
    assert shadow_task.apply(kwargs=args).get() == Outcome.RECORDED  # the task, run here
    assert shadow_decide(**args) == Outcome.DUPLICATE  # a redelivered task records nothing twice
    row = ShadowDecision.objects.get()
    assert row.active_person_id == row.shadow_person_id == people["Colin_Powell"].pk
    assert row.active_decision == row.shadow_decision == "grant" and row.agreed_person and row.agreed_decision
    assert row.shadow_similarity > 0.45 and row.active_similarity == event.similarity and row.ms > 0
    # It acted on nothing: no event, no webhook, no alarm; the real event is as it was.
    assert (AccessEvent.objects.count(), WebhookDelivery.objects.count()) == (events, deliveries)
    assert not Alarm.objects.exists()
    assert AccessEvent.objects.get(pk=event.pk).hash == event.hash
    assert shadow_summary(model=model)["agreement"]["both_rate"] == 1.0


@pytest.mark.django_db
def test_a_persons_shadow_decisions_are_exported_and_erased_with_them(media_root) -> None:
    from accessctl.privacy.erasure import person_erase, person_export

    model, door = _shadow(), Door.objects.create(name="Hall")
    ada, bob = Person.objects.create(name="ada"), Person.objects.create(name="bob")
    _row(model, door, 1, active_person=ada, shadow_person=bob, agreed_person=False)
    _row(model, door, 2, active_person=bob, shadow_person=bob)
    exported = json.loads(zipfile.ZipFile(io.BytesIO(person_export(person=ada))).read("person.json"))
    (seen,) = exported["shadow_decisions"]  # the right of access covers them
    assert seen["event_id"] == 1 and seen["active_matched_you"] and not seen["shadow_matched_you"]
    person_erase(person=ada)
    assert list(ShadowDecision.objects.values_list("event_id", flat=True)) == [2]


def test_the_hand_off_buffer_of_a_process_is_bounded_too(settings, monkeypatch) -> None:
    """The decision path never waits for the broker: its samples go to a thread through a bounded
    buffer; with the broker stuck, what does not fit is dropped and counted."""
    import threading

    from recognition import shadow_sampling

    settings.RECOGNITION_SHADOW_MAX_BACKLOG = 2
    stuck, taken = threading.Event(), threading.Event()

    def send(sample) -> int:
        taken.set()
        stuck.wait(10)
        return 0

    monkeypatch.setattr(shadow_sampling, "shadow_send", send)
    handoff = shadow_sampling._HandOff()
    dropped = _count(Outcome.BACKLOG)
    handoff.put([{"event_id": 1}])
    assert taken.wait(5)  # the thread holds the first one, stuck in the broker
    started = time.perf_counter()
    for n in range(2, 7):
        handoff.put([{"event_id": n}, {"event_id": n}])
    assert time.perf_counter() - started < 0.5  # never blocked
    assert _count(Outcome.BACKLOG) - dropped == 6  # two buffered, three of two samples dropped
    stuck.set()


@pytest.mark.django_db
def test_the_shadow_decisions_go_with_their_events_under_retention(settings) -> None:
    from accessctl.privacy.retention import DataKind, retention_apply

    settings.RETAIN_EVENTS_DAYS = 365
    model, door = _shadow(), Door.objects.create(name="Hall")
    old = _event(door, occurred_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=400))
    new = _event(door)
    _row(model, door, old.pk)
    _row(model, door, new.pk)
    retention_apply(kinds={DataKind.ACCESS_EVENTS})
    assert not AccessEvent.objects.filter(pk=old.pk).exists()
    assert list(ShadowDecision.objects.values_list("event_id", flat=True)) == [new.pk]
