"""Create the database and its two login roles on a real PostgreSQL server (not the embedded one).

What ``up`` does for the embedded cluster (``accessctl.project.embedded``), for a server run by the
operator: with a superuser's (or a role with CREATEROLE/CREATEDB's) connection, create or update

* the owner role (``DATABASE_OWNER_URL``'s user and password): owns the database and the schema,
  runs ``migrate``;
* the application role (``DATABASE_URL``'s user and password): what web, workers and bridges log
  in as; ``migrate`` then grants it what accessctl/project/dbroles.py allows (the access log: read
  and append only);
* the database, owned by the owner role, with the ``vector`` extension (pgvector must be installed
  on the server: creating an extension that is not trusted takes a superuser, hence here).

Both roles get ``NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS``. Idempotent: run it
again to change a password. No Django here (``manage.py db_provision`` is the adapter).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Login:
    role: str
    password: str


def login_role_ensure(conn: object, login: Login) -> None:
    """Create ``login.role`` if missing and (re)set its password and its lack of special rights."""
    import psycopg
    from psycopg import sql

    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [login.role]).fetchone()  # type: ignore[attr-defined]
    if not exists:
        with contextlib.suppress(psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(login.role)))  # type: ignore[attr-defined]
    conn.execute(  # type: ignore[attr-defined]
        sql.SQL("ALTER ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}").format(
            sql.Identifier(login.role), sql.Literal(login.password)
        )
    )


def database_provision(admin_url: str, *, database: str, owner: Login, app: Login) -> None:
    """Roles, database (owned by ``owner``) and the vector extension; ``admin_url`` is a superuser's."""
    import psycopg
    from psycopg import sql

    if owner.role == app.role:
        raise ValueError("the owner and the application must be two roles (see accessctl/project/dbroles.py)")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        login_role_ensure(conn, owner)
        login_role_ensure(conn, app)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner.role))
                )
            logger.info("created database %s owned by %s", database, owner.role)
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(owner.role))
        )
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(app.role))
        )
    parts = urlsplit(admin_url)
    with psycopg.connect(parts._replace(path=f"/{database}").geturl(), autocommit=True) as conn:
        with contextlib.suppress(psycopg.errors.UniqueViolation):  # created concurrently
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner.role)))
