"""Sign-in rate limiting: failed attempts counted per username and per client IP in the Django cache.

After ``MAX_FAILURES_PER_USER`` failures for a username, or ``MAX_FAILURES_PER_IP`` from one address
(higher: offices share addresses), within ``WINDOW_S``, further attempts are refused without checking
the password until the window has passed; every failure and every refused attempt is logged
(username, client IP). The cache is Redis-backed (``CACHES``), so the counters are shared by all
web processes. A successful sign-in clears that username's counter, not
the IP's: one valid account must not reset the counter of an address that is guessing others.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from django.contrib import messages
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_IP = 20
WINDOW_S = 15 * 60
LOCKED_MESSAGE = "Too many failed sign-in attempts. Please wait 15 minutes before trying again."


def client_ip(request: HttpRequest) -> str:
    """The peer address. Behind a proxy, the ASGI server must be told to trust its forwarded header."""
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _limits(*, username: str, ip: str) -> dict[str, int]:
    """Cache key -> lockout threshold, for the username and the client address."""
    user_digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return {f"login-fail:user:{user_digest}": MAX_FAILURES_PER_USER, f"login-fail:ip:{ip}": MAX_FAILURES_PER_IP}


def login_blocked(*, username: str, ip: str) -> bool:
    """Whether sign-in attempts for ``username`` or from ``ip`` are locked out right now."""
    limits = _limits(username=username, ip=ip)
    counts = cache.get_many(list(limits))
    return any(int(count) >= limits[key] for key, count in counts.items())


def login_failure_record(*, username: str, ip: str) -> bool:
    """Count one failed attempt for the username and the address; returns whether that locks sign-in."""
    locked = False
    for key, limit in _limits(username=username, ip=ip).items():
        cache.add(key, 0, timeout=WINDOW_S)  # the window starts at the first failure
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=WINDOW_S)
            count = 1
        locked = locked or count >= limit
    logger.warning("failed sign-in for user %r from %s", username[:150], ip)
    if locked:
        logger.warning("sign-in locked for user %r / address %s for %ds", username[:150], ip, WINDOW_S)
    return locked


def login_success_clear(*, username: str, ip: str) -> None:
    cache.delete(next(iter(_limits(username=username, ip=ip))))


class ThrottledLoginView(LoginView):
    """Django's LoginView with per-username and per-IP lockout after repeated failures."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = str(request.POST.get("username", ""))[:150]
        ip = client_ip(request)
        if login_blocked(username=username, ip=ip):
            logger.warning("sign-in refused (locked out) for user %r from %s", username, ip)
            messages.error(request, LOCKED_MESSAGE)
            form = self.form_class(request)  # unbound: the password was not checked
            return self.render_to_response(self.get_context_data(form=form), status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        login_failure_record(username=str(form.data.get("username", ""))[:150], ip=client_ip(self.request))
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        login_success_clear(username=form.get_user().get_username(), ip=client_ip(self.request))
        return super().form_valid(form)
