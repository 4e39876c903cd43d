"""manage.py db_provision: the owner and application roles and the database on a real PostgreSQL server.

Run against the test session's PostgreSQL as its superuser (``postgres`` over the unix socket).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.core.management import CommandError, call_command
from psycopg import sql

from accessctl.project.db_provision import Login, database_provision


@pytest.fixture
def admin_url(settings) -> str:
    db = settings.DATABASES["default"]
    if not settings.EMBEDDED_POSTGRES:
        pytest.skip("runs as the embedded cluster's superuser")
    return f"postgresql://postgres@/postgres?host={db['HOST']}"


@pytest.fixture
def names(admin_url: str) -> Iterator[tuple[str, str, str]]:
    run = uuid.uuid4().hex[:8]
    database, owner, app = f"prov_{run}", f"prov_{run}_owner", f"prov_{run}_app"
    yield database, owner, app
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        for role in (app, owner):
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _facts(admin_url: str, database: str, owner: str, app: str) -> dict[str, object]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        roles = {
            name: (login, superuser or createdb or createrole or replication or bypassrls, password)
            for name, login, superuser, createdb, createrole, replication, bypassrls, password in conn.execute(
                "SELECT rolname, rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
                "rolpassword FROM pg_authid WHERE rolname IN (%s, %s)",
                [owner, app],
            )
        }
        db_owner, public_connect, app_connect = conn.execute(
            "SELECT pg_get_userbyid(datdba), has_database_privilege('public', datname, 'CONNECT'), "
            "has_database_privilege(%s, datname, 'CONNECT') FROM pg_database WHERE datname = %s",
            [app, database],
        ).fetchone()
    with psycopg.connect(admin_url.replace("/postgres?", f"/{database}?"), autocommit=True) as conn:
        vector = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is not None
        schema_owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'"
        ).fetchone()[0]
    return {"roles": roles, "db_owner": db_owner, "public_connect": public_connect, "app_connect": app_connect,
            "vector": vector, "schema_owner": schema_owner}  # fmt: skip


def test_provision_creates_two_plain_roles_and_the_database_with_pgvector(admin_url, names) -> None:
    database, owner, app = names
    database_provision(admin_url, database=database, owner=Login(owner, "owner-pw-1"), app=Login(app, "app-pw-1"))
    facts = _facts(admin_url, database, owner, app)
    assert set(facts["roles"]) == {owner, app}
    for login, special, password in facts["roles"].values():  # type: ignore[union-attr]
        assert login and not special and str(password).startswith("SCRAM-SHA-256$")
    assert facts["db_owner"] == owner and facts["schema_owner"] == owner and facts["vector"]
    assert facts["app_connect"] and not facts["public_connect"]

    before = facts["roles"][app][2]  # type: ignore[index]
    database_provision(admin_url, database=database, owner=Login(owner, "owner-pw-1"), app=Login(app, "app-pw-2"))
    assert _facts(admin_url, database, owner, app)["roles"][app][2] != before  # type: ignore[index]  # a new password


def test_provision_refuses_one_role_for_both(admin_url, names) -> None:
    database, owner, _ = names
    with pytest.raises(ValueError, match="two roles"):
        database_provision(admin_url, database=database, owner=Login(owner, "x"), app=Login(owner, "x"))


def test_command_needs_the_two_urls_and_an_admin(settings, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_ADMIN_URL", raising=False)
    with pytest.raises(CommandError, match="--admin-url"):
        call_command("db_provision")
    with pytest.raises(CommandError, match="DATABASE_OWNER_URL"):  # the embedded cluster: `up` does this
        call_command("db_provision", "--admin-url", "postgresql://postgres@/postgres")
