"""API authentication, scopes, session permissions, rate limits, error envelope, schema and docs."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accessctl.exceptions import Forbidden, InvalidInput
from accessctl.models import Alarm, ApiToken, Person
from accessctl.tokens import (
    ALL_SCOPES,
    SCOPE_PERMISSIONS,
    api_scope_permissions,
    api_token_hash,
    api_token_issue,
    api_token_revoke,
)
from tests.api_support import issue_token, make_user, session_client, token_client

pytestmark = pytest.mark.django_db

PEOPLE = "/api/v1/people/"


def _bearer(plaintext: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


def test_token_issue_stores_only_a_hash_and_shows_the_secret_once() -> None:
    user = make_user(perms=api_scope_permissions(["people:read", "people:write"]))
    token, plaintext = api_token_issue(
        user=user, issued_by=user, name="hr sync", scopes=["people:read", "people:write"]
    )
    prefix, secret = plaintext.split(".", 1)
    assert token.prefix == prefix and len(secret) >= 40
    assert token.secret_hash == api_token_hash(secret) and secret not in token.secret_hash
    assert ApiToken.objects.get(pk=token.pk).scopes == ["people:read", "people:write"]
    with pytest.raises(InvalidInput):
        api_token_issue(user=user, issued_by=user, name="bad", scopes=["people:read", "root"])
    with pytest.raises(InvalidInput):
        api_token_issue(
            user=user, issued_by=user, name="old", scopes=[], expires_at=timezone.now() - dt.timedelta(days=1)
        )


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
    token, plaintext = issue_token()
    assert _bearer(plaintext).get(PEOPLE).status_code == 200
    token.user.is_active = False
    token.user.save(update_fields=["is_active"])
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
    monkeypatch.setattr("accessctl.api.throttling.time.time", lambda: 1_800_000_030.0)  # mid-minute, fixed
    limited = token_client(rate=3)
    other = token_client(rate=3)
    assert [limited.get(PEOPLE).status_code for _ in range(3)] == [200, 200, 200]
    response = limited.get(PEOPLE)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "throttled"
    assert int(response["Retry-After"]) == 30
    assert other.get(PEOPLE).status_code == 200  # counted per token
    monkeypatch.setattr("accessctl.api.throttling.time.time", lambda: 1_800_000_061.0)  # next minute
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


# --- a token never does more than its owner may (issue 15, item 9) ----------------------------------


def _perm(name: str) -> Permission:
    app_label, codename = name.split(".")
    return Permission.objects.get(content_type__app_label=app_label, codename=codename)


def _forged(user, scopes=ALL_SCOPES) -> str:
    """A token row written straight to the database (as before this rule, or by a bug): no issuing checks."""
    ApiToken.objects.create(name="old", user=user, prefix="f0f0f0f0f0", secret_hash=api_token_hash("s"), scopes=scopes)
    return "f0f0f0f0f0.s"


def test_a_token_of_a_user_without_permissions_reads_nothing() -> None:
    Person.objects.create(name="Ada")
    client = _bearer(_forged(make_user(staff=True)))
    for url in (PEOPLE, "/api/v1/access-events/", "/api/v1/doors/", "/api/v1/devices/", "/api/v1/webhook-deliveries/"):
        response = client.get(url)
        assert response.status_code == 403, url
        assert response.json()["error"]["message"] == "The token's owner lacks the permission for this action."
    assert client.post(PEOPLE, {"name": "Eve"}, format="json").status_code == 403
    assert Person.objects.count() == 1


def test_token_rights_are_its_scopes_and_its_owners_current_permissions() -> None:
    owner = make_user(perms=["accessctl.view_person", "accessctl.add_person"])
    guards = Group.objects.create(name="guards")
    guards.permissions.add(_perm("accessctl.view_accessevent"), _perm("accessctl.view_alarm"))
    client = _bearer(_forged(owner))
    assert client.get(PEOPLE).status_code == 200
    assert client.post(PEOPLE, {"name": "Ada"}, format="json").status_code == 201  # add_person: held
    assert client.patch(f"{PEOPLE}{Person.objects.get().pk}/", {"name": "A"}, format="json").status_code == 403
    assert client.get("/api/v1/access-events/").status_code == 403
    owner.groups.add(guards)  # permissions through a group count, from the next request on
    assert client.get("/api/v1/access-events/").status_code == 200
    owner.user_permissions.remove(_perm("accessctl.view_person"))  # taken away: the token loses it at once
    assert client.get(PEOPLE).status_code == 403
    owner.groups.remove(guards)
    assert client.get("/api/v1/access-events/").status_code == 403
    # and the scopes still bound what the owner's permissions allow
    reader = token_client(["people:read"], user=make_user(superuser=True))
    assert reader.get(PEOPLE).status_code == 200
    assert reader.post(PEOPLE, {"name": "Eve"}, format="json").status_code == 403


def test_only_superusers_issue_tokens_for_other_users() -> None:
    admin_user = make_user(superuser=True)
    staff = make_user(staff=True, perms=["accessctl.add_apitoken", *api_scope_permissions(ALL_SCOPES)])
    with pytest.raises(Forbidden):
        api_token_issue(user=admin_user, issued_by=staff, name="mine now", scopes=ALL_SCOPES)
    with pytest.raises(Forbidden):
        api_token_issue(user=make_user(), issued_by=staff, name="x", scopes=[])
    assert not ApiToken.objects.exists()
    integrator = make_user(perms=["accessctl.view_accessevent", "accessctl.view_alarm"])
    token, _ = api_token_issue(user=integrator, issued_by=admin_user, name="SIEM", scopes=["events:read"])
    assert token.user == integrator
    with pytest.raises(InvalidInput):  # not even a superuser gives a user's token more than the user holds
        api_token_issue(user=integrator, issued_by=admin_user, name="SIEM", scopes=["events:read", "people:read"])
    integrator.is_active = False
    integrator.save(update_fields=["is_active"])
    with pytest.raises(InvalidInput):
        api_token_issue(user=integrator, issued_by=admin_user, name="SIEM", scopes=["events:read"])


def test_a_user_cannot_give_a_token_scopes_they_do_not_have() -> None:
    user = make_user(perms=["accessctl.view_person", "recognition.view_enrollmentphoto", "accessctl.add_person"])
    token, _ = api_token_issue(user=user, issued_by=user, name="reader", scopes=["people:read"])
    assert token.scopes == ["people:read"]
    with pytest.raises(InvalidInput) as refused:
        api_token_issue(user=user, issued_by=user, name="writer", scopes=["people:read", "people:write"])
    missing = refused.value.details["missing_permissions"]
    assert set(missing) == {"people:write"}
    assert "accessctl.delete_person" in missing["people:write"]
    assert "accessctl.add_person" not in missing["people:write"]
    assert ApiToken.objects.count() == 1


def _admin_client(user):
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client


def test_admin_lets_staff_issue_tokens_only_for_themselves_within_their_permissions() -> None:
    admin_user = make_user(superuser=True)
    staff = make_user(
        staff=True,
        perms=[
            "accessctl.add_apitoken", "accessctl.view_apitoken", "accessctl.change_apitoken",
            "accessctl.view_person", "recognition.view_enrollmentphoto",
        ],
    )  # fmt: skip
    client = _admin_client(staff)
    add = reverse("admin:accessctl_apitoken_add")
    form = {"name": "grab", "user": admin_user.pk, "scopes": list(ALL_SCOPES), "rate_limit_per_minute": 60}
    response = client.post(add, form)
    assert response.status_code == 200 and not ApiToken.objects.exists()  # the form came back with errors
    assert "user" in response.context["adminform"].form.errors
    response = client.post(add, {**form, "user": staff.pk})  # for themselves, but with scopes they lack
    assert response.status_code == 200 and not ApiToken.objects.exists()
    assert "lacks the permissions" in str(response.context["adminform"].form.non_field_errors())
    response = client.post(add, {**form, "user": staff.pk, "scopes": ["people:read"]})
    assert response.status_code == 302
    own = ApiToken.objects.get(user=staff)
    # Changing it to more than they hold is refused too; other users' tokens are out of reach.
    change = reverse("admin:accessctl_apitoken_change", args=[own.pk])
    payload = {"name": "grab", "scopes": list(ALL_SCOPES), "rate_limit_per_minute": 60}
    assert client.post(change, payload).status_code == 200
    assert ApiToken.objects.get(pk=own.pk).scopes == ["people:read"]
    theirs, _ = api_token_issue(user=admin_user, issued_by=admin_user, name="admin's", scopes=["events:read"])
    other = reverse("admin:accessctl_apitoken_change", args=[theirs.pk])
    assert client.post(other, {**payload, "name": "mine"}).status_code == 302  # "does not exist" redirect
    assert ApiToken.objects.get(pk=theirs.pk).scopes == ["events:read"] and theirs.name == "admin's"
    assert admin_user.username not in client.get(reverse("admin:accessctl_apitoken_changelist")).content.decode()


def _api_routes():
    """(view class, action map) of every API endpoint."""
    from django.urls import URLResolver, get_resolver

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            elif str(getattr(pattern, "name", "")).startswith("api-"):
                yield pattern.callback

    for callback in walk(get_resolver().url_patterns):
        view_class = getattr(callback, "cls", None)
        if view_class is not None and hasattr(view_class, "read_scope"):
            yield view_class, getattr(callback, "actions", None)


def test_every_scope_covers_the_permissions_its_endpoints_need() -> None:
    """The issuing rule (owner holds the scope's permissions) matches what requests need (SCOPE_PERMISSIONS)."""
    from accessctl.api.permissions import required_model_perms, required_scope

    checked = 0
    for view_class, actions in _api_routes():
        methods = actions or {m: None for m in ("get", "post", "put", "patch", "delete") if hasattr(view_class, m)}
        for method, action in methods.items():
            view = view_class()
            view.action = action
            scope = required_scope(view, method.upper())
            if scope is None:
                continue
            perms = required_model_perms(view, method.upper())
            assert perms and set(perms) <= set(SCOPE_PERMISSIONS[scope]), (view_class.__name__, method, scope, perms)
            checked += 1
    assert checked > 20
