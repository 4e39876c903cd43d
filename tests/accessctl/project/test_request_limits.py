"""Request bodies over the limit are refused (413) before they are read: by the ASGI application
(declared or streamed sizes) and by the web process as served (daphne via ``accessctl.project.web_server``),
which answers at the headers instead of spooling the body."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import ApplicationCommunicator

ROOT = Path(__file__).resolve().parents[3]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"localhost"), *headers],
        "client": ["127.0.0.1", 50000],
        "server": ["127.0.0.1", 8000],
    }


async def _response(communicator: ApplicationCommunicator) -> dict[str, Any]:
    start = await communicator.receive_output(timeout=10)
    assert start["type"] == "http.response.start", start
    body = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return {"status": start["status"], "headers": dict(start["headers"]), "body": body}


def test_declared_oversized_body_is_refused_without_reading_it(settings) -> None:
    from accessctl.project.asgi import application

    settings.MAX_REQUEST_BYTES = 1000

    async def run(path: str, accept: bytes = b"*/*") -> dict[str, Any]:
        headers = [(b"content-length", b"104857600"), (b"accept", accept)]
        communicator = ApplicationCommunicator(application, _scope("POST", path, headers))
        # No body is ever sent: the answer can only come from the declared size.
        response = await _response(communicator)
        await communicator.wait(timeout=10)
        return response

    api = async_to_sync(run)("/api/v1/identify")
    assert api["status"] == 413 and api["headers"][b"connection"] == b"close"
    assert json.loads(api["body"]) == {
        "error": {"code": "too_large", "message": "The request body is too large (at most 1000 bytes)."}
    }
    page = async_to_sync(run)("/accounts/login/")
    assert page["status"] == 413 and page["body"].startswith(b"The request body is too large")
    assert json.loads(async_to_sync(run)("/doors/1/unlock/", b"application/json")["body"])["error"]


def test_import_pages_have_their_own_larger_limit(settings) -> None:
    from accessctl.project.request_limits import request_body_limit

    settings.MAX_REQUEST_BYTES = 1000
    settings.MAX_IMPORT_REQUEST_BYTES = 5000
    assert request_body_limit(path="/enrol/import/upload/") == 5000
    assert request_body_limit(path="/api/v1/people/1/photos/") == 1000


@pytest.mark.django_db
def test_a_streamed_body_is_cut_off_at_the_limit(settings) -> None:
    """No Content-Length (chunked): counted while it streams; Django never sees the rest."""
    from accessctl.project.asgi import application

    settings.MAX_REQUEST_BYTES = 1000

    async def run() -> tuple[dict[str, Any], bool]:
        communicator = ApplicationCommunicator(application, _scope("POST", "/api/v1/people/", []))
        for _ in range(3):
            await communicator.send_input({"type": "http.request", "body": b"x" * 600, "more_body": True})
        response = await _response(communicator)
        await communicator.send_input({"type": "http.request", "body": b"x" * 600, "more_body": False})
        await communicator.wait(timeout=10)
        nothing_more = await communicator.receive_nothing(timeout=0.2)
        return response, nothing_more

    response, nothing_more = async_to_sync(run)()
    assert response["status"] == 413 and json.loads(response["body"])["error"]["code"] == "too_large"
    assert nothing_more  # Django answered nothing after the refusal


def test_bodies_within_the_limit_pass(settings) -> None:
    from accessctl.project.asgi import application

    settings.MAX_REQUEST_BYTES = 1000

    async def run() -> dict[str, Any]:
        body = b"username=a&password=b"
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/x-www-form-urlencoded"),
        ]
        communicator = ApplicationCommunicator(application, _scope("POST", "/api/v1/people/", headers))
        await communicator.send_input({"type": "http.request", "body": body})
        response = await _response(communicator)
        await communicator.wait(timeout=10)
        return response

    assert async_to_sync(run)()["status"] in (401, 403)  # reached the API, which wants credentials


# --- the web process as served ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(test_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``python -m accessctl.project.web_server`` (what ``manage.py up`` runs) with a 100 kB body limit."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("web") / "web.log").open("w")
    env = {**test_env, "ACCESSCTL_MAX_REQUEST_BYTES": "100000", "DATABASE_CONN_MAX_AGE": "0"}
    command = [sys.executable, "-m", "accessctl.project.web_server", "-b", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        [*command, "accessctl.project.asgi:application"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"web server did not start; see {log.name}") from None
                time.sleep(0.2)
        yield "127.0.0.1", port
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _exchange(address: tuple[str, int], head: bytes, body_chunks: list[bytes] = ()) -> bytes:
    """Send ``head`` (+ chunks), then read the answer until the server closes or finishes one response."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            sock.sendall(chunk)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            part = sock.recv(65536)
            if not part:
                break
            data += part
        return data


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 1 << 30


def test_served_web_process_answers_413_at_the_headers(served) -> None:
    # 100 MB declared, not a byte of it sent: the answer comes at once, from the headers alone.
    head = b"POST /api/v1/identify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 104857600\r\n\r\n"
    started = time.monotonic()
    answer = _exchange(served, head)
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_large"
    # curl-style "Expect: 100-continue" gets the refusal, never the go-ahead.
    answer = _exchange(served, head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
    # A client that sends its body anyway still reads the answer (the body is read and discarded).
    sent = b"POST /enrol/import/upload/ HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000000\r\n\r\n"
    answer = _exchange(served, sent, [b"x" * 1_000_000] * 3)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_served_web_process_cuts_off_a_chunked_body(served) -> None:
    head = b"POST /api/v1/people/ HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000)
    answer = _exchange(served, head, [chunk, chunk, chunk])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_served_web_process_still_serves_ordinary_requests(served) -> None:
    answer = _exchange(served, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b'"ok"' in answer
    traversal = _exchange(
        served,
        b"GET /static/..%2f..%2faccessctl/project/settings.py HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    assert traversal.startswith(b"HTTP/1.1 400") and b"SECRET_KEY" not in traversal
    body = b'{"name": "x"}'
    small = _exchange(
        served,
        b"POST /api/v1/people/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    assert small.split(b" ", 2)[1] in (b"401", b"403")  # reached the API, which wants credentials


def test_served_web_process_passes_multipart_bodies_to_the_application(served) -> None:
    """Twisted used to parse multipart bodies itself and answer a bare 400 to a form without fields
    (a browser's empty ``FormData``: only the closing boundary) before Django saw it (issue 16)."""
    boundary = b"----WebKitFormBoundarynZYTunPj56OWRY0y"
    for body in (b"--" + boundary + b"--\r\n", b"not multipart at all"):
        answer = _exchange(
            served,
            b"POST /enrol/import/0123456789abcdef0123456789abcdef/start/ HTTP/1.1\r\nHost: localhost\r\n"
            b"Connection: close\r\nContent-Type: multipart/form-data; boundary=" + boundary + b"\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        # Django answered (CSRF, for an anonymous client without a token), not Twisted's bare 400.
        assert answer.startswith(b"HTTP/1.1 403"), answer[:300]
        assert b"Server: daphne" in answer
