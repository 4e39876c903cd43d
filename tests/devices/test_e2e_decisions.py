"""End to end: signed detections over a real MQTT broker, the bridge and a real Celery worker
process, the real database and the real face engine; the door command comes back over MQTT."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.utils import timezone

from accessctl.models import AccessEvent, AccessGroup, Door, Person, Schedule, ScheduleWindow
from devices.commands import server_public_key_b64
from devices.provisioning import device_provision
from faceengine import protocol as p
from faceengine.pipeline import embed_image
from recognition.engine import active_embedder
from recognition.models import FaceEmbedding
from tests import faces
from tests.devices import e2e

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.dataset("lfw"),
]


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, test_env, tmp_path_factory):
    """The bridge and one Celery worker, as child processes on this test run's services."""
    logs = tmp_path_factory.mktemp("e2e-logs")
    with (
        e2e.child_process(e2e.worker_argv(), test_env, "ready.", logs / "worker.log"),
        e2e.child_process(e2e.bridge_argv(), test_env, "bridge connected", logs / "bridge.log"),
    ):
        yield logs


def _enrol(person: Person, count: int, offset: int = 0) -> None:
    from PIL import Image

    embedder = active_embedder()
    for path in faces.face_paths(person.name.replace(" ", "_"), count, offset):
        with Image.open(path) as image:
            face = embed_image(image.convert("RGB"), embedder=embedder, max_faces=1)[0]
        FaceEmbedding.objects.create(
            person=person, model_version=face.model_version, embedding=face.embedding.tolist(), quality=1.0
        )


