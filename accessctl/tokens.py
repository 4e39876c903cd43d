"""API tokens for integrators: issue (the plaintext is shown once), revoke, check.

A token reads ``<prefix>.<secret>``. The prefix is public (lists, logs, lookup); only the SHA-256 of
the secret is stored and it is compared in constant time. Clients send
``Authorization: Bearer <prefix>.<secret>``.

A token never does more than its owner may: what it can do is its scopes intersected with the
owner's current Django permissions, checked on every request (``accessctl/api/permissions.py``), so
taking a permission from the owner (or deactivating them) restricts their tokens at once. Issuing
follows the same rule: only a superuser issues a token for someone else, and a token gets a scope
only when its owner holds every permission that scope covers (``SCOPE_PERMISSIONS``).

``manage.py create_api_token`` issues as a :class:`SystemActor`: whoever runs it has the server's
own access (its database and secrets), so it may issue for any active user, like a superuser, but
still never a scope the owner does not hold. The token records who issued it (``issued_by``: the
issuing user's username, or ``command line (OS user ...)``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from accessctl.exceptions import Forbidden, InvalidInput
from accessctl.models import ApiToken

logger = logging.getLogger(__name__)

ALL_SCOPES: tuple[str, ...] = tuple(ApiToken.Scope.values)
_Scope = ApiToken.Scope


def _crud(*models: str, verbs: Iterable[str] = ("add", "change", "delete")) -> tuple[str, ...]:
    return tuple(f"{model.split('.')[0]}.{verb}_{model.split('.')[1]}" for model in models for verb in verbs)


# The Django permissions each scope stands for: the ones a signed-in user needs for the same API
# calls (tests/accessctl/test_api_auth.py checks every endpoint against this table). The owner of
# a token must hold all of a scope's permissions for the token to be given that scope.
SCOPE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    _Scope.EVENTS_READ: ("accessctl.view_accessevent", "accessctl.view_alarm"),
    _Scope.PEOPLE_READ: ("accessctl.view_person", "recognition.view_enrollmentphoto"),
    _Scope.PEOPLE_WRITE: (*_crud("accessctl.person"), "recognition.add_enrollmentphoto"),
    _Scope.DOORS_READ: _crud(
        "accessctl.door", "accessctl.accessgroup", "accessctl.schedule", "accessctl.area", verbs=["view"]
    ),
    _Scope.DOORS_WRITE: _crud("accessctl.door", "accessctl.accessgroup", "accessctl.schedule", "accessctl.area"),
    _Scope.DEVICES_READ: ("devices.view_edgedevice",),
    _Scope.DEVICES_WRITE: _crud("devices.edgedevice"),
    _Scope.IDENTIFY: ("accessctl.view_person",),
    _Scope.MODELS_READ: ("recognition.view_modelversion",),
    _Scope.MODELS_WRITE: ("recognition.view_modelversion", "recognition.change_modelversion"),
    _Scope.WEBHOOKS_WRITE: (
        *_crud("accessctl.webhooksubscription", verbs=["view", "add", "change", "delete"]),
        *_crud("accessctl.webhookdelivery", verbs=["view", "change"]),
    ),
}
assert set(SCOPE_PERMISSIONS) == set(ALL_SCOPES), "a scope has no permissions"
PREFIX_BYTES = 5  # 10 hex characters (the column holds 12)
SECRET_BYTES = 32
# Hash compared against when the prefix is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"accessctl-no-such-token").hexdigest()


@dataclass(frozen=True)
class SystemActor:
    """An issuer that is no account: someone with server access (a management command).

    Acts with a superuser's authority over tokens (issue for any active user); ``label`` is what the
    token and the log record as its issuer.
    """

    label: str
    pk: None = None
    is_active: bool = True
    is_superuser: bool = True


Issuer = AbstractBaseUser | SystemActor
ISSUED_BY_MAX = 150  # ApiToken.issued_by


def api_token_issuer_label(issuer: Issuer) -> str:
    """What a token records as its issuer: the username, or the system actor's label."""
    label = issuer.label if isinstance(issuer, SystemActor) else issuer.get_username()
    return label[:ISSUED_BY_MAX]


def api_token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def api_token_split(plaintext: str) -> tuple[str, str] | None:
    """``(prefix, secret)`` of a presented token, or None when it is not shaped like one."""
    prefix, dot, secret = plaintext.strip().partition(".")
    if not dot or not prefix or not secret or len(prefix) > 12:
        return None
    return prefix, secret


