"""The API's root (``/api/v1/`` lists the endpoints), JSON 404s for every unknown path under
``/api/``, and filter errors that name every bad query parameter."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from accessctl.models import Person
from tests.api_support import make_user, session_client, token_client

pytestmark = pytest.mark.django_db

ROOT = "/api/v1/"


def _not_found(response) -> dict:
    assert response.status_code == 404, response.content
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "not_found"
    return body["error"]


def test_root_lists_every_endpoint_and_each_link_answers() -> None:
    client = token_client()
    response = client.get(ROOT)
    assert response.status_code == 200, response.content
    links = response.json()
    for name in (
        "people", "people/{person_pk}/photos", "doors", "access-groups", "schedules", "devices",
        "access-events", "alarms", "webhook-subscriptions", "webhook-deliveries",
        "identify", "schema", "docs", "redoc",
    ):  # fmt: skip
        assert links[name].startswith("http://testserver/api/v1/"), (name, links[name])
    assert links["people"] == "http://testserver/api/v1/people/"
    assert links["people/{person_pk}/photos"] == "http://testserver/api/v1/people/{person_pk}/photos/"
    assert links["schema"] == "http://testserver/api/v1/schema/"
    for name, url in links.items():
        if "{" in url:
            url = url.format(person_pk=Person.objects.create(name="Ada").pk)
        answer = client.get(url)
        # identify is POST only; everything else lists (200) with an all-scopes token.
        assert answer.status_code == (405 if name == "identify" else 200), (name, url, answer.content)


def test_root_is_authenticated_like_the_rest() -> None:
    anonymous = APIClient().get(ROOT)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Bearer abc.def")
    assert bad.get(ROOT).status_code == 401
    # Any valid token, whatever its scopes, and a signed-in user holding some API permission.
    assert token_client(["identify"]).get(ROOT).status_code == 200
    assert session_client(make_user(perms=["devices.view_edgedevice"])).get(ROOT).status_code == 200
    refused = session_client(make_user(staff=True)).get(ROOT)  # no permission of any scope
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize(
    "path",
    ["/api/v1/bogus/", "/api/v1/people/1/bogus/", "/api/", "/api", "/api/v2/people/", "/api/v1/people/x/y/z"],
)
def test_unknown_api_paths_answer_json_404(path: str) -> None:
    error = _not_found(token_client().get(path))
    _not_found(token_client().get(path, HTTP_ACCEPT="text/html,application/xhtml+xml,*/*;q=0.8"))
    assert path in error["message"] and "/api/v1/" in error["message"]
    _not_found(token_client().post(path, {"a": 1}, format="json"))
    _not_found(token_client(["identify"]).delete(path))
    _not_found(session_client(make_user(perms=["accessctl.view_person"])).get(path))
    # Strangers are refused as everywhere in the API: in JSON, not with the login page.
    for response in (APIClient().get(path), APIClient().post(path, {"a": 1}, format="json")):
        assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"
    # A browser session's write still needs its CSRF token (refused in JSON, not a CSRF page).
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(make_user(superuser=True))
    csrf = browser.post(path, {"a": 1}, format="json")
    assert csrf.status_code == 403 and "CSRF" in csrf.json()["error"]["message"]


def test_a_missing_trailing_slash_is_redirected_for_reads_and_named_for_writes() -> None:
    client = token_client()
    response = client.get("/api/v1/people", {"name": "a"})
    assert response.status_code == 301 and response["Location"] == "/api/v1/people/?name=a"
    error = _not_found(client.post("/api/v1/people", {"name": "Ada"}, format="json"))
    assert "/api/v1/people/" in error["message"]


def test_a_missing_object_is_a_json_404() -> None:
    _not_found(token_client().get("/api/v1/people/999999/"))


def test_every_bad_filter_parameter_is_named() -> None:
    client = token_client(["events:read"])
    response = client.get(
        "/api/v1/access-events/", {"since": "yesterday", "occurred_after": "yesterday", "decision": "maybe"}
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert set(error["details"]) == {"since", "occurred_after", "decision"}
    assert "since" in error["message"] and "occurred_after" in error["message"] and "decision" in error["message"]
    assert "Unknown parameter" in error["details"]["since"][0]
    assert "occurred_after" in error["details"]["since"][0]  # the hint lists the real filters
    assert error["details"]["occurred_after"] == ["Enter a valid date/time."]
    assert "maybe" in error["details"]["decision"][0]


def test_an_unknown_parameter_alone_is_refused_not_ignored() -> None:
    client = token_client(["events:read", "people:read"])
    photos = f"/api/v1/people/{Person.objects.create(name='Ada').pk}/photos/"
    response = client.get("/api/v1/access-events/", {"since": "2026-01-01T00:00:00Z"})
    assert response.status_code == 400
    assert list(response.json()["error"]["details"]) == ["since"]
    # Lists without a FilterSet refuse unknown parameters too.
    response = client.get(photos, {"status": "accepted"})
    assert response.status_code == 400 and list(response.json()["error"]["details"]) == ["status"]


def test_pagination_and_format_parameters_are_not_filters() -> None:
    client = token_client(["events:read", "people:read"])
    photos = f"/api/v1/people/{Person.objects.create(name='Ada').pk}/photos/"
    assert client.get("/api/v1/people/", {"limit": 5, "offset": 0, "format": "json", "name": "a"}).status_code == 200
    assert client.get("/api/v1/access-events/", {"page_size": 5, "decision": "grant"}).status_code == 200
    assert client.get(photos, {"limit": 5}).status_code == 200


def test_schema_covers_the_endpoints_of_every_app() -> None:
    """Each app mounts its own api/urls.py; the one OpenAPI schema still describes all of them."""
    response = APIClient().get(f"{ROOT}schema/", {"format": "json"})
    assert response.status_code == 200, response.content
    paths = set(json.loads(response.content)["paths"])
    for path in ("/api/v1/", "/api/v1/people/", "/api/v1/people/{person_pk}/photos/", "/api/v1/identify",
                 "/api/v1/devices/", "/api/v1/webhook-deliveries/"):  # fmt: skip
        assert path in paths, (path, sorted(paths))
