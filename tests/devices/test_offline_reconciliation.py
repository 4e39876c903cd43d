"""Decisions a door took alone, reconciled on the server (issue 19): recorded once, with the
server's verdict, answered only with a deny naming the recorded reason; a grant the server would deny raises the
``offline_disagreement`` alarm.

Real Postgres (gallery search, policy, hash chain), the real MQTT broker for the door commands (a
:class:`tests.devices.e2e.CommandListener` on every device's commands topic); the decision task
runs in this process (``detections_decide``, what the Celery task calls), so a test can also stop
between the bridge and the worker.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pytest
from django.test import Client
from django.utils import timezone

from accessctl.audit import chain_verify
from accessctl.models import AccessEvent, AccessGroup, Alarm, Door, Person
from accessctl.offline_marks import offline_mark, offline_mark_text
from accessctl.realtime import event_payload
from devices import ingest
from devices.commands import server_public_key_b64
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition import staging
from recognition.detections import detections_decide
from recognition.models import FaceEmbedding, InboundDetection
from tests.accessctl.helpers import superuser_execute, user_create
from tests.devices import e2e

pytestmark = pytest.mark.django_db(transaction=True)

UID = "door-offline-1"
MODEL = "sface-2021dec-int8bq"  # 128 dims; the tests' vectors are random unit vectors
DIM = 128


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Detection ids the bridge enqueued (the test plays the worker with :func:`decide`)."""
    calls: list[str] = []
    monkeypatch.setattr(ingest, "decision_enqueue", lambda detection_id, queue=None: calls.append(str(detection_id)))
    return calls


def decide(ids: list[str]) -> list[str]:
    """What the ``recognition.decide_many`` task does with the ids, then forget them."""
    reasons = detections_decide(list(ids))
    ids.clear()
    return reasons


