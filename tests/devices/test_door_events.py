"""Door events (issue 23): signed position-sensor and exit-button messages, verified by
``devices.door_events`` and recorded by ``accessctl.door_sensors``: forced open, held open and exit
requests each make exactly one record and (for the first two) one alarm, cleared when the door
closes; forged, replayed, stale and malformed messages are refused and recorded once."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from accessctl.audit import chain_verify
from accessctl.codes import Reason
from accessctl.door_sensors import doors_held_open_sweep
from accessctl.doors import door_unlock
from accessctl.models import AccessEvent, Alarm, Door, DoorPosition, WebhookDelivery, WebhookSubscription
from devices import ingest
from devices.door_events import door_event_ingest
from devices.provisioning import device_provision
from faceengine import protocol as p
from tests.accessctl.helpers import user_create

pytestmark = pytest.mark.django_db(transaction=True)

UID = "door-cam-1"


@pytest.fixture
def site(media_root) -> dict:
    door = Door.objects.create(name="Back door", relay_pulse_ms=2000, held_open_s=20)
    provisioned = device_provision(uid=UID, door=door)
    WebhookSubscription.objects.create(name="siem", url="https://siem.example/hook", secret="s", event_types=["*"])
    return {"door": door, "device": provisioned.device, "key": p.load_private_key(provisioned.private_key_pem)}


def door_event(kind: str, *, at: float | None = None, released: bool | None = False, **fields: object) -> p.DoorEvent:
    at = time.time() if at is None else at
    values: dict = {"device_uid": UID, "event_id": p.new_id(), "kind": kind, "occurred_at": at, "sent_at": at}
    values["released"] = released
    values.update(fields)
    return p.DoorEvent(**values)


def send(site: dict, event: p.DoorEvent, *, key: object = None) -> str:
    return door_event_ingest(device_uid=UID, raw=p.seal(event, key or site["key"]))


def reasons() -> list[str]:
    return list(AccessEvent.objects.order_by("id").values_list("reason", flat=True))


def alarms(kind: str) -> list[Alarm]:
    return list(Alarm.objects.filter(kind=kind))


def webhook_types() -> list[str]:
    return list(WebhookDelivery.objects.order_by("id").values_list("event_type", flat=True))


def test_forced_open_raises_one_alarm_cleared_when_the_door_closes(site) -> None:
    assert send(site, door_event("opened")) == "recorded"
    assert reasons() == [Reason.FORCED_OPEN]
    forced = AccessEvent.objects.get()
    assert forced.decision == "deny" and forced.source == "door" and forced.door_id == site["door"].pk
    assert forced.details["basis"] is None and forced.device_uid == UID
    [alarm] = alarms(Alarm.Kind.FORCED_OPEN)
    assert alarm.event_id == forced.pk and alarm.cleared_at is None and alarm.door_id == site["door"].pk
    assert send(site, door_event("closed")) == "recorded"
    assert reasons() == [Reason.FORCED_OPEN, Reason.DOOR_CLOSED]
    alarm.refresh_from_db()
    assert alarm.cleared_at is not None and alarm.acknowledged_at is None  # still for an operator to see
    assert Alarm.objects.count() == 1
    assert webhook_types() == ["door.event", "alarm.raised", "door.event", "alarm.cleared"]
    # a second forcing is a new incident: a new alarm, not a fold into the cleared one
    send(site, door_event("opened"))
    assert len(alarms(Alarm.Kind.FORCED_OPEN)) == 2
    assert chain_verify().ok


def test_exit_request_authorises_the_opening_no_alarm(site) -> None:
    now = time.time()
    assert send(site, door_event("exit_request", at=now, released=True)) == "recorded"
    assert send(site, door_event("opened", at=now + 0.8, released=True)) == "recorded"
    assert send(site, door_event("closed", at=now + 4)) == "recorded"
    assert reasons() == [Reason.EXIT_REQUEST, Reason.DOOR_OPENED, Reason.DOOR_CLOSED]
    opened = AccessEvent.objects.get(reason=Reason.DOOR_OPENED)
    assert opened.decision == "grant" and opened.details["basis"] == "exit_request"
    assert AccessEvent.objects.get(reason=Reason.DOOR_CLOSED).details["open_s"] == pytest.approx(3.2, abs=0.01)
    assert not Alarm.objects.exists()
    assert AccessEvent.objects.filter(reason=Reason.EXIT_REQUEST).count() == 1


def test_an_exit_request_too_long_ago_does_not_authorise(site) -> None:
    now = time.time()
    send(site, door_event("exit_request", at=now - 30))
    send(site, door_event("opened", at=now))  # relay locked, the exit request 30 s ago
    assert reasons()[-1] == Reason.FORCED_OPEN and len(alarms(Alarm.Kind.FORCED_OPEN)) == 1


def test_a_released_relay_authorises_an_opening_the_log_has_no_grant_for_yet(site) -> None:
    """An offline grant (the relay released by the device alone) reaches the log later."""
    send(site, door_event("opened", released=True))
    assert reasons() == [Reason.DOOR_OPENED]
    assert AccessEvent.objects.get().details["basis"] == "relay_released"
    assert not Alarm.objects.exists()


def test_held_open_after_a_grant_one_alarm_once_cleared_on_close(site, django_capture_on_commit_callbacks) -> None:
    operator = user_create("op", "accessctl.operate_doors")
    assert Permission.objects.filter(codename="operate_doors").exists()
    door = site["door"]
    unlock = door_unlock(door=door, actor=operator)
    opened_at = unlock.occurred_at.timestamp() + 0.5
    send(site, door_event("opened", at=opened_at, released=True))
    opened = AccessEvent.objects.get(reason=Reason.DOOR_OPENED)
    assert opened.details["basis"] == "grant"
    position = DoorPosition.objects.get(door=door)
    assert position.is_open and position.authorised and position.opening_event_id == opened.pk
    start = dt.datetime.fromtimestamp(opened_at, tz=dt.UTC)
    assert doors_held_open_sweep(now=start + dt.timedelta(seconds=19)) == 0
    assert doors_held_open_sweep(now=start + dt.timedelta(seconds=21)) == 1
    assert doors_held_open_sweep(now=start + dt.timedelta(seconds=60)) == 0  # once per opening
    held = AccessEvent.objects.get(reason=Reason.HELD_OPEN)
    assert held.decision == "deny" and held.details["held_open_s"] == 20 and held.device_uid == UID
    [alarm] = alarms(Alarm.Kind.HELD_OPEN)
    assert alarm.event_id == held.pk
    assert not alarms(Alarm.Kind.FORCED_OPEN)
    send(site, door_event("closed", at=opened_at + 22))  # (signed "in the future": within the window)
    alarm.refresh_from_db()
    assert alarm.cleared_at is not None
    assert not DoorPosition.objects.get(door=door).is_open
    assert reasons() == [Reason.REMOTE_UNLOCK, Reason.DOOR_OPENED, Reason.HELD_OPEN, Reason.DOOR_CLOSED]


def test_no_held_open_for_a_door_held_open_by_its_mode_or_with_held_open_s_zero(site) -> None:
    door = site["door"]
    Door.objects.filter(pk=door.pk).update(mode=Door.Mode.HELD_OPEN)
    send(site, door_event("opened"))
    assert AccessEvent.objects.get().details["basis"] == "held_open_mode"
    later = timezone.now() + dt.timedelta(hours=1)
    assert doors_held_open_sweep(now=later) == 0
    Door.objects.filter(pk=door.pk).update(mode=Door.Mode.NORMAL, held_open_s=0)
    assert doors_held_open_sweep(now=later) == 0
    assert not Alarm.objects.exists()


def test_a_redelivered_copy_is_ignored_and_another_payload_under_its_id_is_a_replay(site) -> None:
    event = door_event("opened")
    raw = p.seal(event, site["key"])
    assert door_event_ingest(device_uid=UID, raw=raw) == "recorded"
    assert door_event_ingest(device_uid=UID, raw=raw) == "duplicate"
    assert reasons() == [Reason.FORCED_OPEN]
    # the same id, now claiming an exit request: refused, recorded once, alarmed
    forged = door_event("exit_request", event_id=event.event_id)
    assert send(site, forged) == "replay"
    assert send(site, forged) == "replay"
    assert reasons() == [Reason.FORCED_OPEN, Reason.REPLAY]
    assert len(alarms(Alarm.Kind.REPLAY)) == 1


def test_forged_stale_malformed_and_unknown_are_refused_and_recorded(site) -> None:
    other_key = p.load_private_key(p.generate_keypair()[0])
    assert send(site, door_event("exit_request"), key=other_key) == "bad_signature"
    assert len(alarms(Alarm.Kind.FORGED_SIGNATURE)) == 1
    old = time.time() - 2 * 86400
    assert send(site, door_event("exit_request", at=old)) == "stale_timestamp"
    future = time.time() + 3600
    assert send(site, door_event("opened", at=future)) == "stale_timestamp"
    bad = p.sign_envelope({"v": 1, "device_uid": UID, "kind": "opened"}, site["key"])
    assert door_event_ingest(device_uid=UID, raw=bad) == "malformed"
    other_uid = door_event("opened", device_uid="someone-else")
    assert send(site, other_uid) == "topic_mismatch"
    assert door_event_ingest(device_uid="nobody", raw=p.seal(door_event("opened"), site["key"])) == "unknown_device"
    assert door_event_ingest(device_uid=UID, raw=b"not json") == "malformed"
    assert sorted(reasons()) == sorted(
        [
            Reason.BAD_SIGNATURE,
            Reason.STALE_TIMESTAMP,
            Reason.STALE_TIMESTAMP,
            Reason.MALFORMED,
            Reason.TOPIC_MISMATCH,
            Reason.UNKNOWN_DEVICE,
            Reason.MALFORMED,
        ]
    )
    assert all(e.details.get("topic") == "door" for e in AccessEvent.objects.all())
    assert not DoorPosition.objects.filter(is_open=True).exists()  # nothing refused moved the door
    assert not alarms(Alarm.Kind.FORCED_OPEN)


def test_the_bridge_routes_the_door_topic(site) -> None:
    event = door_event("exit_request")
    ingest.message_ingest(p.door_topic(UID), p.seal(event, site["key"]))
    assert AccessEvent.objects.get().detection_id.hex == event.event_id.replace("-", "")


def test_an_older_spooled_event_does_not_move_the_door_back(site) -> None:
    now = time.time()
    send(site, door_event("opened", at=now, released=True))
    send(site, door_event("closed", at=now - 10))  # arrived late, happened before
    assert DoorPosition.objects.get(door=site["door"]).is_open
    assert reasons() == [Reason.DOOR_OPENED, Reason.DOOR_CLOSED]


def test_the_dashboard_shows_a_forced_door_and_marks_it_cleared_once_closed(site, client) -> None:
    from django.urls import reverse

    send(site, door_event("opened"))
    client.force_login(user_create("olga", "accessctl.view_dashboard"))
    page = client.get(reverse("dashboard")).content.decode()
    assert "door forced open" in page and 'kind-forced_open"' in page
    send(site, door_event("closed"))
    page = client.get(reverse("dashboard")).content.decode()
    assert "kind-forced_open cleared" in page  # still listed until acknowledged
