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
