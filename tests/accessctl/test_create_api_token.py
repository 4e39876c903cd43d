"""``manage.py create_api_token``: the secret alone on the last line, working within its scopes only,
issued through ``api_token_issue`` with the same rules as the admin."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accessctl.models import ApiToken
from accessctl.tokens import ALL_SCOPES, api_scope_permissions, api_token_secret_matches, api_token_split
from tests.api_support import make_user

pytestmark = pytest.mark.django_db


def create_api_token(*args: str) -> str:
    out = io.StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue()


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def test_the_printed_secret_works_within_its_scopes_and_expires() -> None:
    hr = make_user(perms=api_scope_permissions(["people:read", "people:write", "events:read"]))
    before = timezone.now()
    output = create_api_token(hr.username, "--scopes", "people:read, people:write", "--expires", "30", "--name", "HR")
    assert output.endswith("\n")
    lines = output.splitlines()
    secret = lines[-1]
    # The last line is the secret alone, and it is printed nowhere else.
    assert secret == secret.strip() and " " not in secret and output.count(secret) == 1
    prefix, raw = api_token_split(secret)
    token = ApiToken.objects.get(prefix=prefix)
    assert api_token_secret_matches(token, raw)
    assert token.user == hr and token.name == "HR" and token.scopes == ["people:read", "people:write"]
    assert token.issued_by.startswith("command line")
    assert before + dt.timedelta(days=30) <= token.expires_at <= timezone.now() + dt.timedelta(days=30)
    assert "people:read" in lines[0] and token.prefix in lines[0]

    client = bearer(secret)
    assert client.get("/api/v1/people/").status_code == 200
    created = client.post("/api/v1/people/", {"name": "Ada"}, format="json")
    assert created.status_code == 201, created.content
    # Outside its scopes (the owner could read events, the token may not).
    refused = client.get("/api/v1/access-events/")
    assert refused.status_code == 403 and "events:read" in refused.json()["error"]["message"]
    assert client.get("/api/v1/doors/").status_code == 403


def test_without_expires_the_token_never_expires_and_is_named_for_the_command_line() -> None:
    admin = make_user(superuser=True)
    secret = create_api_token(admin.username, "--scopes", ",".join(ALL_SCOPES)).splitlines()[-1]
    token = ApiToken.objects.get(prefix=api_token_split(secret)[0])
    assert token.expires_at is None and token.name == f"{admin.username} (command line)"
    assert sorted(token.scopes) == sorted(ALL_SCOPES)
    assert bearer(secret).get("/api/v1/doors/").status_code == 200


def test_scopes_the_user_does_not_hold_are_refused_naming_the_missing_permissions() -> None:
    reader = make_user(perms=api_scope_permissions(["people:read"]))
    with pytest.raises(CommandError) as refused:
        create_api_token(reader.username, "--scopes", "people:read,people:write")
    message = str(refused.value)
    assert reader.username in message and "people:write" in message
    assert "accessctl.add_person" in message and "recognition.add_enrollmentphoto" in message
    assert "people:read:" not in message  # held: not listed
    assert not ApiToken.objects.exists()


def test_unknown_scopes_are_refused_listing_the_valid_ones() -> None:
    user = make_user(perms=api_scope_permissions(["people:read"]))
    with pytest.raises(CommandError) as refused:
        create_api_token(user.username, "--scopes", "people:read,people:admin")
    message = str(refused.value)
    assert "people:admin" in message
    assert all(scope in message for scope in ALL_SCOPES)
    with pytest.raises(CommandError, match="names no scope"):
        create_api_token(user.username, "--scopes", " , ")
    assert not ApiToken.objects.exists()


def test_unknown_and_inactive_users_are_refused() -> None:
    with pytest.raises(CommandError, match="No user 'ghost'"):
        create_api_token("ghost", "--scopes", "people:read")
    gone = make_user(perms=api_scope_permissions(["people:read"]), active=False)
    with pytest.raises(CommandError, match="not active"):
        create_api_token(gone.username, "--scopes", "people:read")
    assert not ApiToken.objects.exists()


@pytest.mark.parametrize("days", ["0", "-3", "soon", "100000"])
def test_a_bad_expiry_is_refused(days: str) -> None:
    user = make_user(perms=api_scope_permissions(["people:read"]))
    with pytest.raises(CommandError, match="--expires"):
        create_api_token(user.username, "--scopes", "people:read", "--expires", days)
    assert not ApiToken.objects.exists()


def test_a_token_issued_in_the_admin_records_the_issuer() -> None:
    from accessctl.tokens import api_token_issue

    admin = make_user(superuser=True)
    owner = make_user(perms=api_scope_permissions(["events:read"]))
    token, _ = api_token_issue(user=owner, issued_by=admin, name="SIEM", scopes=["events:read"])
    assert token.issued_by == admin.username
    token.refresh_from_db()
    assert token.issued_by == admin.username
