"""Reads for the dashboard and the audit browser, scoped to the requesting user (fail closed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.models import Q, QuerySet

from accessctl.models import AccessEvent, Alarm, Door, Person

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    User = AbstractBaseUser | AnonymousUser

AUDIT_PERMISSION = "accessctl.view_accessevent"
DASHBOARD_PERMISSION = "accessctl.view_dashboard"


def _may(user: User, permission: str) -> bool:
    return bool(user.is_authenticated and user.is_active and user.has_perm(permission))


def may_browse_audit(user: User) -> bool:
    return _may(user, AUDIT_PERMISSION)


def may_watch_dashboard(user: User) -> bool:
    return _may(user, DASHBOARD_PERMISSION)


def dashboard_watcher_get(*, session_key: str | None) -> AbstractBaseUser | None:
    """The user signed in with ``session_key`` if they may watch the dashboard right now; else None.

    Read afresh from the session store and the database on every call, the way Django authenticates
    a request: a signed-out (flushed) or expired session, a changed password, a deactivated or
    deleted user and a lost ``view_dashboard`` permission (also through a group) all answer None.
    """
    if not session_key:
        return None
    from importlib import import_module
    from types import SimpleNamespace

    from django.conf import settings
    from django.contrib.auth import get_user

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    user = get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]
    return user if may_watch_dashboard(user) else None  # type: ignore[return-value]


@dataclass(frozen=True)
class EventFilter:
    """Audit browser criteria; ``None`` or empty means no restriction."""

    since: datetime | None = None
    until: datetime | None = None
    door: Door | None = None
    person: Person | None = None
    person_query: str = ""
    decision: str = ""
    reasons: tuple[str, ...] = field(default_factory=tuple)


def event_list(*, user: User, filters: EventFilter | None = None) -> QuerySet[AccessEvent]:
    """Access events the user may read, newest first, with door, person and device selected.

    Audit readers (``view_accessevent``) see everything; dashboard watchers see what the live feed
    shows anyway; anyone else sees nothing.
    """
    if not (may_browse_audit(user) or may_watch_dashboard(user)):
        return AccessEvent.objects.none()
    queryset = AccessEvent.objects.select_related("door", "person", "actor").order_by("-occurred_at", "-id")
    f = filters or EventFilter()
    if f.since is not None:
        queryset = queryset.filter(occurred_at__gte=f.since)
    if f.until is not None:
        queryset = queryset.filter(occurred_at__lt=f.until)
    if f.door is not None:
        queryset = queryset.filter(door=f.door)
    if f.person is not None:
        queryset = queryset.filter(Q(person=f.person) | Q(subject_uid=f.person.uid))
    if f.person_query:
        queryset = queryset.filter(
            Q(person__name__icontains=f.person_query) | Q(person__external_id__iexact=f.person_query)
        )
    if f.decision:
        queryset = queryset.filter(decision=f.decision)
    if f.reasons:
        queryset = queryset.filter(reason__in=f.reasons)
    return queryset


#: Adds to a door queryset what the dashboard tiles show of each door's devices (``door.devices``);
#: the devices app registers it at startup (:func:`door_devices_register`).
DoorDevices = Callable[[QuerySet[Door]], QuerySet[Door]]
_door_devices: DoorDevices | None = None


def door_devices_register(prefetch: DoorDevices | None) -> None:
    global _door_devices
    _door_devices = prefetch


#: What the dashboard tiles show of recognition health at each door (``door.recognition_health``:
#: door id -> one summary per model version); the recognition app registers it at startup.
DoorRecognitionHealth = Callable[[list[int]], dict[int, list[dict[str, Any]]]]
_door_recognition_health: DoorRecognitionHealth | None = None


def door_recognition_health_register(provider: DoorRecognitionHealth | None) -> None:
    global _door_recognition_health
    _door_recognition_health = provider


def door_list_with_devices(*, user: User) -> list[Door]:
    """Doors with their (non-disabled) devices prefetched and their recognition health, for the
    dashboard tiles."""
    if not may_watch_dashboard(user):
        return []
    doors = Door.objects.order_by("name")
    doors = list(_door_devices(doors) if _door_devices is not None else doors)
    health = _door_recognition_health([d.pk for d in doors]) if _door_recognition_health and doors else {}
    for door in doors:
        door.recognition_health = health.get(door.pk, [])  # type: ignore[attr-defined]
    return doors


def alarm_open_list(*, user: User, limit: int = 50) -> list[Alarm]:
    """Unacknowledged alarms, newest first."""
    if not may_watch_dashboard(user):
        return []
    return list(Alarm.objects.filter(acknowledged_at__isnull=True).select_related("door").order_by("-id")[:limit])


def person_get(*, user: User, person_id: int) -> Person | None:
    if not may_browse_audit(user):
        return None
    return Person.objects.filter(pk=person_id).first()


def event_get(*, user: User, event_id: int) -> AccessEvent | None:
    return event_list(user=user).filter(pk=event_id).first()
