"""Security checks: deploy checklist, websocket and API refuse strangers, CSRF on every POST, login lockout."""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import subprocess
import sys
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import NoReverseMatch, URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from accessctl.project import login_throttle
from tests.api_support import make_user
from tests.devices.e2e import ROOT

FAST_HASHER = ["django.contrib.auth.hashers.MD5PasswordHasher"]
PUBLIC_API = {"api-schema", "api-docs", "api-redoc", "api-redoc-bundle"}


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
    from accessctl.project.asgi import application

    origin = (b"origin", b"http://localhost")
    host = (b"host", b"localhost")
    anonymous = WebsocketCommunicator(application, "/ws/dashboard/", headers=[origin, host])
    assert async_to_sync(_close_code)(anonymous) == 4403
    browser = Client()
    browser.force_login(make_user())
    cookie = (b"cookie", f"sessionid={browser.cookies['sessionid'].value}".encode())
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[origin, host, cookie])
    assert async_to_sync(_close_code)(communicator) == 4403


# --- login rate limiting (django-axes, accessctl/project/login_throttle.py) --------------------------------


@pytest.fixture
def login_env(settings, db) -> dict[str, str]:
    settings.PASSWORD_HASHERS = FAST_HASHER
    username = f"guard-{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_user(username, password="right-horse-battery")
    ip = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"
    return {"username": username, "ip": ip}  # the counters are rows of the test's database: rolled back


def _login(username: str, password: str, ip: str, url: str = "") -> tuple[int, Client, str]:
    client = Client(REMOTE_ADDR=ip)
    response = client.post(url or reverse("login"), {"username": username, "password": password})
    return response.status_code, client, response.content.decode()


def _fail(username: str, ip: str, times: int) -> list[int]:
    return [_login(username, "wrong", ip)[0] for _ in range(times)]


def test_login_locks_out_a_username_after_repeated_failures(login_env, caplog) -> None:
    user, ip = login_env["username"], login_env["ip"]
    with caplog.at_level(logging.WARNING, logger="accessctl.project.login_throttle"):
        assert _fail(user, ip, settings.LOGIN_FAILURES_PER_USER - 1) == [200] * (settings.LOGIN_FAILURES_PER_USER - 1)
        assert _login(user, "wrong", ip)[0] == 429  # the failure that locks
        status, client, body = _login(user, "right-horse-battery", ip)  # the right password, too late
    assert status == 429
    assert login_throttle.locked_message() in body
    assert "_auth_user_id" not in client.session
    assert any("locked" in r.getMessage() and user in r.getMessage() and ip in r.getMessage() for r in caplog.records)
    # From another address the same username is still locked (the guesser may rotate addresses).
    assert _login(user, "right-horse-battery", "192.0.2.77")[0] == 429


def test_login_locks_out_an_address_guessing_many_usernames(login_env) -> None:
    ip = login_env["ip"]
    for i in range(settings.LOGIN_FAILURES_PER_IP - 1):
        assert _login(f"ghost-{i}", "wrong", ip)[0] == 200
    assert _login("ghost-last", "wrong", ip)[0] == 429
    assert _login(login_env["username"], "right-horse-battery", ip)[0] == 429
    status, client, _ = _login(login_env["username"], "right-horse-battery", "192.0.2.78")
    assert status == 302 and "_auth_user_id" in client.session  # another address is not affected


def test_successful_login_resets_the_username_counter_not_the_address(login_env) -> None:
    user, ip = login_env["username"], login_env["ip"]
    _fail(user, ip, settings.LOGIN_FAILURES_PER_USER - 1)
    assert _login(user, "right-horse-battery", ip)[0] == 302
    _fail(user, ip, settings.LOGIN_FAILURES_PER_USER - 1)
    assert _login(user, "right-horse-battery", ip)[0] == 302
    # The address's failures against other names are not forgotten by one valid sign-in.
    other_ip = "192.0.2.79"
    for i in range(settings.LOGIN_FAILURES_PER_IP - 1):
        _login(f"ghost-{i}", "wrong", other_ip)
    assert _login(user, "right-horse-battery", other_ip)[0] == 302
    assert _login("ghost-last", "wrong", other_ip)[0] == 429


