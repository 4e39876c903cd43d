"""Thin HTML views for operators: the live dashboard, door actions, alarms and the audit browser.

Each view parses the request, calls one service or selector and renders; rules live in
``accessctl.doors``, ``accessctl.alarms`` and ``accessctl.selectors``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_not_required, permission_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accessctl import selectors
from accessctl.alarms import alarm_acknowledge
from accessctl.codes import Reason
from accessctl.doors import DoorActionError, door_lockdown, door_lockdown_lift, door_unlock
from accessctl.forms import EventFilterForm
from accessctl.models import AccessEvent, Alarm, Door
from accessctl.offline_marks import offline_mark, offline_mark_text
from accessctl.spreadsheet import csv_row_safe

logger = logging.getLogger(__name__)

FEED_SIZE = 30
AUDIT_PAGE_SIZE = 50
OPERATE = "accessctl.operate_doors"


def dashboard(request: HttpRequest) -> HttpResponse:
    """The live dashboard: rendered with the current state, then kept live over ``ws/dashboard/``."""
    user = request.user
    if not selectors.may_watch_dashboard(user):
        return render(request, "accessctl/dashboard_forbidden.html")
    context = {
        "doors": selectors.door_list_with_devices(user=user),
        "events": selectors.event_list(user=user)[:FEED_SIZE],
        "alarms": selectors.alarm_open_list(user=user),
        "can_operate": user.has_perm(OPERATE),
        "can_audit": selectors.may_browse_audit(user),
        "feed_size": FEED_SIZE,
        "labels": {
            "alarm": dict(Alarm.Kind.choices),
            "mode": dict(Door.Mode.choices),
            "reason": {r.value: r.value.replace("_", " ") for r in Reason},
        },
    }
    return render(request, "accessctl/dashboard.html", context)


@require_GET
def event_thumbnail(request: HttpRequest, pk: int) -> FileResponse:
    """The face crop of an event, for users who may see the event; never a public URL."""
    event = selectors.event_get(user=request.user, event_id=pk)
    if event is None or not event.snapshot:
        raise Http404("no snapshot")
    try:
        file = default_storage.open(event.snapshot, "rb")
    except (FileNotFoundError, OSError) as exc:
        raise Http404("snapshot expired") from exc
    response = FileResponse(file, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=3600"
    return response


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _action_reply(request: HttpRequest, message: str, *, ok: bool = True, status: int = 200) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"ok": ok, "message": message}, status=status)
    (messages.success if ok else messages.error)(request, message)
    return redirect("dashboard")


def _door_action(request: HttpRequest, action: Callable[[], Any], done: str) -> HttpResponse:
    try:
        action()
    except DoorActionError as exc:
        return _action_reply(request, exc.message, ok=False, status=409)
    return _action_reply(request, done)


@require_POST
@permission_required(OPERATE, raise_exception=True)
def door_unlock_view(request: HttpRequest, pk: int) -> HttpResponse:
    door = get_object_or_404(Door, pk=pk)
    return _door_action(request, lambda: door_unlock(door=door, actor=request.user), f"{door.name}: unlocked.")


@require_POST
@permission_required(OPERATE, raise_exception=True)
def door_lockdown_view(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    door = get_object_or_404(Door, pk=pk) if pk is not None else None
    done = f"{door.name}: locked down." if door else "All doors locked down."
    return _door_action(request, lambda: door_lockdown(door=door, actor=request.user), done)


@require_POST
@permission_required(OPERATE, raise_exception=True)
def door_lockdown_lift_view(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    door = get_object_or_404(Door, pk=pk) if pk is not None else None
    done = f"{door.name}: lockdown lifted." if door else "Lockdown lifted on all doors."
    return _door_action(request, lambda: door_lockdown_lift(door=door, actor=request.user), done)


@require_POST
def alarm_acknowledge_view(request: HttpRequest, pk: int) -> HttpResponse:
    if not selectors.may_watch_dashboard(request.user):
        raise PermissionDenied
    alarm = get_object_or_404(Alarm, pk=pk)
    alarm_acknowledge(alarm=alarm, actor=request.user)
    return _action_reply(request, f"Alarm acknowledged: {alarm.get_kind_display()}.")


def _audit_context(request: HttpRequest, *, person: Any = None) -> dict[str, Any]:
    if not selectors.may_browse_audit(request.user):
        raise PermissionDenied
    form = EventFilterForm(request.GET or None)
    events = selectors.event_list(user=request.user, filters=form.to_filter(person=person))
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    return {"form": form, "page": page, "events": page.object_list, "person": person}


@require_GET
def audit_list(request: HttpRequest) -> HttpResponse:
    """Search the access log by time range, door, person, decision and reason."""
    return render(request, "accessctl/audit_list.html", _audit_context(request))


@require_GET
def person_history(request: HttpRequest, pk: int) -> HttpResponse:
    """One person's access history (also events recorded under their pseudonym)."""
    person = selectors.person_get(user=request.user, person_id=pk)
    if person is None:
        if not selectors.may_browse_audit(request.user):
            raise PermissionDenied
        raise Http404("no such person")
    return render(request, "accessctl/person_history.html", _audit_context(request, person=person))


