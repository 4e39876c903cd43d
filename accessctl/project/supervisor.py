"""Run the whole system on one machine: embedded services plus the web, worker, beat and bridge processes.

Used by ``manage.py up``. Children's output is prefixed with their name; a child that dies is
restarted with backoff (logged as an error, unless it exited cleanly with code 0); Ctrl-C (SIGINT)
or SIGTERM stops everything cleanly, children first.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings

from accessctl.project import embedded

logger = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    _pump: threading.Thread | None = field(default=None, repr=False)

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            self.argv, env={**env, **self.env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started_at = time.monotonic()
        self._pump = threading.Thread(target=self._forward_output, daemon=True)
        self._pump.start()
        logger.info("started %s (pid %s)", self.name, self.process.pid)

    def _forward_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            sys.stdout.write(f"{self.name:>7} | {raw.decode(errors='replace')}")
            sys.stdout.flush()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0fs; killing it", self.name, timeout)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class EmbeddedServices:
    postgres: embedded.EmbeddedPostgres | None = None
    children: list[embedded.ChildService] = field(default_factory=list)

    def stop(self) -> None:
        for service in reversed(self.children):
            service.stop()


def _port_of(url: str) -> int:
    port = urlparse(url).port
    if port is None:
        raise ValueError(f"no port in {url!r}")
    return port


def services_start() -> EmbeddedServices:
    """Start the embedded services the settings ask for (those without a real-service URL)."""
    services = EmbeddedServices()
    var = Path(settings.VAR_DIR)
    if settings.EMBEDDED_POSTGRES:
        services.postgres = embedded.start_postgres(
            settings.EMBEDDED_PGDATA, shared_buffers=settings.EMBEDDED_PG_SHARED_BUFFERS
        )
        services.postgres.ensure_database(settings.DATABASES["default"]["NAME"])
        if not settings.EMBEDDED_PG_SHARED_BUFFERS:  # sized from the gallery, not the host
            size = embedded.gallery_shared_buffers(services.postgres, database=settings.DATABASES["default"]["NAME"])
            embedded.postgres_shared_buffers(services.postgres, size)
    try:  # a service that cannot start (its port taken, say) stops those already started
        if settings.EMBEDDED_VALKEY:
            password = embedded.secret_file_ensure(settings.EMBEDDED_VALKEY_PASSWORD_FILE)
            services.children.append(
                embedded.start_valkey(var / "valkey", password=password, port=settings.EMBEDDED_VALKEY_PORT)
            )
        if settings.EMBEDDED_MQTT:
            services.children.append(
                embedded.start_mqtt_broker(
                    var / "mqtt", port=_port_of(settings.MQTT_URL), auth_dir=settings.MQTT_AUTH_DIR
                )
            )
    except BaseException:
        services.stop()
        raise
    return services


def admin_ensure() -> None:
    """Create the first administrator when there is none; its password goes to a 0600 file."""
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    if user_model.objects.filter(is_superuser=True).exists():
        return
    password = settings.ADMIN_INITIAL_PASSWORD or secrets.token_urlsafe(12)
    user_model.objects.create_superuser("admin", "", password)
    path = Path(settings.VAR_DIR) / "admin-password.txt"
    path.write_text(password + "\n")
    path.chmod(0o600)
    logger.info("created administrator 'admin'; password in %s", path)


def gallery_worker_env() -> dict[str, str]:
    """The gallery worker's own settings: few compute threads (it also lowers its CPU priority, see
    ``recognition.tasks``), so a build leaves the cores to the decisions."""
    threads = str(settings.RECOGNITION_GALLERY_WORKER_THREADS)
    return {"ACCESSCTL_TORCH_THREADS": threads, "ACCESSCTL_ORT_THREADS": threads}


def _celery_worker(queues: str, concurrency: int, name: str) -> list[str]:
    """The command line of a Celery worker taking ``queues`` one task at a time per process."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "accessctl.project",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "-l",
        "INFO",
        "-n",
        f"{name}@%h",
    ]


