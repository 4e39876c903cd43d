"""Web hardening through the ASGI application as served: no 500s for hostile requests, production
settings that refuse to start, and the Content-Security-Policy of every page."""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from asgiref.sync import async_to_sync
from channels.testing import ApplicationCommunicator
from django.test import Client
from django.urls import reverse

from accessctl.project.csp import API_DOCS_CSP, PAGE_CSP
from tests.api_support import make_user, session_client, token_client

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _request_threads_close_their_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Views served through the ASGI app use connections in their own threads; closed after each
    request (as with ``DATABASE_CONN_MAX_AGE=0``) so the test database can be dropped at the end."""
    from django.db import connections

    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)


def asgi_request(method: str, path: str, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    """One request through ``accessctl.project.asgi.application`` with the scope daphne builds (path
    percent-decoded, ``Content-Length`` sent with a body); returns ``{"status", "headers", "body"}``."""
    from accessctl.project.asgi import application

    raw_path, _, query = path.partition("?")
    all_headers = [(b"host", b"localhost"), *(headers or [])]
    if body:
        all_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "query_string": query.encode(),
        "headers": all_headers,
        "client": ["127.0.0.1", 50000],
        "server": ["127.0.0.1", 8000],
    }

    async def run() -> dict:
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": body})
        start = await communicator.receive_output(timeout=30)
        assert start["type"] == "http.response.start", start
        content = b""
        while True:
            message = await communicator.receive_output(timeout=30)
            content += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await communicator.wait(timeout=30)
        return {"status": start["status"], "headers": dict(start.get("headers", [])), "body": content}

    return async_to_sync(run)()


def _json(response: dict) -> Any:
    import json

    return json.loads(response["body"])


# --- 500s that are client errors (issue item 13) ------------------------------------------------


def test_static_path_traversal_is_400_not_500(settings) -> None:
    assert settings.SERVE_STATIC  # the ASGI app serves /static/ itself (no proxy configured)
    control = asgi_request("GET", "/static/css/app.css")
    assert control["status"] == 200 and b"{" in control["body"]
    for path in (
        "/static/..%2f..%2faccessctl/project/settings.py",
        "/static/..%2F..%2F..%2Fetc/passwd",
        "/static/css/..%2f..%2f..%2faccessctl/project/settings.py",
    ):
        response = asgi_request("GET", path)
        assert response["status"] == 400, (path, response["status"])
        assert b"SECRET_KEY" not in response["body"] and b"root:" not in response["body"]
    assert asgi_request("GET", "/static/a%00b.css")["status"] == 404


@pytest.mark.django_db(transaction=True)
def test_invalid_cursor_is_a_4xx_in_the_api_error_format() -> None:
    client = token_client(["events:read"])
    token = client._credentials["HTTP_AUTHORIZATION"].encode()
    forged = [
        base64.b64encode(b"p=not-a-date").decode(),
        base64.b64encode(b"p=2026-13-45 99:99:99").decode(),
        base64.b64encode(b"o=1&p=%00").decode(),
        "garbage",
        "%FF%FE",
    ]
    for cursor in forged:
        response = asgi_request("GET", f"/api/v1/access-events/?cursor={cursor}", headers=[(b"authorization", token)])
        assert response["status"] == 404, (cursor, response["status"], response["body"][:300])
        assert _json(response) == {"error": {"code": "not_found", "message": "Invalid cursor"}}
    # A genuine cursor still pages.
    first = client.get("/api/v1/access-events/")
    assert first.status_code == 200


@pytest.mark.django_db(transaction=True)
def test_deeply_nested_json_is_a_400_in_the_api_error_format() -> None:
    client = token_client(["people:write", "people:read"])
    token = client._credentials["HTTP_AUTHORIZATION"].encode()
    headers = [(b"authorization", token), (b"content-type", b"application/json")]
    response = asgi_request("POST", "/api/v1/people/", body=b"[" * 100_000, headers=headers)
    assert response["status"] == 400, response["body"][:300]
    error = _json(response)["error"]
    assert error["code"] == "parse_error" and "nested too deeply" in error["message"]
    deep_object = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    assert asgi_request("POST", "/api/v1/people/", body=deep_object, headers=headers)["status"] == 400
    # Ordinary JSON is still parsed.
    ok = asgi_request("POST", "/api/v1/people/", body=b'{"name": "Ada"}', headers=headers)
    assert ok["status"] == 201, ok["body"][:300]


@pytest.mark.django_db
def test_json_bodies_over_the_form_limit_are_413(settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client = token_client(["people:write"])
    response = client.post("/api/v1/people/", data='{"name": "' + "x" * 2000 + '"}', content_type="application/json")
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


# --- production settings refuse to start (item 14) ------------------------------------------------


def _import_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "ACCESSCTL_VAR_DIR": str(tmp_path), **env}
    if "DJANGO_DEBUG" not in env:
        full.pop("DJANGO_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-c", "import accessctl.project.settings"],
        env=full, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_production_refuses_debug_and_weak_secret_keys(tmp_path) -> None:
    strong = secrets.token_urlsafe(64)
    debug = _import_settings(tmp_path, ACCESSCTL_PRODUCTION="1", DJANGO_SECRET_KEY=strong, DJANGO_DEBUG="1")
    assert debug.returncode != 0
    assert "ImproperlyConfigured" in debug.stderr and "DJANGO_DEBUG must be off" in debug.stderr
    for weak in ("short-key", "a" * 60, "django-insecure-" + secrets.token_urlsafe(50)):
        result = _import_settings(tmp_path, ACCESSCTL_PRODUCTION="1", DJANGO_SECRET_KEY=weak)
        assert result.returncode != 0, weak
        assert "ImproperlyConfigured" in result.stderr and "DJANGO_SECRET_KEY is too weak" in result.stderr
    assert _import_settings(tmp_path, ACCESSCTL_PRODUCTION="1", DJANGO_SECRET_KEY=strong).returncode == 0
    # Outside production, development stays as easy as before.
    assert _import_settings(tmp_path, DJANGO_DEBUG="1", DJANGO_SECRET_KEY="dev").returncode == 0


# --- Content-Security-Policy (item 14) --------------------------------------------------------------


def _directives(header: str) -> dict[str, str]:
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


def test_page_policy_allows_only_the_sites_own_code() -> None:
    policy = _directives(PAGE_CSP)
    assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert policy["object-src"] == "'none'" and policy["base-uri"] == "'none'"
    assert "unsafe" not in PAGE_CSP and "*" not in PAGE_CSP
    docs = _directives(API_DOCS_CSP)
    assert docs["script-src"] == "'self'" and "unsafe" not in docs["script-src"]


@pytest.mark.django_db
def test_every_page_carries_the_policy() -> None:
    admin = session_client(make_user(superuser=True))
    for url in ("/", reverse("audit_list"), reverse("recognition:enrol_index"), "/admin/", "/api/v1/people/"):
        response = admin.get(url)
        assert response.status_code == 200, url
        assert response["Content-Security-Policy"] == PAGE_CSP, url
    assert Client().get(reverse("login"))["Content-Security-Policy"] == PAGE_CSP
    for name in ("api-docs", "api-redoc"):
        response = Client().get(reverse(name))
        assert response.status_code == 200 and response["Content-Security-Policy"] == API_DOCS_CSP
        # Inline styles are allowed there (Swagger UI and Redoc need them), inline scripts are not.
        assert [f for f in _inline_code(response.content.decode()) if f != "<style>"] == [], name


class _InlineFinder(HTMLParser):
    """Inline scripts (not JSON data blocks), style attributes, <style> blocks and event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            data_block = (named.get("type") or "").endswith("json")
            self._in_script = "src" not in named and not data_block
        if tag == "style":
            self.found.append("<style>")
        for key, _ in attrs:
            if key == "style" or key.startswith("on"):
                self.found.append(f"<{tag} {key}=>")
            if key in ("href", "src", "action") and (named[key] or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {key}=javascript:>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append(f"<script>{data.strip()[:40]}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def _inline_code(html: str) -> list[str]:
    finder = _InlineFinder()
    finder.feed(html)
    return finder.found


def test_templates_hold_no_inline_code() -> None:
    problems = []
    for template in sorted((ROOT / "templates").rglob("*.html")):
        text = re.sub(r"{%.*?%}|{{.*?}}", "x", template.read_text(), flags=re.S)
        problems += [f"{template.relative_to(ROOT)}: {found}" for found in _inline_code(text)]
    assert problems == []