CSV_HEADER = [
    "id", "occurred_at", "recorded_at", "source", "door", "device_uid", "person", "person_external_id",
    "subject_uid", "actor", "decision", "reason", "similarity", "margin", "threshold", "model_version",
    "liveness_edge", "liveness_frames", "liveness_server", "liveness_threshold", "allowlist_version", "offline",
    "detection_id", "hash",
]  # fmt: skip


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _csv_row(e: AccessEvent) -> list[Any]:
    return [
        e.pk, e.occurred_at.isoformat(), e.recorded_at.isoformat(), e.source, e.door.name if e.door else "",
        e.device_uid, e.person.name if e.person else "", (e.person.external_id or "") if e.person else "",
        e.subject_uid or "", e.actor.get_username() if e.actor else "", e.decision, e.reason,
        "" if e.similarity is None else f"{e.similarity:.4f}", "" if e.margin is None else f"{e.margin:.4f}",
        "" if e.threshold is None else f"{e.threshold:.4f}", e.model_version,
        _score(e.liveness_edge), "" if e.liveness_frames is None else e.liveness_frames, _score(e.liveness_server),
        _score(e.liveness_threshold), "" if e.allowlist_version is None else e.allowlist_version,
        offline_mark_text(offline_mark(e)), e.detection_id, e.hash,
    ]  # fmt: skip


class _Echo:
    """A file-like object whose ``write`` returns the line, for ``csv.writer`` in a generator."""

    def write(self, value: str) -> str:
        return value


@require_GET
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    """The filtered log as CSV, streamed in chunks (never built in memory); formula-like cells are
    quoted (``accessctl.spreadsheet``)."""
    if not selectors.may_browse_audit(request.user):
        raise PermissionDenied
    form = EventFilterForm(request.GET or None)
    person = None
    if request.GET.get("person_id", "").isdigit():
        person = selectors.person_get(user=request.user, person_id=int(request.GET["person_id"]))
        if person is None:
            raise Http404("no such person")
    events = selectors.event_list(user=request.user, filters=form.to_filter(person=person))
    writer = csv.writer(_Echo())
    logger.info("audit export by user %s: %s", request.user.pk, request.GET.urlencode() or "all events")

    def rows() -> Iterator[str]:
        yield writer.writerow(CSV_HEADER)
        for event in events.iterator(chunk_size=2000):
            yield writer.writerow(csv_row_safe(_csv_row(event)))

    async def arows() -> AsyncIterator[str]:
        yield writer.writerow(CSV_HEADER)
        async for event in events.aiterator(chunk_size=2000):
            yield writer.writerow(csv_row_safe(_csv_row(event)))

    # Under ASGI a sync iterator would be consumed whole before sending; give each server its kind.
    content = arows() if isinstance(request, ASGIRequest) else rows()
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="access-events-{stamp}.csv"'
    return response


@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and the ``up`` command: reports database reachability only."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
