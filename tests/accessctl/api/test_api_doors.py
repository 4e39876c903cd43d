"""Doors, access groups and schedules API: CRUD, nested windows/holidays, protected deletes, queries."""

from __future__ import annotations

import datetime as dt

import pytest

from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessGroup, Door, Person, Schedule, ScheduleWindow
from tests.api_support import token_client

pytestmark = pytest.mark.django_db


def test_doors_crud_and_mode_is_read_only() -> None:
    client = token_client(["doors:read", "doors:write"])
    created = client.post(
        "/api/v1/doors/", {"name": "Lobby", "timezone": "Europe/Berlin", "mode": "held_open"}, format="json"
    )
    assert created.status_code == 201, created.content
    door = created.json()
    assert door["mode"] == "normal"  # lockdown / held open only through audited operator actions
    assert client.post("/api/v1/doors/", {"name": "X", "timezone": "Mars/Base"}, format="json").status_code == 400
    assert client.post("/api/v1/doors/", {"name": "Y", "match_threshold": 3}, format="json").status_code == 400
    url = f"/api/v1/doors/{door['id']}/"
    assert client.patch(url, {"relay_pulse_ms": 1500}, format="json").json()["relay_pulse_ms"] == 1500
    assert [d["name"] for d in client.get("/api/v1/doors/", {"name": "lob"}).json()["results"]] == ["Lobby"]
    assert token_client(["doors:read"]).delete(url).status_code == 403
    assert client.delete(url).status_code == 204


def test_door_with_events_cannot_be_deleted() -> None:
    door = Door.objects.create(name="Vault")
    event_record(
        detection_id=None,
        occurred_at=dt.datetime(2026, 1, 5, tzinfo=dt.UTC),
        decision=Decision.DENY,
        reason=Reason.UNKNOWN_FACE,
        door_id=door.pk,
    )
    response = token_client(["doors:write"]).delete(f"/api/v1/doors/{door.pk}/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "protected"


def test_access_groups_with_member_and_door_ids(django_assert_num_queries) -> None:
    people = [Person.objects.create(name=n) for n in ("A", "B", "C")]
    doors = [Door.objects.create(name=n) for n in ("D1", "D2")]
    schedule = Schedule.objects.create(name="Office hours")
    client = token_client(["doors:read", "doors:write"])
    created = client.post(
        "/api/v1/access-groups/",
        {"name": "Staff", "people": [people[0].pk, people[1].pk], "doors": [doors[0].pk], "schedule": schedule.pk},
        format="json",
    )
    assert created.status_code == 201, created.content
    group = created.json()
    assert sorted(group["people"]) == [people[0].pk, people[1].pk] and group["doors"] == [doors[0].pk]
    url = f"/api/v1/access-groups/{group['id']}/"
    patched = client.patch(url, {"people": [people[2].pk], "doors": [d.pk for d in doors]}, format="json")
    assert patched.json()["people"] == [people[2].pk] and len(patched.json()["doors"]) == 2
    assert client.post("/api/v1/access-groups/", {"name": "Bad", "people": [999999]}, format="json").status_code == 400
    for i in range(5):
        extra = AccessGroup.objects.create(name=f"G{i}")
        extra.people.set(people)
        extra.doors.set(doors)
    client.get("/api/v1/access-groups/")
    # token, count, page, people prefetch, doors prefetch
    with django_assert_num_queries(7):  # 2 of them: the token owner's permissions
        listed = client.get("/api/v1/access-groups/").json()
    assert listed["count"] == 6
    assert [g["name"] for g in client.get("/api/v1/access-groups/", {"person": people[2].pk}).json()["results"]] == [
        "G0", "G1", "G2", "G3", "G4", "Staff",
    ]  # fmt: skip
    # A schedule in use is protected.
    assert client.delete(f"/api/v1/schedules/{schedule.pk}/").status_code == 409


def test_schedules_with_nested_windows_and_holidays(django_assert_num_queries) -> None:
    client = token_client(["doors:read", "doors:write"])
    body = {
        "name": "Weekdays",
        "windows": [{"weekday": d, "start": "08:00", "end": "18:00"} for d in range(5)],
        "holidays": [{"date": "2026-12-25", "name": "Christmas"}],
    }
    created = client.post("/api/v1/schedules/", body, format="json")
    assert created.status_code == 201, created.content
    schedule = created.json()
    assert len(schedule["windows"]) == 5 and schedule["holidays"] == [{"date": "2026-12-25", "name": "Christmas"}]
    url = f"/api/v1/schedules/{schedule['id']}/"
    patched = client.patch(url, {"windows": [{"weekday": 5, "start": "10:00:00", "end": "12:00:00"}]}, format="json")
    assert patched.status_code == 200
    assert patched.json()["windows"] == [{"weekday": 5, "start": "10:00:00", "end": "12:00:00"}]
    assert len(patched.json()["holidays"]) == 1  # not given: kept
    assert ScheduleWindow.objects.count() == 1
    bad_window = client.patch(url, {"windows": [{"weekday": 1, "start": "18:00", "end": "08:00"}]}, format="json")
    assert bad_window.status_code == 400
    twice = [{"date": "2026-01-01", "name": "a"}, {"date": "2026-01-01", "name": "b"}]
    assert client.patch(url, {"holidays": twice}, format="json").status_code == 400
    assert client.post("/api/v1/schedules/", {"name": "Weekdays"}, format="json").status_code == 400  # unique name
    for i in range(4):
        client.post("/api/v1/schedules/", {**body, "name": f"S{i}"}, format="json")
    # token, count, page, windows prefetch, holidays prefetch
    with django_assert_num_queries(7):  # 2 of them: the token owner's permissions
        listed = client.get("/api/v1/schedules/").json()
    assert listed["count"] == 5
    assert client.delete(url).status_code == 204