def default_children(host: str, port: int, with_beat: bool = True) -> list[Child]:
    python = sys.executable
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    children = [
        Child(
            "web",
            [
                python,
                "-m",
                "accessctl.project.web_server",
                "-b",
                host,
                "-p",
                str(port),
                "accessctl.project.asgi:application",
            ],
        ),
        Child("worker", _celery_worker(f"{settings.RECOGNITION_QUEUE},default", settings.WORKER_CONCURRENCY, "worker")),
        # Shadow decisions of a candidate model (recognition/shadow.py): their own queue and one
        # process at a lower CPU priority (recognition.tasks lowers it, as for the gallery worker),
        # so they never take a decision's slot; it loads the shadow version's model at its first
        # shadow decision.
        Child("shadow-worker", _celery_worker(settings.RECOGNITION_SHADOW_QUEUE, 1, "shadow")),
        # Gallery builds (promoting a model version) on a worker of their own, one process: a
        # re-embedding batch never holds a pool slot the door decisions need.
        Child("gallery-worker", _celery_worker(settings.GALLERY_QUEUE, 1, "gallery"), env=gallery_worker_env()),
        Child("bridge", [python, manage, "mqtt_bridge"]),
    ]
    if with_beat:
        schedule = str(Path(settings.VAR_DIR) / "celerybeat-schedule")
        children.append(
            Child("beat", [python, "-m", "celery", "-A", "accessctl.project", "beat", "-l", "INFO", "-s", schedule])
        )
    return children


def readiness_announce(url: str, stop: threading.Event, *, timeout_s: float = 300.0, every_s: float = 1.0) -> bool:
    """Run the ``/readyz`` checks in this process until they all pass, then log that the site at
    ``url`` is ready; True then. After ``timeout_s`` (or once ``stop`` is set) log what still fails
    and give up (the site keeps running: /readyz tells the rest). Meant for a daemon thread."""
    from django.db import connection

    from accessctl.project.readiness import readiness_check

    started = time.monotonic()
    failing: list[str] = []
    try:
        while not stop.is_set():
            failing = [r.name for r in readiness_check() if not r.ok]
            if not failing:
                logger.info("accessctl is ready on %s (%.0f s after start; GET /readyz says so too)", url,
                            time.monotonic() - started)  # fmt: skip
                return True
            if time.monotonic() - started > timeout_s:
                break
            stop.wait(every_s)
    finally:
        connection.close()
    if not stop.is_set():
        logger.warning("accessctl is not ready after %.0f s; failing: %s (see GET /readyz)", timeout_s,
                       ", ".join(failing))  # fmt: skip
    return False


class Supervisor:
    """Keeps the children running until asked to stop."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._stopping = threading.Event()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    @property
    def stopping(self) -> threading.Event:
        """Set once the supervisor is asked to stop."""
        return self._stopping

    def request_stop(self, *_: object) -> None:
        self._stopping.set()

    def run(self) -> None:
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGTERM, self.request_stop)
        for child in self.children:
            child.start(self.env)
        while not self._stopping.wait(0.5):
            for child in self.children:
                self._watch(child)
        logger.info("stopping: %s", ", ".join(c.name for c in self.children))
        for child in reversed(self.children):
            child.stop()

    def _watch(self, child: Child) -> None:
        if child.process is None:
            if time.monotonic() >= child.next_start:
                child.start(self.env)
            return
        code = child.process.poll()
        if code is None:
            return
        uptime = time.monotonic() - child.started_at
        child.restarts = 0 if uptime > 60 else child.restarts + 1
        delay = min(30.0, 0.5 * 2**child.restarts)
        if code == 0:  # it finished its work: not a crash (the demo camera did, after its visitors)
            logger.info("%s finished (exit code 0); starting it again in %.1fs", child.name, delay)
        else:
            logger.error("%s exited with code %s; restarting in %.1fs", child.name, code, delay)
        child.process = None
        child.next_start = time.monotonic() + delay
