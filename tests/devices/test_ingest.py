"""The bridge's verification: every detection message ends in a staged detection or one recorded rejection."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from django.utils import timezone

from accessctl.models import AccessEvent, Alarm, Door
from devices import ingest
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition import staging
from recognition.models import InboundDetection
from recognition.queueing import DecisionQueue
from tests import faces

pytestmark = pytest.mark.django_db(transaction=True)

UID = "gate-1"


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(ingest, "decision_enqueue", lambda detection_id, queue=None: calls.append(detection_id))
    return calls


@pytest.fixture
def device(media_root) -> tuple[EdgeDevice, object]:
    door = Door.objects.create(name="Gate")
    provisioned = device_provision(uid=UID, door=door)
    return provisioned.device, p.load_private_key(provisioned.private_key_pem)


def detection(**overrides: object) -> p.Detection:
    now = time.time()
    fields = {
        "device_uid": UID,
        "detection_id": p.new_id(),
        "captured_at": now,
        "sent_at": now,
        "detector_score": 0.99,
        "box": (10, 10, 130, 150),
        "quality": {"face_px": 120.0},
    }
    fields.update(overrides)
    return p.Detection.with_crop(jpeg=faces.face_jpeg(), **fields)


def ingest_raw(raw: bytes, uid: str = UID) -> str:
    return ingest.detection_ingest(device_uid=uid, raw=raw)


def only_event() -> AccessEvent:
    events = list(AccessEvent.objects.all())
    assert len(events) == 1, [(e.reason, e.detection_id) for e in events]
    return events[0]


def test_valid_detection_is_staged_with_its_crop_in_storage(device, enqueued) -> None:
    _, key = device
    det = detection()
    assert ingest_raw(p.seal(det, key)) == "staged"
    staged = InboundDetection.objects.get()
    assert str(staged.detection_id) == det.detection_id
    assert "crop_jpeg" not in staged.payload  # images never in the database
    assert staged.crop.startswith("crops/")
    assert enqueued == [det.detection_id]
    assert EdgeDevice.objects.get(uid=UID).status == EdgeDevice.Status.ONLINE


def test_transport_duplicate_is_staged_once_and_enqueued_again(device, enqueued) -> None:
    """A broker redelivers only what the bridge did not acknowledge: the bridge that staged it may
    have died before enqueueing, so the (idempotent) decision is enqueued again."""
    _, key = device
    det = detection()
    raw = p.seal(det, key)
    assert ingest_raw(raw) == "staged"
    assert ingest_raw(raw) == "requeued"
    assert InboundDetection.objects.get().enqueued == 2
    assert enqueued == [det.detection_id, det.detection_id]
    assert AccessEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "malformed"),
        (b'{"payload": {"v": 1}, "sig": "AAAA"}', "bad_signature"),
        (json.dumps({"payload": [], "sig": "x"}).encode(), "malformed"),
        (b"{" + b" " * (300 * 1024) + b"}", "too_large"),
    ],
)
def test_garbage_is_recorded_once_per_distinct_message(device, enqueued, raw: bytes, reason: str) -> None:
    ingest_raw(raw)
    ingest_raw(raw)  # a redelivered copy of the same bytes
    event = only_event()
    assert (event.decision, event.reason) == ("deny", reason)
    assert event.device_uid == UID
    assert not enqueued


def test_unknown_device_is_denied(enqueued, media_root) -> None:
    private_pem, _ = p.generate_keypair()
    det = detection(device_uid="intruder-9")
    ingest_raw(p.seal(det, p.load_private_key(private_pem)), uid="intruder-9")
    event = only_event()
    assert event.reason == "unknown_device"
    assert event.details["claimed_detection_id"] == det.detection_id
    assert event.detection_id != det.detection_id  # an unverified id is never trusted


def test_forged_signature_is_denied_and_raises_an_alarm(device, enqueued) -> None:
    forger = p.load_private_key(p.generate_keypair()[0])
    ingest_raw(p.seal(detection(), forger))
    assert only_event().reason == "bad_signature"
    alarm = Alarm.objects.get()
    assert alarm.kind == Alarm.Kind.FORGED_SIGNATURE


def test_device_publishing_for_another_device_is_a_topic_mismatch(device, enqueued) -> None:
    _, key = device
    det = detection(device_uid="gate-2")  # signed by gate-1's key, claims to be gate-2
    ingest_raw(p.seal(det, key))
    assert only_event().reason == "topic_mismatch"


def test_stale_detection_is_recorded_but_opens_nothing(device, enqueued) -> None:
    _, key = device
    old = time.time() - 600
    ingest_raw(p.seal(detection(captured_at=old, sent_at=old), key))
    event = only_event()
    assert (event.decision, event.reason, event.source) == ("deny", "stale_timestamp", "detection")
    assert not enqueued


def test_offline_decision_is_synced_back_from_the_spool(device, enqueued) -> None:
    _, key = device
    old = time.time() - 3600
    offline = p.OfflineDecision(action=p.OfflineAction.OPEN, basis="fail_safe", decided_at=old)
    assert ingest_raw(p.seal(detection(captured_at=old, sent_at=old, offline_decision=offline), key)) == "staged"
    # Staged like any detection; the decision task records it (tests/devices/test_offline_reconciliation.py).
    from recognition.detections import detections_decide

    assert detections_decide(enqueued) == ["offline_allowed"]
    event = only_event()
    assert (event.decision, event.reason, event.source) == ("grant", "offline_allowed", "device_offline")
    assert event.details["offline_decision"]["basis"] == "fail_safe"


def test_replay_of_a_decided_detection_is_denied_once(device, enqueued) -> None:
    from django.utils import timezone

    from accessctl.audit import event_record
    from accessctl.codes import Decision, Reason

    _, key = device
    det = detection()
    raw = p.seal(det, key)
    event_record(
        detection_id=det.detection_id,
        occurred_at=timezone.now(),
        decision=Decision.GRANT,
        reason=Reason.MATCHED,
        device_uid=UID,
    )
    ingest_raw(raw)
    ingest_raw(raw)
    replays = AccessEvent.objects.filter(reason="replay")
    assert replays.count() == 1
    assert replays.get().details["replayed_detection_id"] == det.detection_id
    assert not enqueued


def _decided(det: p.Detection, device: EdgeDevice, decision: str = "grant", age_s: float = 0.0) -> AccessEvent:
    import datetime as dt

    from accessctl.audit import event_record
    from accessctl.codes import Decision, Reason

    event, _ = event_record(
        detection_id=det.detection_id,
        occurred_at=dt.datetime.fromtimestamp(det.captured_at - age_s, tz=dt.UTC),
        decision=Decision(decision),
        reason=Reason.MATCHED if decision == "grant" else Reason.UNKNOWN_FACE,
        device_id=device.pk,
        door_id=device.door_id,
        device_uid=device.uid,
    )
    return event


@pytest.fixture
def commands_sent(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    from devices import commands

    sent: list[dict] = []
    monkeypatch.setattr(
        commands, "command_send", lambda uid, kind, **kw: sent.append({"uid": uid, "kind": str(kind), **kw})
    )
    return sent


def test_resent_detection_already_decided_gets_its_answer_again_and_nothing_is_recorded(
    device, enqueued, commands_sent
) -> None:
    dev, key = device
    det = detection()
    _decided(det, dev, "grant")
    again = det.resent(sent_at=time.time())
    assert ingest_raw(p.seal(again, key)) == "repeated"
    assert only_event().reason == "matched"  # no replay record, no alarm
    assert not Alarm.objects.exists() and not enqueued
    assert commands_sent == [
        {"uid": UID, "kind": "open", "reason": "matched", "pulse_ms": dev.door.relay_pulse_ms,
         "detection_id": det.detection_id, "wait": True}
    ]  # fmt: skip


def test_copy_of_a_resend_is_a_replay(device, enqueued, commands_sent) -> None:
    dev, key = device
    det = detection()
    _decided(det, dev, "deny")
    raw = p.seal(det.resent(sent_at=time.time()), key)
    assert ingest_raw(raw) == "repeated"
    assert ingest_raw(raw) == "replay"
    assert [c["kind"] for c in commands_sent] == ["deny"]
    assert AccessEvent.objects.filter(reason="replay").count() == 1


def test_resend_never_opens_once_the_face_is_old(device, enqueued, commands_sent) -> None:
    dev, key = device
    det = detection(captured_at=time.time() - 60)  # captured a minute ago, re-sent just now
    _decided(det, dev, "grant")
    assert ingest_raw(p.seal(det.resent(sent_at=time.time()), key)) == "replay"
    assert not commands_sent


def test_resend_of_a_lost_detection_is_staged_and_decided_normally(device, enqueued) -> None:
    _, key = device
    det = detection()
    assert ingest_raw(p.seal(det.resent(sent_at=time.time()), key)) == "staged"  # the first copy never came
    assert InboundDetection.objects.get().payload["attempt"] == 1
    twice = det.resent(sent_at=time.time()).resent(sent_at=time.time())
    assert ingest_raw(p.seal(twice, key)) == "duplicate"  # staged just now: it is only queued
    # Asked again while staged for a while: its task may be lost, so it is enqueued again (deciding is idempotent).
    InboundDetection.objects.update(
        received_at=timezone.now() - dt.timedelta(seconds=staging.REQUEUE_ON_RESEND_AFTER_S)
    )
    assert ingest_raw(p.seal(twice.resent(sent_at=time.time()), key)) == "requeued"
    assert enqueued == [det.detection_id, det.detection_id]
    assert InboundDetection.objects.get().enqueued == 2


def test_resend_from_another_device_is_a_replay(device, enqueued, commands_sent) -> None:
    dev, key = device
    other = device_provision(uid="gate-2", door=dev.door)
    det = detection()
    _decided(det, other.device, "grant")
    assert ingest_raw(p.seal(det.resent(sent_at=time.time()), key)) == "replay"
    assert not commands_sent


def test_disabled_device_is_refused(device, enqueued) -> None:
    dev, key = device
    EdgeDevice.objects.filter(pk=dev.pk).update(status=EdgeDevice.Status.DISABLED)
    ingest_raw(p.seal(detection(), key))
    assert only_event().reason == "device_disabled"


def test_rejection_is_announced_to_webhook_subscribers(device, enqueued, monkeypatch: pytest.MonkeyPatch) -> None:
    from accessctl import webhooks
    from accessctl.models import WebhookDelivery, WebhookSubscription

    monkeypatch.setattr(webhooks, "_enqueue", lambda pk: None)
    WebhookSubscription.objects.create(
        name="SIEM", url="http://127.0.0.1:9/hook", secret="s", event_types=["access.denied"]
    )
    ingest_raw(b"garbage")
    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == "access.denied"
    assert delivery.payload["reason"] == "malformed"


def test_a_batched_detection_is_acknowledged_once_its_task_is_out(device, monkeypatch) -> None:
    """The staging thread does not wait for the batch: the broker ack comes when the task is sent."""
    import threading

    _, key = device
    gate, sent, acks = threading.Event(), [], []
    det = detection()
    with DecisionQueue(wait_s=0.001, send=lambda ids: (gate.wait(5), sent.append(ids)), backlog=lambda: 0) as queue:
        ingest.message_ingest(p.detections_topic(UID), p.seal(det, key), ack=lambda: acks.append("det"), queue=queue)
        assert acks == [] and InboundDetection.objects.filter(detection_id=det.detection_id).exists()
        gate.set()
        for _ in range(500):
            if acks:
                break
            time.sleep(0.01)
        assert sent == [[det.detection_id]] and acks == ["det"]
        # Anything that is not handed to the batcher is acknowledged when the handler returns.
        ingest.message_ingest(p.detections_topic(UID), b"not json", ack=lambda: acks.append("bad"), queue=queue)
        assert acks == ["det", "bad"]
