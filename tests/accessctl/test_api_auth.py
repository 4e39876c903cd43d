"""API authentication, scopes, session permissions, rate limits, error envelope, schema and docs."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accessctl.exceptions import InvalidInput
from accessctl.models import Alarm, ApiToken, Person
from accessctl.tokens import api_token_hash, api_token_issue, api_token_revoke
from tests.api_support import issue_token, make_user, session_client, token_client

pytestmark = pytest.mark.django_db

PEOPLE = "/api/v1/people/"


def _bearer(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def test_token_issue_stores_only_a_hash_and_shows_the_secret_once() -> None:
    user = make_user()
    token, plaintext = api_token_issue(user=user, name="hr sync", scopes=["people:read", "people:write"])
    prefix, secret = plaintext.split(".", 1)
    assert token.prefix == prefix and len(secret) >= 40
    assert token.secret_hash == api_token_hash(secret) and secret not in token.secret_hash
    assert ApiToken.objects.get(pk=token.pk).scopes == ["people:read", "people:write"]
    with pytest.raises(InvalidInput):
        api_token_issue(user=user, name="bad", scopes=["people:read", "root"])
    with pytest.raises(InvalidInput):
        api_token_issue(user=user, name="old", scopes=[], expires_at=timezone.now() - dt.timedelta(days=1))


def test_no_token_is_401_with_bearer_challenge_and_error_envelope() -> None:
    response = APIClient().get(PEOPLE)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json() == {
        "error": {"code": "not_authenticated", "message": "Authentication credentials were not provided."}
    }


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer nodot", "Bearer .secret", "Bearer abc.wrong", "Bearer " + "x" * 20 + ".s"],
)
def test_malformed_or_unknown_token_is_401(header: str) -> None:
    issue_token()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(PEOPLE)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_wrong_secret_for_a_known_prefix_is_401() -> None:
    token, plaintext = issue_token()
    assert _bearer(f"{token.prefix}.{'A' * 43}").get(PEOPLE).status_code == 401
    assert _bearer(plaintext).get(PEOPLE).status_code == 200


def test_revoked_token_is_401() -> None:
    token, plaintext = issue_token()
    assert _bearer(plaintext).get(PEOPLE).status_code == 200
    api_token_revoke(token=token)
    first = ApiToken.objects.get(pk=token.pk).revoked_at
    api_token_revoke(token=token)  # idempotent
    assert ApiToken.objects.get(pk=token.pk).revoked_at == first
    response = _bearer(plaintext).get(PEOPLE)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Token revoked or expired."


def test_expired_token_is_401() -> None:
    token, plaintext = issue_token(expires_at=timezone.now() + dt.timedelta(hours=1))
    assert _bearer(plaintext).get(PEOPLE).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert _bearer(plaintext).get(PEOPLE).status_code == 401


def test_token_of_an_inactive_user_is_401() -> None:
    _, plaintext = issue_token(user=make_user(active=False))
    assert _bearer(plaintext).get(PEOPLE).status_code == 401


def test_wrong_scope_is_403() -> None:
    reader = token_client(["people:read"])
    assert reader.get(PEOPLE).status_code == 200
    response = reader.post(PEOPLE, {"name": "Ada"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "permission_denied",
        "message": "This token lacks the required scope: people:write.",
    }
    assert token_client(["events:read"]).get(PEOPLE).status_code == 403
    assert token_client(["people:read"]).get("/api/v1/access-events/").status_code == 403
    assert not Person.objects.exists()


def test_views_without_a_token_scope_refuse_every_token() -> None:
    alarm = Alarm.objects.create(kind=Alarm.Kind.REPLAY)
    response = token_client().post(f"/api/v1/alarms/{alarm.pk}/acknowledge/")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Not available to tokens."


def test_last_used_at_is_written_at_most_once_a_minute() -> None:
    token, plaintext = issue_token()
    client = _bearer(plaintext)
    client.get(PEOPLE)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    client.get(PEOPLE)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=first - dt.timedelta(seconds=61))
    client.get(PEOPLE)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_rate_limit_per_token_is_429_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accessctl.throttling.time.time", lambda: 1_800_000_030.0)  # mid-minute, fixed
    limited = token_client(rate=3)
    other = token_client(rate=3)
    assert [limited.get(PEOPLE).status_code for _ in range(3)] == [200, 200, 200]
    response = limited.get(PEOPLE)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "throttled"
    assert int(response["Retry-After"]) == 30
    assert other.get(PEOPLE).status_code == 200  # counted per token
    monkeypatch.setattr("accessctl.throttling.time.time", lambda: 1_800_000_061.0)  # next minute
    assert limited.get(PEOPLE).status_code == 200


def test_session_users_need_model_permissions() -> None:
    assert session_client(make_user(staff=True)).get(PEOPLE).status_code == 403
    viewer = session_client(make_user(perms=["accessctl.view_person"]))
    assert viewer.get(PEOPLE).status_code == 200
    assert viewer.post(PEOPLE, {"name": "Ada"}, format="json").status_code == 403
    editor = session_client(make_user(perms=["accessctl.view_person", "accessctl.add_person"]))
    assert editor.post(PEOPLE, {"name": "Ada"}, format="json").status_code == 201
    assert session_client(make_user(superuser=True)).delete(f"{PEOPLE}{Person.objects.get().pk}/").status_code == 204


def test_session_operator_acknowledges_an_alarm() -> None:
    alarm = Alarm.objects.create(kind=Alarm.Kind.REPLAY)
    url = f"/api/v1/alarms/{alarm.pk}/acknowledge/"
    assert session_client(make_user(perms=["accessctl.view_alarm"])).post(url).status_code == 403
    operator = make_user(perms=["accessctl.view_alarm", "accessctl.view_dashboard"])
    response = session_client(operator).post(url)
    assert response.status_code == 200
    assert response.json()["acknowledged"] is True and response.json()["acknowledged_by"] == operator.pk


def test_errors_share_one_envelope() -> None:
    client = token_client()
    missing = client.get(f"{PEOPLE}999999/")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not found."}}
    invalid = client.post(PEOPLE, {"name": ""}, format="json").json()
    assert invalid["error"]["code"] == "invalid"
    assert "name" in invalid["error"]["details"]


def test_schema_and_docs_are_served_without_internet_assets() -> None:
    schema = APIClient().get(reverse("api-schema"), {"format": "json"})
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["openapi"].startswith("3.")
    assert spec["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
    assert spec["paths"]["/api/v1/people/"]["post"]["x-required-scope"] == "people:write"
    assert "/api/v1/identify" in spec["paths"] and "/api/v1/access-events/" in spec["paths"]
    docs = APIClient().get(reverse("api-docs"))
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html and "cdn" not in html.lower()
    assert APIClient().get(reverse("api-redoc")).status_code == 200


def test_admin_issues_a_token_once_and_revokes_it() -> None:
    admin_user = make_user(superuser=True)
    client = session_client(admin_user)
    response = client.post(
        reverse("admin:accessctl_apitoken_add"),
        {"name": "SIEM", "user": admin_user.pk, "scopes": ["events:read"], "rate_limit_per_minute": 60},
        follow=True,
    )
    assert response.status_code == 200
    token = ApiToken.objects.get(name="SIEM")
    messages = [str(m) for m in response.context["messages"]]
    plaintext = next(word for m in messages for word in m.split() if word.startswith(f"{token.prefix}."))
    assert _bearer(plaintext).get("/api/v1/access-events/").status_code == 200
    # The secret is not on the change page.
    change = client.get(reverse("admin:accessctl_apitoken_change", args=[token.pk])).content.decode()
    assert plaintext.split(".", 1)[1] not in change and token.secret_hash not in change
    client.post(
        reverse("admin:accessctl_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [token.pk]},
    )
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert _bearer(plaintext).get("/api/v1/access-events/").status_code == 401
