"""Helpers shared by the REST API tests (tests/*/test_api*.py): users, tokens, clients."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from accessctl.models import ApiToken
from accessctl.tokens import ALL_SCOPES, api_scope_permissions, api_token_issue

_seq = itertools.count()


def make_user(*, perms: Iterable[str] = (), superuser: bool = False, staff: bool = False, active: bool = True):
    User = get_user_model()
    n = next(_seq)
    # No password: hashing one (PBKDF2) would cost most of a fast test's time.
    if superuser:
        user = User.objects.create_superuser(f"admin{n}", f"admin{n}@example.test", None)
    else:
        user = User.objects.create_user(f"user{n}", f"user{n}@example.test", None, is_staff=staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    if not active:
        user.is_active = False
        user.save(update_fields=["is_active"])
    return user


def issue_token(
    *, scopes: Iterable[str] = ALL_SCOPES, user=None, rate: int = 10_000, expires_at: dt.datetime | None = None
) -> tuple[ApiToken, str]:
    """A token with ``scopes`` for ``user`` (default: a new user holding exactly the scopes' permissions)."""
    scopes = list(scopes)
    user = user or make_user(perms=api_scope_permissions(scopes))
    return api_token_issue(
        user=user, issued_by=user, name="test", scopes=scopes, rate_limit_per_minute=rate, expires_at=expires_at
    )


def token_client(scopes: Iterable[str] = ALL_SCOPES, **kwargs) -> APIClient:
    """An APIClient sending ``Authorization: Bearer`` for a fresh token with ``scopes``."""
    token, plaintext = issue_token(scopes=scopes, **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    client.token = token  # type: ignore[attr-defined]
    return client


def session_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client
