"""Thin HTML views for operators."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from accessctl.models import AccessEvent, Door


def dashboard(request: HttpRequest) -> HttpResponse:
    """Landing page for a signed-in operator: doors and the latest events."""
    doors = Door.objects.all()
    events = AccessEvent.objects.select_related("door", "person")[:20]
    return render(request, "accessctl/dashboard.html", {"doors": doors, "events": events})


@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and the ``up`` command: reports database reachability only."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})
