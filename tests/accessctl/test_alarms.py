"""Alarms: raised once per open incident (folded with a count), acknowledged, repeated unknowns."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django.utils import timezone

from accessctl import realtime
from accessctl.alarms import alarm_acknowledge, alarm_raise, unknown_faces_check
from accessctl.codes import Decision, Reason
from accessctl.models import Alarm, Door
from devices.models import EdgeDevice
from tests.accessctl.helpers import event_make, user_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    messages: list[tuple[str, dict]] = []
    monkeypatch.setattr(realtime, "_send", lambda kind, payload: messages.append((str(kind), payload)))
    return messages


@pytest.fixture
def door() -> Door:
    return Door.objects.create(name="Main entrance")


def test_repeats_fold_into_one_open_alarm(door, sent, django_capture_on_commit_callbacks) -> None:
    device = EdgeDevice.objects.create(uid="cam-1", door=door, public_key="x")
    of_device = {"device_id": device.pk, "device_uid": device.uid}
    first_event, second_event = event_make(), event_make(reason=Reason.BAD_SIGNATURE)
    with django_capture_on_commit_callbacks(execute=True):
        first = alarm_raise(kind=Alarm.Kind.FORGED_SIGNATURE, door=door, **of_device, event=first_event)
        again = alarm_raise(
            kind=Alarm.Kind.FORGED_SIGNATURE, door=door, **of_device, event=second_event, details={"topic": "x"}
        )
    assert again.pk == first.pk and again.count == 2 and again.event_id == second_event.pk
    assert again.details == {"topic": "x"} and again.last_seen_at >= first.raised_at
    assert [kind for kind, _ in sent] == ["alarm.raised", "alarm.raised"]
    assert sent[-1][1] | {"raised_at": None} == {
        "id": first.pk, "kind": "forged_signature", "door_id": door.pk, "device_uid": "cam-1",
        "raised_at": None, "count": 2, "acknowledged": False, "cleared": False,
        "thumbnail_url": None,
    }  # fmt: skip

    # Another kind, another door or an acknowledged alarm: a new alarm.
    other_door = Door.objects.create(name="Dock")
    assert alarm_raise(kind=Alarm.Kind.WATCHLIST, door=door).pk != first.pk
    assert alarm_raise(kind=Alarm.Kind.FORGED_SIGNATURE, door=other_door, **of_device).pk != first.pk
    operator = user_create("olga", "accessctl.view_dashboard")
    alarm_acknowledge(alarm=first, actor=operator)
    fresh = alarm_raise(kind=Alarm.Kind.FORGED_SIGNATURE, door=door, **of_device)
    assert fresh.pk != first.pk and fresh.count == 1


def test_acknowledge_records_who_and_broadcasts(door, sent, django_capture_on_commit_callbacks) -> None:
    alarm = alarm_raise(kind=Alarm.Kind.DEVICE_OFFLINE, door=door)
    operator = user_create("olga", "accessctl.view_dashboard")
    with django_capture_on_commit_callbacks(execute=True):
        acknowledged = alarm_acknowledge(alarm=alarm, actor=operator)
    assert acknowledged.acknowledged_by == operator and acknowledged.acknowledged_at is not None
    assert sent[-1][0] == "alarm.acknowledged" and sent[-1][1]["acknowledged"] is True
    # A second acknowledgement keeps the first one.
    later = alarm_acknowledge(alarm=alarm, actor=user_create("oscar", "accessctl.view_dashboard"))
    assert later.acknowledged_by == operator and later.acknowledged_at == acknowledged.acknowledged_at


def test_acknowledge_needs_the_dashboard_permission(door) -> None:
    alarm = alarm_raise(kind=Alarm.Kind.DEVICE_OFFLINE, door=door)
    with pytest.raises(PermissionDenied):
        alarm_acknowledge(alarm=alarm, actor=user_create("nobody"))
    alarm.refresh_from_db()
    assert alarm.acknowledged_at is None


def test_repeated_unknown_faces_raise_one_alarm(door) -> None:
    now = timezone.now()
    other = Door.objects.create(name="Dock")
    # Outside the window, at another door, or another reason: not counted.
    event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=120))
    event_make(door_id=other.pk, occurred_at=now - dt.timedelta(seconds=5))
    event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=5), reason=Reason.NOT_IN_GROUP)
    event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=5), decision=Decision.GRANT, reason="matched")
    for seconds in (30, 20):
        event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=seconds))
    assert unknown_faces_check(door=door, now=now) is None
    third = event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=1))
    alarm = unknown_faces_check(door=door, now=now)
    assert alarm is not None and alarm.kind == Alarm.Kind.REPEATED_UNKNOWN and alarm.door_id == door.pk
    assert alarm.event_id == third.pk and alarm.details == {"unknown_faces": 3, "window_s": 60}
    event_make(door_id=door.pk, occurred_at=now)
    again = unknown_faces_check(door=door, now=now)
    assert again.pk == alarm.pk and again.count == 2
    assert unknown_faces_check(door=other, now=now) is None
    assert unknown_faces_check(door=door, now=now, threshold=10) is None


def test_unknown_faces_checked_once_for_a_batch_count_each_face(door, sent) -> None:
    now = timezone.now()
    for seconds in (5, 4, 3, 2, 1):
        event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=seconds))
    alarm = unknown_faces_check(door=door, now=now, new_faces=5)  # five at once: faces 3, 4 and 5 count
    assert alarm is not None and alarm.count == 3
    for seconds in (0.5, 0.2):
        event_make(door_id=door.pk, occurred_at=now - dt.timedelta(seconds=seconds))
    assert unknown_faces_check(door=door, now=now, new_faces=2).count == 5


def test_acknowledge_view(door, client) -> None:
    alarm = alarm_raise(kind=Alarm.Kind.WATCHLIST, door=door)
    client.force_login(user_create("olga", "accessctl.view_dashboard"))
    url = reverse("alarm_acknowledge", args=[alarm.pk])
    assert client.get(url).status_code == 405
    response = client.post(url, HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response.json()["ok"] is True
    alarm.refresh_from_db()
    assert alarm.acknowledged_at is not None
    client.force_login(user_create("nobody"))
    assert client.post(reverse("alarm_acknowledge", args=[alarm.pk])).status_code == 403
