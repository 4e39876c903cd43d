"""deploy/systemd (issue 22): the units pass ``systemd-analyze verify``, carry the hardening, run
commands and modules that exist, and the readiness they rely on works with the real processes
(the bridge and the worker tell a real notify socket READY=1; the web's ExecStartPost waits for a
real HTTP server)."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from django.core.management import get_commands

from accessctl.project.http_wait import http_wait
from accessctl.systemd_notify import systemd_notify
from tests.devices import e2e

ROOT = Path(__file__).resolve().parents[3]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED = "/opt/accessctl"
SERVICES = ("web", "worker", "gallery-worker", "beat", "bridge", "migrate")
HARDENING = {
    "User": "accessctl", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/accessctl", "EnvironmentFile": "/etc/accessctl/accessctl.env",
    "CapabilityBoundingSet": "",
}  # fmt: skip


def unit(name: str) -> dict[str, list[str]]:
    """Key -> values (a key may repeat) of one unit file, sections merged."""
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _argv(command: str) -> list[str]:
    return shlex.split(command.replace("%H", "host"))


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here: the units were not verified (apt install systemd)")
    for path in [*UNITS.glob("*.service"), *UNITS.glob("*.target")]:  # installed here instead of /opt/accessctl
        text = path.read_text().replace(f"{INSTALLED}/.venv/bin/python", str(ROOT / ".venv" / "bin" / "python"))
        (tmp_path / path.name).write_text(text.replace(INSTALLED, str(ROOT)))
    files = sorted(str(p) for p in tmp_path.iterdir())
    result = subprocess.run([analyze, "verify", "--man=no", *files], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_is_hardened_and_restarts(name: str) -> None:
    values = unit(f"accessctl-{name}.service")
    for key, wanted in HARDENING.items():
        assert values.get(key) == [wanted], (name, key, values.get(key))
    env = " ".join(values["Environment"])
    assert (
        "PROMETHEUS_MULTIPROC_DIR=/var/lib/accessctl/metrics" in env and "ACCESSCTL_VAR_DIR=/var/lib/accessctl" in env
    )
    if name != "migrate":
        assert values["Restart"] == ["on-failure"]
        assert values["WantedBy"] == ["accessctl.target"]
        assert values["Requires"] == ["accessctl-migrate.service"]
    assert f"accessctl-{name}.service" in unit("accessctl.target")["Wants"][0].split()


def test_every_command_names_a_real_management_command_or_module() -> None:
    commands = get_commands()
    seen = set()
    for name in SERVICES:
        values = unit(f"accessctl-{name}.service")
        for command in values["ExecStart"] + values.get("ExecStartPost", []):
            argv = _argv(command)
            assert argv[0] == f"{INSTALLED}/.venv/bin/python", command
            if argv[1] == f"{INSTALLED}/manage.py":
                assert argv[2] in commands, command
                seen.add(argv[2])
            else:
                assert argv[1] == "-m" and importlib.util.find_spec(argv[2]) is not None, command
                seen.add(argv[2])
                if argv[2] == "celery":
                    assert argv[3:5] == ["-A", "accessctl.project"] and importlib.util.find_spec(argv[4]), command
                    assert argv[5] in ("worker", "beat"), command
                    seen.add(f"celery {argv[5]}")
    assert {"mqtt_bridge", "migrate", "accessctl.project.web_server", "celery worker", "celery beat",
            "accessctl.project.http_wait"} <= seen  # fmt: skip


def test_the_worker_command_parses_and_consumes_the_queues_the_bridge_fills() -> None:
    from django.conf import settings

    argv = _argv(unit("accessctl-worker.service")["ExecStart"][0])
    queues = argv[argv.index("-Q") + 1].split(",")
    assert set(queues) == {settings.RECOGNITION_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE}
    result = subprocess.run(
        [sys.executable, *argv[1:], "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert unit("accessctl-worker.service")["KillMode"] == ["mixed"]  # pool children end through their exit hooks


# --------------------------------------------------------------------------- readiness


class _NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(self, timeout: float) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> _NotifySocket:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="notify-"))  # short: a unix socket path has ~100 bytes
    listening = _NotifySocket(folder / "n.sock")
    yield listening
    listening.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_systemd_notify_sends_the_state_and_does_nothing_outside_systemd(notify_socket, monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path))
    assert systemd_notify("READY=1") is True
    assert notify_socket.receive(5) == "READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_socket.path) + ".gone")
    assert systemd_notify("STOPPING=1") is False  # logged, never raised


@pytest.mark.django_db(transaction=True)
def test_the_bridge_and_the_worker_tell_systemd_they_are_ready(notify_socket, test_env, tmp_path: Path) -> None:
    env = {**test_env, "NOTIFY_SOCKET": str(notify_socket.path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    with e2e.child_process(e2e.bridge_argv(), env, "bridge connected", tmp_path / "bridge.log"):
        assert notify_socket.receive(30) == "READY=1"
    with e2e.child_process(e2e.worker_argv(name="notify"), env, "ready.", tmp_path / "worker.log"):
        assert notify_socket.receive(30) == "READY=1"


def test_http_wait_returns_once_the_server_answers_and_gives_up_at_the_timeout() -> None:
    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert http_wait(f"http://127.0.0.1:{port}/healthz", timeout_s=10)
        assert not http_wait(f"http://127.0.0.1:{port}/readyz", timeout_s=1, every_s=0.2)  # 503 is not ready
    finally:
        server.shutdown()
    result = subprocess.run(
        [sys.executable, "-m", "accessctl.project.http_wait", f"http://127.0.0.1:{port}/healthz", "--timeout", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 1 and "did not answer" in result.stderr