def unit(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


@pytest.fixture
def site(media_root):
    door = Door.objects.create(name="Back door", timezone="Europe/Berlin", relay_pulse_ms=1500)
    staff = AccessGroup.objects.create(name="Staff")  # no schedule: always open
    staff.doors.add(door)
    alice = Person.objects.create(name="Alice Allowed")
    bob = Person.objects.create(name="Bob Outsider")  # enrolled, in no group of this door
    staff.people.add(alice)
    for seed, person in ((1, alice), (2, bob)):
        FaceEmbedding.objects.create(person=person, model_version=MODEL, embedding=unit(seed), quality=1.0)
    provisioned = device_provision(uid=UID, door=door)
    key = p.load_private_key(provisioned.private_key_pem)
    return {"door": door, "device": provisioned.device, "key": key, "alice": alice, "bob": bob}


def offline_detection(
    *,
    seed: int,
    person: Person | None,
    action: str = "open",
    reason: str | None = "matched",
    basis: str = "allowlist",
    age_s: float = 600.0,
    version: int | None = 7,
    similarity: float | None = 0.93,
    **overrides: object,
) -> p.Detection:
    captured = time.time() - age_s
    offline = p.OfflineDecision(
        action=p.OfflineAction(action),
        basis=basis,
        decided_at=captured,
        person_ref=str(person.uid) if person is not None else None,
        reason=reason if basis == "allowlist" else None,
        allowlist_version=version if basis == "allowlist" else None,
        similarity=similarity if basis == "allowlist" else None,
    )
    fields: dict = {
        "device_uid": UID,
        "detection_id": p.new_id(),
        "captured_at": captured,
        "sent_at": captured + 0.2,
        "detector_score": 0.98,
        "box": (10, 10, 130, 150),
        "quality": {"face_px": 120.0},
        "offline_decision": offline,
        "liveness": 0.97,
        "liveness_frames": 6,
    }
    fields.update(overrides)
    return p.Detection.with_embedding(values=unit(seed), model_version=MODEL, **fields)


def ingest_raw(raw: bytes) -> str:
    return ingest.detection_ingest(device_uid=UID, raw=raw)


def test_late_allowlist_grant_is_recorded_once_with_its_evidence(site, staged) -> None:
    alice = site["alice"]
    det = offline_detection(seed=1, person=alice)
    raw = p.seal(det, site["key"])
    assert ingest_raw(raw) == "staged"
    # A broker redelivery while staged: its task is enqueued again (deciding is idempotent).
    assert ingest_raw(raw) == "requeued"
    assert not AccessEvent.objects.exists()  # the bridge only staged it
    assert decide(staged) == ["offline_matched", "offline_matched"]
    event = AccessEvent.objects.get()
    assert (event.decision, event.reason, event.source) == ("grant", "offline_matched", "device_offline")
    assert event.person == alice and event.subject_uid == alice.uid
    assert event.allowlist_version == 7
    assert event.similarity == pytest.approx(0.93)
    assert event.occurred_at == dt.datetime.fromtimestamp(det.captured_at, tz=dt.UTC)
    assert (event.liveness_edge, event.liveness_frames) == (0.97, 6)
    assert event.details["late"] is True and event.details["synced_after_s"] >= 590
    server = event.details["server"]
    assert (server["decision"], server["reason"], server["person"], server["basis"]) == (
        "grant", "matched", str(alice.uid), "recognition",
    )  # fmt: skip
    assert server["recognition"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert event.details["agrees"] is True
    assert not Alarm.objects.exists()
    # The same bytes again, once recorded: nothing new recorded; the device, which re-sends until
    # it is told, gets the answer again (a deny naming the recorded reason, never an open).
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    try:
        assert ingest_raw(raw) == "duplicate"
        answer = listener.wait(det.detection_id, timeout=15)
        assert (answer.command, answer.reason) == (p.CommandKind.DENY, "offline_matched")
    finally:
        listener.close()
    assert AccessEvent.objects.count() == 1 and not staged and not InboundDetection.objects.exists()
    assert chain_verify().ok


def test_fresh_offline_decision_is_recorded_and_answered_only_with_a_deny(site, staged) -> None:
    """Recorded as the door decided it; the answer tells the device it is in the log (so it stops
    re-sending it) and is never ``open``: the door acted when it decided."""
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    try:
        offline = offline_detection(seed=1, person=site["alice"], age_s=2.0)  # link back within the window
        online = offline_detection(seed=1, person=None, age_s=0.5)
        online = p.Detection.from_dict({**online.to_dict(), "detection_id": p.new_id()} | {"offline_decision": None})
        assert ingest_raw(p.seal(offline, site["key"])) == "staged"
        assert ingest_raw(p.seal(online, site["key"])) == "staged"
        assert decide(staged) == ["offline_matched", "matched"]
        # The online detection's command is published after the offline one was recorded: once it
        # is here, an answer to the offline one would be too.
        assert listener.wait(online.detection_id, timeout=15).command == p.CommandKind.OPEN
        answer = listener.wait(offline.detection_id, timeout=15)
        assert (answer.command, answer.reason, answer.pulse_ms) == (p.CommandKind.DENY, "offline_matched", 0)
    finally:
        listener.close()
    event = AccessEvent.objects.get(detection_id=offline.detection_id)
    assert (event.source, event.reason, event.details["late"]) == ("device_offline", "offline_matched", False)


def test_person_suspended_while_the_door_was_cut_off_raises_the_disagreement_alarm(site, staged, monkeypatch) -> None:
    from accessctl import alarms

    hooks: list[Alarm] = []
    monkeypatch.setattr(alarms, "webhook_dispatch_alarm", lambda alarm: hooks.append(alarm) or [])
    alice = site["alice"]
    det = offline_detection(seed=1, person=alice)  # granted at the door ten minutes ago
    Person.objects.filter(pk=alice.pk).update(status=Person.Status.SUSPENDED)  # suspended since
    ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == ["offline_matched"]
    event = AccessEvent.objects.get()
    assert event.decision == "grant" and event.details["agrees"] is False
    assert event.details["server"]["reason"] == "suspended"
    alarm = Alarm.objects.get()
    assert (alarm.kind, alarm.event_id, alarm.door_id, alarm.device_uid) == (
        "offline_disagreement", event.pk, site["door"].pk, UID,
    )  # fmt: skip
    assert alarm.details["device"] == {"decision": "grant", "reason": "offline_matched", "person": str(alice.uid)}
    assert alarm.details["server"] == {"decision": "deny", "reason": "suspended", "person": str(alice.uid)}
    assert alarm.details["allowlist_version"] == 7
    assert [h.pk for h in hooks] == [alarm.pk]  # the webhook, like other alarms
    assert "server would deny (suspended)" in offline_mark_text(offline_mark(event))
    assert chain_verify().ok


def test_offline_denial_the_server_would_grant_is_recorded_without_an_alarm(site, staged) -> None:
    det = offline_detection(seed=1, person=site["alice"], action="deny", reason="outside_schedule")
    ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == ["offline_outside_schedule"]
    event = AccessEvent.objects.get()
    assert (event.decision, event.details["agrees"]) == ("deny", False)
    assert (event.details["server"]["decision"], event.details["server"]["reason"]) == ("grant", "matched")
    assert not Alarm.objects.exists()


def test_the_server_judges_the_face_it_recognises_not_only_the_name_the_device_gave(site, staged) -> None:
    # The door matched Alice, but the face is Bob's (a false match at the door): the server's own
    # recognition finds Bob, who may not pass here.
    det = offline_detection(seed=2, person=site["alice"])
    ingest_raw(p.seal(det, site["key"]))
    decide(staged)
    event = AccessEvent.objects.get()
    server = event.details["server"]
    assert (server["decision"], server["reason"], server["person"]) == ("deny", "not_in_group", str(site["bob"].uid))
    assert server["person_ref_verdict"] == {"decision": "grant", "reason": "matched", "person": str(site["alice"].uid)}
    assert Alarm.objects.get().kind == "offline_disagreement"


def test_without_its_own_recognition_the_server_judges_the_named_person(site, staged) -> None:
    # An embedding of a model version this server has no gallery for: the policy for the named person.
    det = offline_detection(seed=1, person=site["alice"])
    payload = det.to_dict() | {"model_version": "some-other-model-v2"}
    det = p.Detection.from_dict(payload)
    ingest_raw(p.seal(det, site["key"]))
    decide(staged)
    event = AccessEvent.objects.get()
    server = event.details["server"]
    assert (server["basis"], server["decision"], server["recognition_unavailable"]) == (
        "person_ref", "grant", "model_mismatch",
    )  # fmt: skip
    assert event.details["agrees"] is True


def test_an_unknown_person_ref_stays_in_the_details(site, staged) -> None:
    det = offline_detection(seed=9, person=None)
    det = p.Detection.from_dict(
        det.to_dict() | {"offline_decision": det.offline_decision.to_dict() | {"person_ref": "erased-or-foreign"}}
    )
    ingest_raw(p.seal(det, site["key"]))
    decide(staged)
    event = AccessEvent.objects.get()
    assert event.person is None and event.subject_uid is None
    assert event.details["person_ref_unknown"] == "erased-or-foreign"
    assert (event.details["server"]["decision"], event.details["server"]["reason"]) == ("deny", "unknown_face")
    assert Alarm.objects.get().kind == "offline_disagreement"  # opened for a face nobody here knows


@pytest.mark.parametrize(("action", "basis", "reason"), [("open", "fail_safe", "offline_allowed"),
                                                         ("deny", "fail_secure", "offline_denied")])  # fmt: skip
def test_fail_safe_and_fail_secure_are_recorded_as_before(site, staged, action, basis, reason) -> None:
    Door.objects.filter(pk=site["door"].pk).update(fail_mode="safe" if basis == "fail_safe" else "secure")
    det = offline_detection(seed=9, person=None, action=action, basis=basis, age_s=3600)
    ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == [reason]
    event = AccessEvent.objects.get()
    assert (event.decision, event.reason, event.source) == (
        "grant" if action == "open" else "deny", reason, "device_offline",
    )  # fmt: skip
    assert event.details["offline_decision"]["basis"] == basis and event.allowlist_version is None
    # A stranger let in by fail-safe: the server would not have, but the site chose to release.
    assert not Alarm.objects.exists()
    assert chain_verify().ok


def test_forged_offline_decision_is_rejected_as_before(site, staged) -> None:
    forger = p.load_private_key(p.generate_keypair()[0])
    det = offline_detection(seed=1, person=site["alice"])
    assert ingest_raw(p.seal(det, forger)) == "bad_signature"
    event = AccessEvent.objects.get()
    assert (event.reason, event.source, event.allowlist_version) == ("bad_signature", "detection", None)
    assert Alarm.objects.get().kind == "forged_signature"
    assert not staged and not InboundDetection.objects.exists()


def test_a_different_payload_under_a_recorded_id_is_a_replay(site, staged) -> None:
    det = offline_detection(seed=1, person=site["alice"])
    ingest_raw(p.seal(det, site["key"]))
    # Staged: a copy that says something else is a replay, the staged one stays as it was.
    other = p.Detection.from_dict(det.to_dict() | {"captured_at": det.captured_at - 5})
    assert ingest_raw(p.seal(other, site["key"])) == "replay"
    decide(staged)
    # Recorded: the same.
    denied = p.Detection.from_dict(
        det.to_dict() | {"offline_decision": det.offline_decision.to_dict() | {"action": "deny", "reason": "revoked"}}
    )
    assert ingest_raw(p.seal(denied, site["key"])) == "replay"
    # A re-send of the same decision (new sent_at, attempt) says the same: not a replay.
    assert ingest_raw(p.seal(det.resent(sent_at=time.time()), site["key"])) == "duplicate"
    reasons = sorted(AccessEvent.objects.values_list("reason", flat=True))
    assert reasons == ["offline_matched", "replay", "replay"]
    assert AccessEvent.objects.get(reason="offline_matched").details["payload_sha256"] == staging.detection_digest(det)
    assert not staged
    assert chain_verify().ok


def test_a_worker_dying_before_it_records_loses_nothing(site, staged, settings) -> None:
    det = offline_detection(seed=1, person=site["alice"])
    ingest_raw(p.seal(det, site["key"]))
    staged.clear()  # the task was lost with the worker: the staged row is all that is left
    settings.DEVICE_INBOUND_RETRY_AFTER_S = 0
    sent: list[str] = []
    assert staging.inbound_requeue(send=sent.extend, now=timezone.now() + dt.timedelta(seconds=1)) == 1
    assert sent == [det.detection_id]
    assert decide(sent) == ["offline_matched"]
    assert detections_decide([det.detection_id]) == ["offline_matched"]  # a redelivered task: nothing new
    assert AccessEvent.objects.count() == 1


def test_allowlist_version_is_chained_and_immutable(site, staged) -> None:
    from django.db import DatabaseError, connection, transaction

    ingest_raw(p.seal(offline_detection(seed=1, person=site["alice"]), site["key"]))
    decide(staged)
    event = AccessEvent.objects.get()
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE accessctl_accessevent SET allowlist_version = 8 WHERE id = %s", [event.pk])
    assert chain_verify().ok
    # Someone with every database right (triggers off) rewrites the version: the chain says so.
    superuser_execute("UPDATE accessctl_accessevent SET allowlist_version = 8 WHERE id = %s", [event.pk], replica=True)
    report = chain_verify()
    assert not report.ok and report.first_broken_id == event.pk


def test_late_offline_events_are_marked_on_the_feed_the_audit_log_and_the_api(site, staged) -> None:
    alice = site["alice"]
    ingest_raw(p.seal(offline_detection(seed=1, person=alice, age_s=180), site["key"]))
    decide(staged)
    event = AccessEvent.objects.select_related("door", "person").get()
    payload = event_payload(event)
    assert payload["source"] == "device_offline"
    assert payload["offline"] is not None
    assert payload["offline"]["late"] is True and payload["offline"]["allowlist_version"] == 7
    assert payload["offline"]["agrees"] is True and 170 <= payload["offline"]["synced_after_s"] < 240
    assert offline_mark_text(payload["offline"]) == "offline, synced 3 min later · allow-list v7 · server agrees"
    user = user_create("auditor", "accessctl.view_accessevent", "accessctl.view_dashboard", is_staff=True)
    client = Client()
    client.force_login(user)
    api = client.get("/api/v1/access-events/").json()
    row = api["results"][0]
    assert row["allowlist_version"] == 7 and row["offline"]["late"] is True and row["offline"]["agrees"] is True
    assert row["recorded_at"] > row["occurred_at"]
    page = client.get("/audit/").content.decode()
    assert "offline, synced 3 min later · allow-list v7 · server agrees" in page
    dashboard = client.get("/").content.decode()
    assert "offline, synced 3 min later" in dashboard
    csv = b"".join(client.get("/audit/export.csv").streaming_content).decode()
    assert "offline, synced 3 min later" in csv


def test_a_synced_batch_is_chained_in_the_order_the_door_decided_it(site, staged) -> None:
    newer = offline_detection(seed=1, person=site["alice"], age_s=60)
    older = offline_detection(seed=2, person=site["bob"], action="deny", reason="unknown_face", age_s=120)
    for det in (newer, older):  # staged in the other order (the bridge stages concurrently)
        ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == ["offline_matched", "offline_unknown_face"]
    chained = [str(e.detection_id) for e in AccessEvent.objects.order_by("id")]
    assert chained == [older.detection_id, newer.detection_id]
    assert chain_verify().ok


def test_a_presentation_attack_refused_offline_raises_the_attack_alarm(site, staged) -> None:
    det = offline_detection(
        seed=1, person=site["alice"], action="deny", reason="presentation_attack", liveness=0.02, liveness_frames=9
    )
    ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == ["offline_presentation_attack"]
    event = AccessEvent.objects.get()
    alarm = Alarm.objects.get()
    assert (alarm.kind, alarm.event_id, alarm.details["offline"]) == ("presentation_attack", event.pk, True)


def test_another_device_reusing_an_offline_detection_id_is_a_replay(site, staged) -> None:
    other = device_provision(uid="door-offline-2", door=site["door"])
    other_key = p.load_private_key(other.private_key_pem)
    det = offline_detection(seed=1, person=site["alice"])
    ingest_raw(p.seal(det, site["key"]))
    copy = p.Detection.from_dict(det.to_dict() | {"device_uid": "door-offline-2"})
    assert ingest.detection_ingest(device_uid="door-offline-2", raw=p.seal(copy, other_key)) == "replay"  # staged
    decide(staged)
    assert ingest.detection_ingest(device_uid="door-offline-2", raw=p.seal(copy, other_key)) == "replay"  # recorded
    assert AccessEvent.objects.filter(reason="replay").count() == 1  # the same bad bytes: recorded once
    assert AccessEvent.objects.get(source="device_offline").device_uid == UID


def test_the_access_webhook_says_it_was_decided_offline(site, staged, monkeypatch) -> None:
    from accessctl import offline_decisions
    from accessctl.webhooks import access_event_webhook_payload

    hooked: list[AccessEvent] = []
    monkeypatch.setattr(offline_decisions, "webhook_dispatch_access_event", lambda event: hooked.append(event) or [])
    ingest_raw(p.seal(offline_detection(seed=1, person=site["alice"]), site["key"]))
    decide(staged)
    assert [e.pk for e in hooked] == [AccessEvent.objects.get().pk]
    payload = access_event_webhook_payload(hooked[0])
    assert payload["source"] == "device_offline" and payload["allowlist_version"] == 7
    assert payload["offline"]["late"] is True and payload["offline"]["agrees"] is True


def test_a_fail_safe_release_at_a_door_set_to_fail_secure_raises_the_alarm(site, staged) -> None:
    det = offline_detection(seed=9, person=None, action="open", basis="fail_safe")  # the door is "secure"
    ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == ["offline_allowed"]
    event = AccessEvent.objects.get()
    assert event.details["door_fail_mode"] == "secure"
    alarm = Alarm.objects.get()
    assert (alarm.kind, alarm.details["server"]["reason"]) == ("offline_disagreement", "unknown_face")


def test_an_offline_decision_dated_in_the_future_is_recorded_and_flagged(site, staged) -> None:
    det = offline_detection(seed=1, person=site["alice"], age_s=-3600)  # the device's clock is an hour ahead
    ingest_raw(p.seal(det, site["key"]))
    assert decide(staged) == ["offline_matched"]
    event = AccessEvent.objects.get()
    assert 3500 < event.details["clock_ahead_s"] <= 3600 and event.details["synced_after_s"] == 0
    assert offline_mark_text(offline_mark(event)).endswith("device clock 60 min ahead")
