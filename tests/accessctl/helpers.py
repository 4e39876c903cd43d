"""Small factories shared by the dashboard, door, alarm and audit tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent

PASSWORD = "correct-horse-battery-9"


def user_create(username: str, *perms: str, **fields: Any) -> Any:
    """A user with the given ``app_label.codename`` permissions (fresh instance: no stale perm cache)."""
    model = get_user_model()
    user = model.objects.create_user(username, password=PASSWORD, **fields)
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return model.objects.get(pk=user.pk)


def event_make(**overrides: Any) -> AccessEvent:
    fields: dict[str, Any] = {
        "detection_id": None,
        "occurred_at": dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC),
        "decision": Decision.DENY,
        "reason": Reason.UNKNOWN_FACE,
        "device_uid": "cam-1",
    }
    fields.update(overrides)
    event, _ = event_record(**fields)
    return event


def superuser_execute(
    statement: str, params: list[Any] | None = None, *, replica: bool = False
) -> list[tuple[Any, ...]]:
    """Run ``statement`` on the test database as the embedded cluster's superuser (an attacker with
    every database right; ``replica``: with triggers off); committed at once, so the test must be
    transactional to see it."""
    import psycopg
    from django.db import connection

    settings = connection.settings_dict
    with psycopg.connect(host=settings["HOST"], user="postgres", dbname=settings["NAME"], autocommit=True) as conn:
        if replica:
            conn.execute("SET session_replication_role = replica")
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def owner_execute(statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Run ``statement`` as the schema owner role (what ``migrate`` uses); committed at once."""
    from accessctl.project.dbroles import owner_connection

    owner = owner_connection()
    try:
        with owner.cursor() as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall() if cursor.description else []
    finally:
        owner.close()
