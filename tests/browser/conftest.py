"""Browser tests: a real daphne server (HTTP + websockets) on the test database, driven by Chromium.

Chromium comes from Debian (``/usr/bin/chromium``; ``scripts/test`` installs it when missing),
never from ``playwright install``. Tests using these fixtures need ``django_db(transaction=True)``
so the server process sees what the test writes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("ACCESSCTL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _served(test_env: dict[str, str], log_name: str = "daphne.log") -> Iterator[str]:
    """A daphne process serving ``accessctl.project.asgi`` against the test database; yields its base URL."""
    port = _free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / log_name).open("w")
    env = {**test_env, "PYTHONUNBUFFERED": "1", "DATABASE_CONN_MAX_AGE": "0"}
    # The web process as `manage.py up` runs it (daphne with the request body limits).
    server = [sys.executable, "-m", "accessctl.project.web_server", "-b", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        [*server, "accessctl.project.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310 (local URL)
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start; see {ARTIFACTS / log_name}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="session")
def live_url(django_db_setup: Any, django_db_blocker: Any, test_env: dict[str, str]) -> Iterator[str]:
    """Base URL of a daphne process serving ``accessctl.project.asgi`` against the test database."""
    with _served(test_env) as url:
        yield url


@pytest.fixture
def fresh_live_url(django_db_setup: Any, test_env: dict[str, str]) -> Iterator[str]:
    """A daphne process of this test's own. The session's server caches content-type ids, which
    the flush between transactional tests renumbers: admin pages that write a change log (adding a
    door, a group) need a server started after that flush."""
    with _served(test_env, "daphne-fresh.log") as url:
        yield url


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """Chromium for the tests of this folder only: closing it also ends Playwright's event loop and
    restores DJANGO_ALLOW_ASYNC_UNSAFE before any other test runs."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread while the browser is open; Django
    # would then refuse the plain synchronous ORM calls the tests make between browser steps.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1366x768 page; fails the test on console errors or uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(15000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    yield page
    context.close()
    assert errors == [], errors


def login(page: Any, live_url: str, username: str, password: str) -> None:
    page.goto(f"{live_url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_url}/")


def off_loop(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` in a worker thread and return its result.

    Services that broadcast (``async_to_sync`` into the channel layer) cannot run in the thread that
    holds Playwright's event loop; in a thread of their own they behave as in a Celery worker.
    """
    import threading

    from django.db import connection

    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")