def test_admin_sign_in_is_throttled_too(login_env) -> None:
    user, ip = login_env["username"], login_env["ip"]
    for _ in range(settings.LOGIN_FAILURES_PER_USER):
        _login(user, "wrong", ip, url="/admin/login/")
    assert _login(user, "right-horse-battery", ip, url="/admin/login/")[0] == 429
    assert _login(user, "right-horse-battery", ip)[0] == 429  # one lockout for every sign-in page


def test_lockout_counts_the_username_as_django_authenticates_it(login_env) -> None:
    """``ｐlain`` (full-width p) signs in as ``plain``: it cannot be used to try more passwords."""
    ip = login_env["ip"]
    plain = get_user_model().objects.create_user("plain", password="plain-horse-battery")
    shouty = get_user_model().objects.create_user("PLAIN", password="shouty-horse-battery")
    status, client, _ = _login("\uff50lain", "plain-horse-battery", ip)  # control: the same account
    assert status == 302 and client.session["_auth_user_id"] == str(plain.pk)
    variants = ["plain", "\uff50lain", " plain ", "\uff50\uff4c\uff41\uff49\uff4e"]
    for i in range(settings.LOGIN_FAILURES_PER_USER - 1):
        assert _login(variants[i % len(variants)], "wrong", ip)[0] == 200
    assert _login("\uff50lain", "wrong", "192.0.2.80")[0] == 429  # the fifth failure, whatever its spelling
    for spelling in variants:
        assert _login(spelling, "plain-horse-battery", "192.0.2.81")[0] == 429
    # Django's usernames are case-sensitive: PLAIN is another account, with its own counter.
    status, client, _ = _login("PLAIN", "shouty-horse-battery", "192.0.2.81")
    assert status == 302 and client.session["_auth_user_id"] == str(shouty.pk)


def test_the_right_password_is_refused_until_the_cool_off_has_passed(login_env) -> None:
    from axes.models import AccessAttempt

    user, ip = login_env["username"], login_env["ip"]
    _fail(user, ip, settings.LOGIN_FAILURES_PER_USER)
    cool_off = settings.AXES_COOLOFF_TIME

    def locked_since(ago: dt.timedelta) -> None:
        AccessAttempt.objects.filter(username=user).update(attempt_time=timezone.now() - ago)

    locked_since(cool_off - dt.timedelta(minutes=1))
    times = list(AccessAttempt.objects.filter(username=user).values_list("attempt_time", flat=True))
    assert _login(user, "right-horse-battery", "192.0.2.82")[0] == 429
    assert _login(user, "right-horse-battery", ip)[0] == 429
    # Refused attempts do not extend the lockout ...
    assert list(AccessAttempt.objects.filter(username=user).values_list("attempt_time", flat=True)) == times
    locked_since(cool_off + dt.timedelta(seconds=1))  # ... and once the cool-off has passed, it is over
    status, client, _ = _login(user, "right-horse-battery", ip)
    assert status == 302 and "_auth_user_id" in client.session


@pytest.mark.django_db(transaction=True)
def test_lockout_holds_under_asgi(settings) -> None:
    """Daphne serves the site: the lockout page comes back the same through the async middleware chain."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    settings.PASSWORD_HASHERS = FAST_HASHER
    get_user_model().objects.create_user("ann", password="right-horse-battery")

    async def run() -> list[int]:
        client = AsyncClient(REMOTE_ADDR="192.0.2.83")
        statuses = []
        for password in ["wrong"] * settings.LOGIN_FAILURES_PER_USER + ["right-horse-battery"]:
            response = await client.post(reverse("login"), {"username": "ann", "password": password})
            statuses.append(response.status_code)
        assert login_throttle.locked_message() in response.content.decode()
        return statuses

    assert async_to_sync(run)() == [200] * (settings.LOGIN_FAILURES_PER_USER - 1) + [429, 429]
