"""Sign-in lockout with django-axes: failed attempts counted per username and per client address.

Decision (issue 15): the maintained library replaces the hand-written cache counters this module
held. django-axes hooks into Django's ``authenticate()`` (a backend refuses locked-out attempts
before any password is checked, a signal counts failures), so every password sign-in is covered —
the site's login page, the admin's, and any added later — without a view having to remember it.
It brings the admin views (attempts, successful sign-ins; unlock by deleting an attempt), the
``axes_reset*`` management commands and its own logging. The API takes no passwords (bearer tokens
and sessions only), so it has nothing to throttle.

What this module adds to the library, through its documented hooks (``settings.AXES_*``):

- ``login_username``: the key is the username as Django authenticates it: stripped and NFKC
  normalised like ``AuthenticationForm``/``AbstractBaseUser.normalize_username`` (``ｐlain`` signs
  in as ``plain``, so it counts as ``plain``). Usernames of Django's user model are case-sensitive
  (``PLAIN`` is another account), so case is kept.
- ``LoginLockoutHandler``: two limits instead of the library's one: ``LOGIN_FAILURES_PER_USER``
  for a username (from any address: a guesser may rotate them) and the higher
  ``LOGIN_FAILURES_PER_IP`` for an address (offices share addresses). A successful sign-in clears
  that username's failures only, never the address's (one valid account must not reset the
  counter of an address that is guessing others).
- ``login_lockout_response``: the sign-in page again, with the lockout message, HTTP 429.

Locked out means refused without checking the password, also the right one, until
``AXES_COOLOFF_TIME`` after the failure that locked; refused attempts do not extend it. Failures
live in the database (``axes_accessattempt``), shared by every web process.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import Any

from axes.attempts import get_cool_off_threshold
from axes.handlers.database import AxesDatabaseHandler
from axes.helpers import get_client_username
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.db.models import Q, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

logger = logging.getLogger(__name__)


def locked_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return f"Too many failed sign-in attempts. Please wait {minutes} minutes before trying again."


def client_ip(request: HttpRequest) -> str | None:
    """The peer address (``AXES_CLIENT_IP_CALLABLE``). Behind a proxy, the ASGI server must be told to
    trust its forwarded header; a header the client sets itself is never trusted here."""
    return request.META.get("REMOTE_ADDR") or None


def login_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """The username an attempt is counted under (``AXES_USERNAME_CALLABLE``): as Django authenticates it."""
    field = settings.AXES_USERNAME_FORM_FIELD
    raw = credentials.get(field) if credentials else getattr(request, "POST", {}).get(field)
    if raw is None:
        return None
    return unicodedata.normalize("NFKC", str(raw)).strip()[:255] or None


class LoginLockoutHandler(AxesDatabaseHandler):
    """Axes' database handler with separate limits per username and per client address."""

    def _failures(self, request: HttpRequest, credentials: dict[str, Any] | None) -> tuple[int, int]:
        username = get_client_username(request, credentials)
        attempts = AccessAttempt.objects.filter(attempt_time__gte=get_cool_off_threshold(request))
        sums = {"by_ip": Sum("failures_since_start", filter=Q(ip_address=request.axes_ip_address))}
        if username:
            sums["by_user"] = Sum("failures_since_start", filter=Q(username=username))
        totals = attempts.aggregate(**sums)
        return totals.get("by_user") or 0, totals["by_ip"] or 0

    def get_failures(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        # Axes compares one number with AXES_FAILURE_LIMIT (the per-username limit): the address's
        # count is reported on that scale, so it locks exactly at LOGIN_FAILURES_PER_IP.
        by_user, by_ip = self._failures(request, credentials)
        per_user, per_ip = settings.AXES_FAILURE_LIMIT, settings.LOGIN_FAILURES_PER_IP
        return max(by_user, by_ip * per_user // per_ip)

    def reset_user_attempts(self, request: HttpRequest, credentials: dict[str, Any] | None = None) -> int:
        """After a successful sign-in: forget that username's failures, not the address's others."""
        username = get_client_username(request, credentials)
        if not username:
            return 0
        count, _ = AccessAttempt.objects.filter(username=username).delete()
        return count


def login_lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the sign-in page with the lockout message (429); the form is not bound."""
    username = get_client_username(request, credentials)
    logger.warning("sign-in locked for user %r from %s", username, getattr(request, "axes_ip_address", None))
    context = {
        "form": AuthenticationForm(request),
        "locked_message": locked_message(),
        "next": request.POST.get("next", "") if request.method == "POST" else request.GET.get("next", ""),
    }
    return render(request, "registration/login.html", context, status=429)
