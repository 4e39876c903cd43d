"""``GET /metrics``: the Prometheus exposition, for a scraper with the token or on an allowed address.

Allowed: a request bearing ``Authorization: Bearer <ACCESSCTL_METRICS_TOKEN>`` (compared in
constant time), or one made directly from an address in ``ACCESSCTL_METRICS_ALLOW`` (CIDRs,
loopback by default). A request that carries proxy headers (``X-Forwarded-For``, ``Forwarded``,
``X-Real-IP``) came through a proxy on that address, not from it: it needs the token. Anything
else: 401 without credentials, 403 with wrong ones or from elsewhere (logged either way).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from enum import StrEnum

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from accessctl.metrics import metrics_exposition

logger = logging.getLogger(__name__)

#: Headers a reverse proxy adds: their presence means REMOTE_ADDR is the proxy's address.
PROXY_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


class Access(StrEnum):
    BEARER = "bearer"
    ADDRESS = "address"
    NO_CREDENTIALS = "no_credentials"  # 401
    WRONG_CREDENTIALS = "wrong_credentials"  # 403
    DENIED = "denied"  # 403


def _address_allowed(remote: str) -> bool:
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOW)


def metrics_access(request: HttpRequest) -> Access:
    """Whether ``request`` may read the metrics, and why (or why not)."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        expected = settings.METRICS_TOKEN
        if scheme.lower() == "bearer" and expected and hmac.compare_digest(token.strip().encode(), expected.encode()):
            return Access.BEARER
        return Access.WRONG_CREDENTIALS
    proxied = any(request.META.get(name) for name in PROXY_HEADERS)
    if not proxied and _address_allowed(request.META.get("REMOTE_ADDR", "")):
        return Access.ADDRESS
    return Access.NO_CREDENTIALS if settings.METRICS_TOKEN else Access.DENIED


@login_not_required
@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    access = metrics_access(request)
    if access in (Access.NO_CREDENTIALS, Access.WRONG_CREDENTIALS, Access.DENIED):
        logger.warning("metrics refused to %s: %s", request.META.get("REMOTE_ADDR", "?"), access)
        if access == Access.NO_CREDENTIALS:
            response = HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    body, content_type = metrics_exposition()
    return HttpResponse(body, content_type=content_type)
