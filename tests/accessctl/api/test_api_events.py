"""Access events (read-only, cursor pagination, filters) and alarms through the API."""

from __future__ import annotations

import datetime as dt

import pytest

from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Alarm, Door, Person
from devices.models import EdgeDevice
from tests.api_support import token_client

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/access-events/"
T0 = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def log() -> dict[str, object]:
    lobby = Door.objects.create(name="Lobby")
    lab = Door.objects.create(name="Lab")
    ada = Person.objects.create(name="Ada")
    device = EdgeDevice.objects.create(uid="cam-1", door=lobby, public_key="k")
    events = []
    for i in range(7):
        granted = i % 2 == 0
        event, _ = event_record(
            detection_id=None,
            occurred_at=T0 + dt.timedelta(minutes=i // 2),  # pairs share a timestamp: ties broken by id
            decision=Decision.GRANT if granted else Decision.DENY,
            reason=Reason.MATCHED if granted else (Reason.UNKNOWN_FACE if i % 3 else Reason.OUTSIDE_SCHEDULE),
            door_id=(lobby if i < 4 else lab).pk,
            device_id=device.pk if i < 4 else None,
            device_uid="cam-1" if i < 4 else "cam-2",
            person_id=ada.pk if granted else None,
            similarity=0.7 if granted else 0.2,
        )
        events.append(event)
    return {"lobby": lobby, "lab": lab, "ada": ada, "device": device, "events": events}


def test_events_cursor_pagination_is_newest_first_and_stable(log, django_assert_num_queries) -> None:
    client = token_client(["events:read"])
    expected = list(AccessEvent.objects.order_by("-occurred_at", "-id").values_list("id", flat=True))
    seen: list[int] = []
    client.get(EVENTS)
    # token lookup, page (door and person joined)
    with django_assert_num_queries(4):  # 2 of them: the token owner's permissions
        page = client.get(EVENTS, {"page_size": 3}).json()
    assert set(page) == {"next", "previous", "results"}
    seen += [e["id"] for e in page["results"]]
    # An event arriving while paging does not shift the later pages.
    event_record(
        detection_id=None,
        occurred_at=T0 + dt.timedelta(hours=1),
        decision=Decision.DENY,
        reason=Reason.LOCKDOWN,
    )
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [e["id"] for e in page["results"]]
    assert seen == expected
    first = client.get(EVENTS).json()["results"][0]
    assert first["reason"] == "lockdown"
    assert client.get(EVENTS, {"cursor": "garbage"}).status_code == 404


def test_event_fields(log) -> None:
    event = log["events"][0]
    body = token_client(["events:read"]).get(f"{EVENTS}{event.pk}/").json()
    assert body["door_name"] == "Lobby" and body["person_name"] == "Ada"
    assert body["decision"] == "grant" and body["reason"] == "matched" and body["similarity"] == 0.7
    assert body["hash"] == event.hash and body["has_snapshot"] is False
    assert "snapshot" not in body


def test_event_filters(log) -> None:
    client = token_client(["events:read"])

    def ids(**params: object) -> list[int]:
        response = client.get(EVENTS, params)
        assert response.status_code == 200, response.content
        return sorted(e["id"] for e in response.json()["results"])

    events = log["events"]
    assert ids(decision="grant") == sorted(e.pk for e in events if e.decision == "grant")
    assert ids(reason="outside_schedule") == sorted(e.pk for e in events if e.reason == "outside_schedule")
    assert len(ids(reason=["outside_schedule", "unknown_face"])) == 3
    assert ids(door=log["lab"].pk) == sorted(e.pk for e in events[4:])
    assert ids(person=log["ada"].pk) == sorted(e.pk for e in events if e.person_id)
    assert ids(device=log["device"].pk) == sorted(e.pk for e in events[:4])
    assert ids(device_uid="cam-2") == sorted(e.pk for e in events[4:])
    window = ids(occurred_after="2026-03-02T08:01:00Z", occurred_before="2026-03-02T08:03:00Z")
    assert window == sorted(e.pk for e in events[2:6])
    assert client.get(EVENTS, {"decision": "maybe"}).status_code == 400
    assert client.get(EVENTS, {"occurred_after": "yesterday"}).status_code == 400


def test_events_are_read_only(log) -> None:
    client = token_client()
    event = log["events"][0]
    assert client.post(EVENTS, {}, format="json").status_code == 405
    assert client.delete(f"{EVENTS}{event.pk}/").status_code == 405


def test_alarms_list_filter(log, django_assert_num_queries) -> None:
    open_alarm = Alarm.objects.create(kind=Alarm.Kind.WATCHLIST, door=log["lobby"])
    Alarm.objects.create(kind=Alarm.Kind.REPLAY, device_id=log["device"].pk, acknowledged_at=T0)
    client = token_client(["events:read"])
    client.get("/api/v1/alarms/")
    with django_assert_num_queries(5):  # 2 of them: the token owner's permissions
        listed = client.get("/api/v1/alarms/").json()
    assert listed["count"] == 2
    unacked = client.get("/api/v1/alarms/", {"acknowledged": "false"}).json()["results"]
    assert [a["id"] for a in unacked] == [open_alarm.pk] and unacked[0]["acknowledged"] is False
    assert client.get("/api/v1/alarms/", {"kind": "replay"}).json()["count"] == 1
    assert client.get("/api/v1/alarms/", {"door": log["lobby"].pk}).json()["count"] == 1
    assert token_client(["people:read"]).get("/api/v1/alarms/").status_code == 403