def api_token_secret_matches(token: ApiToken | None, secret: str) -> bool:
    """Constant-time comparison of the presented secret's SHA-256 with the stored one."""
    expected = token.secret_hash if token is not None else _DUMMY_HASH
    return hmac.compare_digest(api_token_hash(secret), expected) and token is not None


def api_token_is_usable(token: ApiToken, *, now: dt.datetime | None = None) -> bool:
    now = now or timezone.now()
    if token.revoked_at is not None:
        return False
    return token.expires_at is None or token.expires_at > now


def _validate_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(scopes))
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise InvalidInput(f"Unknown scope(s): {', '.join(unknown)}", details={"allowed": list(ALL_SCOPES)})
    return scopes


def api_scope_permissions(scopes: Iterable[str]) -> list[str]:
    """The Django permissions a token's owner needs for ``scopes`` (sorted, without repeats)."""
    return sorted({perm for scope in scopes for perm in SCOPE_PERMISSIONS.get(scope, ())})


def api_token_scopes_missing(*, user: AbstractBaseUser, scopes: Iterable[str]) -> dict[str, list[str]]:
    """Scope -> the permissions ``user`` lacks for it, for each of ``scopes`` they do not fully hold."""
    missing: dict[str, list[str]] = {}
    for scope in scopes:
        lacking = [perm for perm in SCOPE_PERMISSIONS.get(scope, ()) if not user.has_perm(perm)]
        if lacking or scope not in SCOPE_PERMISSIONS:
            missing[scope] = lacking
    return missing


def api_token_grant_check(*, owner: AbstractBaseUser, granted_by: Issuer, scopes: Iterable[str]) -> list[str]:
    """Refuse what ``granted_by`` may not give ``owner``; returns the validated scopes.

    Only superusers (and the command line, a :class:`SystemActor`) issue (or re-scope) tokens of
    other users; a scope is given only when the owner holds all its permissions (a superuser holds
    every permission).
    """
    scopes = _validate_scopes(scopes)
    if not (granted_by.is_active and (granted_by.is_superuser or granted_by.pk == owner.pk)):
        raise Forbidden("Only superusers issue tokens for other users.")
    if not owner.is_active:
        raise InvalidInput("The token's owner is not active.")
    missing = api_token_scopes_missing(user=owner, scopes=scopes)
    if missing:
        raise InvalidInput(
            f"The token's owner lacks the permissions for scope(s): {', '.join(missing)}",
            details={"missing_permissions": missing},
        )
    return scopes


def api_token_issue(
    *,
    user: AbstractBaseUser,
    issued_by: Issuer,
    name: str,
    scopes: Iterable[str],
    expires_at: dt.datetime | None = None,
    rate_limit_per_minute: int = 600,
) -> tuple[ApiToken, str]:
    """Create a token for ``user``, issued by ``issued_by`` (``user``, a superuser or a
    :class:`SystemActor`); ``(token, plaintext)``. The token records its issuer (``issued_by``).

    The plaintext is not stored anywhere.
    """
    scopes = api_token_grant_check(owner=user, granted_by=issued_by, scopes=scopes)
    if rate_limit_per_minute < 1:
        raise InvalidInput("rate_limit_per_minute must be at least 1")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("expires_at must be in the future")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    for _ in range(5):
        prefix = secrets.token_hex(PREFIX_BYTES)
        try:
            with transaction.atomic():
                token = ApiToken.objects.create(
                    name=name,
                    user=user,
                    prefix=prefix,
                    secret_hash=api_token_hash(secret),
                    scopes=scopes,
                    expires_at=expires_at,
                    rate_limit_per_minute=rate_limit_per_minute,
                    issued_by=api_token_issuer_label(issued_by),
                )
            break
        except IntegrityError:  # prefix collision: astronomically rare, try another
            continue
    else:  # pragma: no cover
        raise RuntimeError("could not allocate a unique token prefix")
    logger.info(
        "api token %s issued for user %s by %s scopes=%s",
        token.prefix,
        user.pk,
        issued_by.label if isinstance(issued_by, SystemActor) else f"user {issued_by.pk}",
        ",".join(scopes),
    )
    return token, f"{prefix}.{secret}"


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke now (idempotent: a revoked token keeps its first revocation time)."""
    if token.revoked_at is None:
        now = timezone.now()
        ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
        token.refresh_from_db(fields=["revoked_at"])
        logger.info("api token %s revoked", token.prefix)
    return token


def api_token_touch(*, token: ApiToken, now: dt.datetime | None = None, every_s: int = 60) -> None:
    """Record use, writing at most once per ``every_s`` seconds per token."""
    now = now or timezone.now()
    if token.last_used_at is not None and (now - token.last_used_at).total_seconds() < every_s:
        return
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    token.last_used_at = now