@pytest.fixture
def site(stack):
    door = Door.objects.create(name="Lobby", timezone="Europe/Berlin", relay_pulse_ms=2500)
    always = AccessGroup.objects.create(name="Staff")
    always.doors.add(door)
    night_only = Schedule.objects.create(name="Never now")
    now_local = timezone.now().astimezone(dt.UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    ScheduleWindow.objects.create(
        schedule=night_only, weekday=(now_local.weekday() + 3) % 7, start=dt.time(1, 0), end=dt.time(2, 0)
    )
    restricted = AccessGroup.objects.create(name="Night shift", schedule=night_only)
    restricted.doors.add(door)

    colin = Person.objects.create(name="Colin Powell")
    tony = Person.objects.create(name="Tony Blair", valid_until=timezone.now() - dt.timedelta(days=1))
    donald = Person.objects.create(name="Donald Rumsfeld")
    always.people.add(colin, tony)
    restricted.people.add(donald)
    for person in (colin, tony, donald):
        _enrol(person, 3)
    provisioned = device_provision(uid="lobby-cam-1", door=door)
    key = p.load_private_key(provisioned.private_key_pem)
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    client = e2e.publisher()
    yield {"door": door, "key": key, "listener": listener, "client": client, "uid": "lobby-cam-1"}
    listener.close()
    client.loop_stop()
    client.disconnect()


def _event(detection_id: str, timeout: float = 30) -> AccessEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = AccessEvent.objects.filter(detection_id=detection_id).first()
        if event is not None:
            return event
        time.sleep(0.05)
    raise TimeoutError(f"no AccessEvent for {detection_id}")


def _send(site, detection: p.Detection, key=None) -> bytes:
    raw = p.seal(detection, key or site["key"])
    site["client"].publish(p.detections_topic(site["uid"]), raw, qos=1).wait_for_publish(5)
    return raw


def _probe(person: str, index: int = 5) -> bytes:
    return e2e.aligned_crop_jpeg(faces.face_paths(person, 1, index)[0])


def test_enrolled_face_opens_its_door_and_others_are_denied_with_reasons(site) -> None:
    cases = {
        "Colin_Powell": ("grant", "matched"),
        "Gerhard_Schroeder": ("deny", "unknown_face"),
        "Tony_Blair": ("deny", "expired"),
        "Donald_Rumsfeld": ("deny", "outside_schedule"),
    }
    sent = {}
    for person in cases:
        detection = e2e.crop_detection(site["uid"], _probe(person))
        _send(site, detection)
        sent[person] = detection.detection_id
    for person, (decision, reason) in cases.items():
        event = _event(sent[person])
        assert (event.decision, event.reason) == (decision, reason), person
        command = site["listener"].wait(sent[person])
        assert command.command == (p.CommandKind.OPEN if decision == "grant" else p.CommandKind.DENY)
        assert command.reason == reason
    colin = _event(sent["Colin_Powell"])
    assert colin.person.name == "Colin Powell"
    assert colin.similarity > colin.threshold
    assert colin.snapshot  # the crop is kept for the dashboard
    assert site["listener"].commands[sent["Colin_Powell"]].pulse_ms == 2500
    assert AccessEvent.objects.count() == len(cases)


def test_forged_signature_and_replay_are_denied_and_recorded_once(site) -> None:
    genuine = e2e.crop_detection(site["uid"], _probe("Colin_Powell"))
    raw = _send(site, genuine)
    assert _event(genuine.detection_id).reason == "matched"
    site["listener"].wait(genuine.detection_id)

    forger_key = p.load_private_key(p.generate_keypair()[0])
    forged = e2e.crop_detection(site["uid"], _probe("Colin_Powell", 6))
    _send(site, forged, key=forger_key)

    site["client"].publish(p.detections_topic(site["uid"]), raw, qos=1).wait_for_publish(5)  # replay
    site["client"].publish(p.detections_topic(site["uid"]), raw, qos=1).wait_for_publish(5)  # and again

    deadline = time.monotonic() + 20
    while AccessEvent.objects.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # give a wrongly duplicated record the chance to appear
    reasons = sorted(AccessEvent.objects.values_list("reason", flat=True))
    assert reasons == ["bad_signature", "matched", "replay"]
    forged_event = AccessEvent.objects.get(reason="bad_signature")
    assert forged_event.decision == "deny"
    assert forged_event.details["claimed_detection_id"] == forged.detection_id
    assert forged.detection_id not in site["listener"].commands  # a forged message never reaches the door
    replay = AccessEvent.objects.get(reason="replay")
    assert replay.details["replayed_detection_id"] == genuine.detection_id


def test_embedding_mode_privacy_detection_is_decided(site) -> None:
    from PIL import Image

    path = faces.face_paths("Colin_Powell", 1, 7)[0]
    with Image.open(path) as image:
        face = embed_image(image.convert("RGB"), max_faces=1)[0]
    detection = e2e.embedding_detection(site["uid"], face.embedding.tolist(), face.model_version, encoding="f16")
    _send(site, detection)
    event = _event(detection.detection_id)
    assert (event.decision, event.reason) == ("grant", "matched")
    assert event.snapshot == ""  # privacy mode: no face image left the device
    assert site["listener"].wait(detection.detection_id).command == p.CommandKind.OPEN


def test_offline_decisions_reach_the_log_once_in_order_and_are_answered_only_with_deny(site) -> None:
    """A door that decided alone syncs its spool: a late grant, a late denial, a fresh grant. The
    real bridge and worker record each once with the server's verdict (its own recognition of the
    crop), in order; the same bytes again change nothing; each is answered with a ``deny`` naming its
    recorded reason (the device stops re-sending it), never an ``open``."""
    import dataclasses

    from accessctl.audit import chain_verify

    colin, tony = Person.objects.get(name="Colin Powell"), Person.objects.get(name="Tony Blair")

    def offline(person: Person, action: str, reason: str, age_s: float) -> p.Detection:
        captured = time.time() - age_s
        det = e2e.crop_detection(site["uid"], _probe(person.name.replace(" ", "_")), captured_at=captured)
        decision = p.OfflineDecision(
            action=p.OfflineAction(action), basis="allowlist", decided_at=captured, person_ref=str(person.uid),
            reason=reason, allowlist_version=3, similarity=0.9,
        )  # fmt: skip
        return dataclasses.replace(det, sent_at=captured + 0.1, offline_decision=decision)

    spool = [offline(colin, "open", "matched", 900), offline(tony, "deny", "expired", 600)]
    fresh = offline(colin, "open", "matched", 1.0)
    raws = [_send(site, det) for det in [*spool, fresh]]
    events = [_event(det.detection_id) for det in [*spool, fresh]]
    assert [(e.decision, e.reason, e.source) for e in events] == [
        ("grant", "offline_matched", "device_offline"),
        ("deny", "offline_expired", "device_offline"),
        ("grant", "offline_matched", "device_offline"),
    ]
    # The log lists them in the order the door decided them (by original time: the bridge stages
    # detections concurrently, so the chain order of two batches is not the door's).
    logged = AccessEvent.objects.filter(source="device_offline").order_by("occurred_at")
    assert [str(e.detection_id) for e in logged] == [det.detection_id for det in [*spool, fresh]]
    assert [e.occurred_at.timestamp() for e in events] == pytest.approx([det.captured_at for det in [*spool, fresh]])
    assert [e.details["late"] for e in events] == [True, True, False]
    assert events[0].person == colin and events[0].allowlist_version == 3
    assert events[0].details["server"]["basis"] == "recognition" and events[0].details["agrees"] is True
    assert events[1].details["server"]["reason"] == "expired" and events[1].details["agrees"] is True
    # A spool redelivered after a crash: the same bytes again. Then a normal detection, whose
    # answer comes after anything the bridge and worker did with the copies.
    for raw in raws:
        site["client"].publish(p.detections_topic(site["uid"]), raw, qos=1).wait_for_publish(5)
    probe = e2e.crop_detection(site["uid"], _probe("Colin_Powell"))
    _send(site, probe)
    assert site["listener"].wait(probe.detection_id).command == p.CommandKind.OPEN
    # each offline decision answered "recorded" with a deny naming its reason, never an open
    answers = [site["listener"].wait(det.detection_id) for det in [*spool, fresh]]
    assert [(a.command, a.reason) for a in answers] == [
        (p.CommandKind.DENY, "offline_matched"), (p.CommandKind.DENY, "offline_expired"),
        (p.CommandKind.DENY, "offline_matched"),
    ]  # fmt: skip
    assert AccessEvent.objects.filter(source="device_offline").count() == 3
    assert not AccessEvent.objects.filter(reason="replay").exists()
    assert chain_verify().ok
