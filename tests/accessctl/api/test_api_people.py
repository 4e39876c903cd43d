"""People API: CRUD, filters, HR upsert by external id, pagination, query counts, person webhooks."""

from __future__ import annotations

import pytest

from accessctl.models import Person, WebhookDelivery, WebhookSubscription
from tests.api_support import token_client

pytestmark = pytest.mark.django_db

PEOPLE = "/api/v1/people/"


def test_people_crud() -> None:
    client = token_client(["people:read", "people:write"])
    created = client.post(PEOPLE, {"name": "Ada Lovelace", "external_id": "E1", "kind": "contractor"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["name"] == "Ada Lovelace" and body["status"] == "active" and body["kind"] == "contractor"
    url = f"{PEOPLE}{body['id']}/"
    assert client.get(url).json()["external_id"] == "E1"
    patched = client.patch(url, {"status": "suspended"}, format="json")
    assert patched.status_code == 200 and patched.json()["status"] == "suspended"
    replaced = client.put(url, {"name": "Ada King"}, format="json")
    assert replaced.status_code == 200 and replaced.json()["name"] == "Ada King"
    assert client.delete(url).status_code == 204
    assert not Person.objects.exists()


def test_people_validation() -> None:
    client = token_client(["people:write"])
    Person.objects.create(name="Taken", external_id="E1")
    duplicate = client.post(PEOPLE, {"name": "Other", "external_id": "E1"}, format="json")
    assert duplicate.status_code == 400 and "external_id" in duplicate.json()["error"]["details"]
    backwards = client.post(
        PEOPLE,
        {"name": "X", "valid_from": "2026-02-01T00:00:00Z", "valid_until": "2026-01-01T00:00:00Z"},
        format="json",
    )
    assert backwards.status_code == 400 and "valid_until" in backwards.json()["error"]["details"]
    assert client.post(PEOPLE, {"name": "X", "kind": "robot"}, format="json").status_code == 400
    # Empty external ids are stored as NULL (several people may have none).
    for name in ("A", "B"):
        assert client.post(PEOPLE, {"name": name, "external_id": ""}, format="json").status_code == 201
    assert Person.objects.filter(external_id__isnull=True).count() == 2


def test_people_filters_and_ordering() -> None:
    Person.objects.create(name="Carol", kind="visitor", external_id="V-1")
    Person.objects.create(name="alice", status="suspended")
    Person.objects.create(name="Bob", kind="contractor")
    client = token_client(["people:read"])

    def names(**params: str) -> list[str]:
        response = client.get(PEOPLE, params)
        assert response.status_code == 200, response.content
        return [p["name"] for p in response.json()["results"]]

    assert names() == ["Bob", "Carol", "alice"]  # ordered by name, then id
    assert names(status="suspended") == ["alice"]
    assert names(kind="visitor") == ["Carol"]
    assert names(external_id="V-1") == ["Carol"]
    assert names(name="AR") == ["Carol"]
    assert client.get(PEOPLE, {"status": "gone"}).status_code == 400


def test_people_list_is_paginated_with_constant_queries(django_assert_num_queries) -> None:
    Person.objects.bulk_create(Person(name=f"P{i:03d}") for i in range(120))
    client = token_client(["people:read"])
    client.get(PEOPLE)  # token last_used_at written once
    # token lookup, count, page
    with django_assert_num_queries(5):  # 2 of them: the token owner's permissions
        page = client.get(PEOPLE, {"limit": 100}).json()
    assert page["count"] == 120 and len(page["results"]) == 100 and page["next"]
    default = client.get(PEOPLE).json()
    assert len(default["results"]) == 50
    assert len(client.get(PEOPLE, {"limit": 10_000}).json()["results"]) == 120  # capped at max_limit 500


def test_hr_upsert_by_external_id() -> None:
    client = token_client(["people:read", "people:write"])
    url = f"{PEOPLE}by-external-id/HR-42/"
    assert client.get(url).status_code == 404
    created = client.put(url, {"name": "Grace Hopper", "kind": "employee"}, format="json")
    assert created.status_code == 201, created.content
    person_id = created.json()["id"]
    assert created.json()["external_id"] == "HR-42"
    updated = client.put(url, {"name": "Grace B. Hopper", "status": "suspended"}, format="json")
    assert updated.status_code == 200
    assert updated.json()["id"] == person_id and updated.json()["status"] == "suspended"
    # The external id in the body cannot move the record.
    client.put(url, {"name": "Grace", "external_id": "OTHER"}, format="json")
    assert client.get(url).json()["name"] == "Grace"
    assert Person.objects.get().external_id == "HR-42"
    assert client.put(url, {"status": "suspended"}, format="json").status_code == 400  # name required
    assert token_client(["people:read"]).put(url, {"name": "x"}, format="json").status_code == 403


def test_person_changes_notify_webhook_subscribers(django_capture_on_commit_callbacks, monkeypatch) -> None:
    sent: list[int] = []
    monkeypatch.setattr("accessctl.webhooks._enqueue", sent.append)
    WebhookSubscription.objects.create(
        name="hr", url="http://127.0.0.1:9/", secret="s" * 20, event_types=["person.created", "person.updated"]
    )
    WebhookSubscription.objects.create(name="siem", url="http://127.0.0.1:9/", secret="s" * 20, event_types=["*"])
    client = token_client(["people:write"])
    with django_capture_on_commit_callbacks(execute=True):
        person_id = client.put(f"{PEOPLE}by-external-id/E7/", {"name": "Lin"}, format="json").json()["id"]
        client.patch(f"{PEOPLE}{person_id}/", {"kind": "visitor"}, format="json")
        updated = WebhookDelivery.objects.filter(event_type="person.updated").first().payload
        assert updated["external_id"] == "E7" and updated["kind"] == "visitor" and updated["name"] == "Lin"
        assert client.delete(f"{PEOPLE}{person_id}/").status_code == 204  # erasure
    kinds = sorted(WebhookDelivery.objects.values_list("subscription__name", "event_type"))
    assert kinds == [
        ("hr", "person.created"),
        ("hr", "person.updated"),
        ("siem", "person.created"),
        ("siem", "person.deleted"),
        ("siem", "person.updated"),
    ]
    assert len(sent) == 5
    # Erasure scrubbed the earlier payloads: nothing names the person any more.
    for payload in WebhookDelivery.objects.values_list("payload", flat=True):
        assert "name" not in payload and "external_id" not in payload, payload
