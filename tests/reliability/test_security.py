"""Security checks: deploy checklist, websocket and API refuse strangers, CSRF on every POST, login lockout."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse

from accessctl import login_throttle
from tests.api_support import make_user
from tests.devices.e2e import ROOT

FAST_HASHER = ["django.contrib.auth.hashers.MD5PasswordHasher"]
PUBLIC_API = {"api-schema", "api-docs", "api-redoc"}


def test_deploy_checklist_is_clean_with_production_settings(tmp_path) -> None:
    env = {
        **os.environ,
        "ACCESSCTL_PRODUCTION": "1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "ACCESSCTL_HTTPS": "1",
        "DJANGO_ALLOWED_HOSTS": "acs.example.com",
        "ACCESSCTL_VAR_DIR": str(tmp_path),
    }
    env.pop("DJANGO_DEBUG", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "check", "--deploy", "--fail-level", "WARNING"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key(tmp_path) -> None:
    env = {**os.environ, "ACCESSCTL_PRODUCTION": "1", "ACCESSCTL_VAR_DIR": str(tmp_path)}
    env.pop("DJANGO_SECRET_KEY", None)
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


# --- every URL of the app -------------------------------------------------------------------------


def _all_urls() -> list[tuple[str, str]]:
    """(name, concrete path) for every named URL pattern, with placeholder values for its arguments."""
    out: dict[str, str] = {}

    def walk(patterns: list, namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace)
            elif isinstance(pattern, URLPattern) and pattern.name:
                name = namespace + pattern.name
                groups = list(pattern.pattern.regex.groupindex)
                for value in ("1", "x", str(uuid.UUID(int=1, version=4))):
                    try:
                        out.setdefault(name, reverse(name, kwargs=dict.fromkeys(groups, value)))
                        break
                    except NoReverseMatch:
                        continue

    walk(get_resolver().url_patterns, "")
    return sorted(out.items())


def test_every_url_was_enumerated() -> None:
    names = dict(_all_urls())
    assert {"login", "logout", "door_unlock", "door_lockdown", "alarm_acknowledge", "admin:index"} <= set(names)
    assert any(name.startswith("api-") for name in names)


@pytest.mark.django_db
def test_csrf_is_enforced_on_every_post() -> None:
    """A signed-in superuser's browser session cannot be made to POST anywhere without the CSRF token.

    A superuser is refused nothing else, so a 403 here is the CSRF check (the HTML API docs render
    DRF's "CSRF Failed" as a bare "403 Forbidden")."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user(superuser=True))
    unprotected = []
    for name, url in _all_urls():
        response = client.post(url, {"x": "1"})
        if response.status_code != 403 or not (b"CSRF" in response.content or response.content == b"403 Forbidden"):
            unprotected.append(f"{name} {url} -> {response.status_code}")
    assert unprotected == []


@pytest.mark.django_db
def test_post_with_the_csrf_token_is_accepted() -> None:
    """Positive control: the same kind of POST with the token gets past the CSRF check."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user(superuser=True))
    client.get(reverse("login"))
    token = client.cookies["csrftoken"].value
    response = client.post(reverse("logout"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302


# --- API and websocket refuse strangers -----------------------------------------------------------


def _api_urls() -> list[tuple[str, str]]:
    return [(n, u) for n, u in _all_urls() if n.startswith("api-") and n not in PUBLIC_API]


@pytest.mark.django_db
def test_api_refuses_anonymous_and_unprivileged_users() -> None:
    anonymous = Client()
    nobody = Client()
    nobody.force_login(make_user())
    problems = []
    for name, url in _api_urls():
        for who, client in (("anonymous", anonymous), ("unprivileged", nobody)):
            for method in ("get", "post", "delete"):
                status = getattr(client, method)(url).status_code
                if status not in (401, 403, 405):
                    problems.append(f"{who} {method.upper()} {url} ({name}) -> {status}")
    assert problems == []


@pytest.mark.django_db
def test_api_refuses_a_garbage_bearer_token() -> None:
    client = Client(HTTP_AUTHORIZATION="Bearer abc.def")
    assert client.get(reverse("api-person-list")).status_code in (401, 403)


async def _close_code(communicator: WebsocketCommunicator) -> int | None:
    connected, _ = await communicator.connect()
    if not connected:
        return None
    output = await communicator.receive_output(timeout=5)
    await communicator.wait()
    return output.get("code") if output["type"] == "websocket.close" else -1


@pytest.mark.django_db(transaction=True)
def test_dashboard_websocket_refuses_anonymous_and_unprivileged_users() -> None:
    from accessctl.asgi import application

    origin = (b"origin", b"http://localhost")
    host = (b"host", b"localhost")
    anonymous = WebsocketCommunicator(application, "/ws/dashboard/", headers=[origin, host])
    assert async_to_sync(_close_code)(anonymous) == 4403
    browser = Client()
    browser.force_login(make_user())
    cookie = (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[origin, host, cookie])
    assert async_to_sync(_close_code)(communicator) == 4403


# --- login rate limiting --------------------------------------------------------------------------


@pytest.fixture
def login_env(settings, db) -> Iterator[dict[str, str]]:
    settings.PASSWORD_HASHERS = FAST_HASHER
    username = f"guard-{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_user(username, password="right-horse-battery")
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    yield {"username": username, "ip": ip}
    cache.delete_many([*login_throttle._limits(username=username, ip=ip)])


def _login(username: str, password: str, ip: str) -> tuple[int, Client, str]:
    client = Client(REMOTE_ADDR=ip)
    response = client.post(reverse("login"), {"username": username, "password": password})
    return response.status_code, client, response.content.decode()


def test_login_locks_out_a_username_after_repeated_failures(login_env, caplog) -> None:
    user, ip = login_env["username"], login_env["ip"]
    with caplog.at_level(logging.WARNING, logger="accessctl.login_throttle"):
        for _ in range(login_throttle.MAX_FAILURES_PER_USER):
            status, client, _ = _login(user, "wrong", ip)
            assert status == 200 and "_auth_user_id" not in client.session
        status, client, body = _login(user, "right-horse-battery", ip)  # the right password, too late
    assert status == 429
    assert login_throttle.LOCKED_MESSAGE in body
    assert "_auth_user_id" not in client.session
    assert any("locked" in r.getMessage() and user in r.getMessage() and ip in r.getMessage() for r in caplog.records)
    # From another address the same username is still locked (the guesser may rotate addresses).
    assert _login(user, "right-horse-battery", "192.0.2.77")[0] == 429


def test_login_locks_out_an_address_guessing_many_usernames(login_env) -> None:
    ip = login_env["ip"]
    guessed = [f"ghost-{i}" for i in range(login_throttle.MAX_FAILURES_PER_IP)]
    try:
        for name in guessed:
            assert _login(name, "wrong", ip)[0] == 200
        assert _login(login_env["username"], "right-horse-battery", ip)[0] == 429
        status, client, _ = _login(login_env["username"], "right-horse-battery", "192.0.2.78")
        assert status == 302 and "_auth_user_id" in client.session  # another address is not affected
    finally:
        for name in guessed:
            cache.delete_many([*login_throttle._limits(username=name, ip=ip)])
        cache.delete_many([*login_throttle._limits(username=login_env["username"], ip="192.0.2.78")])


def test_successful_login_resets_the_username_counter(login_env) -> None:
    user, ip = login_env["username"], login_env["ip"]
    for _ in range(login_throttle.MAX_FAILURES_PER_USER - 1):
        _login(user, "wrong", ip)
    assert _login(user, "right-horse-battery", ip)[0] == 302
    for _ in range(login_throttle.MAX_FAILURES_PER_USER - 1):
        _login(user, "wrong", ip)
    assert _login(user, "right-horse-battery", ip)[0] == 302


def test_admin_sign_in_is_throttled_too(login_env) -> None:
    user, ip = login_env["username"], login_env["ip"]
    for _ in range(login_throttle.MAX_FAILURES_PER_USER):
        Client(REMOTE_ADDR=ip).post("/admin/login/", {"username": user, "password": "wrong"})
    response = Client(REMOTE_ADDR=ip).post("/admin/login/", {"username": user, "password": "right-horse-battery"})
    assert response.status_code == 429
