"""Database roles: who may do what to the schema, and the access log in particular.

Two login roles (see ``DATABASES`` in settings):

``owner`` (``accessctl_owner`` embedded, ``DATABASE_OWNER_URL`` otherwise)
    owns every table, the append-only trigger and the retention purge function; runs ``migrate``,
    ``flush`` and ``gallery_index``. Not used by the running application.
``default``, the application's role (``accessctl_app`` embedded, ``DATABASE_URL`` otherwise)
    reads and writes the ordinary tables. On the access log it may only ``SELECT`` and ``INSERT``,
    plus ``UPDATE`` of the three columns privacy needs (``person_id``, ``actor_id``, ``snapshot``;
    the trigger still allows only clearing them). No ``DELETE``, no ``TRUNCATE``, no trigger control
    (only an owner may alter the table), no ``session_replication_role`` (superuser only). Old
    events are purged by calling ``accessctl_events_purge`` (migration 0007), which checks the
    retention rules itself; the retention period it enforces is in ``accessctl_event_retention``,
    which only the owner writes (here, from ``ACCESSCTL_RETAIN_EVENTS_DAYS`` at each ``migrate``).

:func:`db_privileges_apply` runs after every ``migrate`` (``post_migrate``) on the owner's
connection, so tables added by later migrations are granted to the application as well.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import sql

logger = logging.getLogger(__name__)

OWNER_ALIAS = "owner"
EVENT_TABLE = "accessctl_accessevent"
RETENTION_TABLE = "accessctl_event_retention"
PURGE_FUNCTION = "accessctl_events_purge(bigint)"
# The columns privacy may clear on an access event (erasure, retention of crops, deleted users).
EVENT_CLEARABLE_COLUMNS = ("person_id", "actor_id", "snapshot")


def owner_alias(alias: str = DEFAULT_DB_ALIAS) -> str:
    """The alias that holds owner rights on ``alias``'s database (``alias`` itself when it is not the app's)."""
    return OWNER_ALIAS if alias == DEFAULT_DB_ALIAS and OWNER_ALIAS in settings.DATABASES else alias


def owner_connection(alias: str = DEFAULT_DB_ALIAS, *, as_alias: str | None = None) -> BaseDatabaseWrapper:
    """A new connection wrapper with owner rights on ``alias``'s (current, maybe test) database.

    Not the shared ``connections["owner"]`` (a test that declared only ``default`` may not use that
    one): a wrapper of its own, under an alias Django does not manage (or ``as_alias``, for code that
    looks its connection up by alias while the wrapper stands in for it); the caller closes it.
    """
    from django.db.utils import load_backend

    settings_dict = owner_settings(alias)
    return load_backend(settings_dict["ENGINE"]).DatabaseWrapper(
        settings_dict, as_alias or f"{owner_alias(alias)}-direct"
    )


def owner_settings(alias: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """Connection settings with owner rights on ``alias``'s (current, maybe test) database."""
    return {**connections[owner_alias(alias)].settings_dict, "NAME": connections[alias].settings_dict["NAME"]}


def app_role() -> str:
    """The role the application logs in as (the ``default`` database's user)."""
    return str(settings.DATABASES[DEFAULT_DB_ALIAS].get("USER") or "")


def _retention_days() -> int | None:
    days = int(settings.RETAIN_EVENTS_DAYS)
    return None if days < 0 else days


def db_retention_sync(*, using: str = OWNER_ALIAS) -> None:
    """Write the events' retention period (``ACCESSCTL_RETAIN_EVENTS_DAYS``) where the purge function reads it."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {RETENTION_TABLE} SET retain_days = %s, updated_at = now() WHERE id = 1 "
            "AND retain_days IS DISTINCT FROM %s",
            [_retention_days(), _retention_days()],
        )


def db_privileges_apply(*, using: str = OWNER_ALIAS) -> bool:
    """Grant the application's role what it may do (see the module doc); False when there is no
    separate application role to grant to (one role for everything: nothing is enforced)."""
    connection = connections[using]
    app = app_role()
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [app])
        current, exists = cursor.fetchone()
        if not app or app == current or not exists:
            logger.warning(
                "the application and the schema share the database role %s: the access log is not "
                "protected from the application (set DATABASE_OWNER_URL; see accessctl/project/dbroles.py)",
                current,
            )
            return False
        role = sql.Identifier(app)
        for statement in (
            "GRANT USAGE ON SCHEMA public TO {app}",
            "REVOKE CREATE ON SCHEMA public FROM {app}",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {app}",
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {app}",
            # The access log: read and append; clear the privacy columns; nothing else.
            f"REVOKE ALL ON {EVENT_TABLE} FROM PUBLIC, {{app}}",
            f"GRANT SELECT, INSERT ON {EVENT_TABLE} TO {{app}}",
            f"GRANT UPDATE ({', '.join(EVENT_CLEARABLE_COLUMNS)}) ON {EVENT_TABLE} TO {{app}}",
            f"REVOKE ALL ON {RETENTION_TABLE} FROM PUBLIC, {{app}}",
            f"GRANT SELECT ON {RETENTION_TABLE} TO {{app}}",
            f"REVOKE ALL ON FUNCTION {PURGE_FUNCTION} FROM PUBLIC",
            f"GRANT EXECUTE ON FUNCTION {PURGE_FUNCTION} TO {{app}}",
        ):
            cursor.execute(sql.SQL(statement).format(app=role))
    db_retention_sync(using=using)
    logger.info("database role %s: access log read/append only; schema owned by %s", app, current)
    return True


def post_migrate_privileges(*, using: str, **kwargs: Any) -> None:
    """``post_migrate`` receiver (connected once, for this app): grants after every ``migrate``."""
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s), to_regprocedure(%s)", [RETENTION_TABLE, PURGE_FUNCTION])
        table, function = cursor.fetchone()
    if table is None or function is None:  # migrated backwards past 0007
        return
    db_privileges_apply(using=using)


def db_roles_check(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """System check: warn loudly when the application also owns the schema (only DATABASE_URL set)."""
    from django.core.checks import Warning as CheckWarning

    if not settings.DATABASE_SINGLE_ROLE:
        return []
    return [
        CheckWarning(
            "DATABASE_URL is used for migrations too: the application's database role owns the schema, "
            "so it can rewrite or delete the access log.",
            hint="Create an owner role and an application role, set DATABASE_OWNER_URL "
            "(see accessctl/project/dbroles.py).",
            id="accessctl.W101",
        )
    ]
