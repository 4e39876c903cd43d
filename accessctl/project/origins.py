"""Which browser origins may open the dashboard websocket: exactly the site's own, as Django's CSRF check.

A websocket handshake carries the browser's cookies whatever page started it, so the ``Origin`` header
is the only thing that tells the dashboard's own page from another site's script (another port on
the same host is another site). Accepted: the origin of the request itself (``http[s]://`` + its
``Host``, which must be in ``ALLOWED_HOSTS``; https when served over TLS or behind a proxy that says
so through ``SECURE_PROXY_SSL_HEADER``) and the origins in ``CSRF_TRUSTED_ORIGINS`` (the same
``https://*.example.com`` wildcards Django accepts for POSTs). A handshake without an ``Origin`` is
refused: browsers always send one, and nothing but a browser needs this socket.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # as HttpRequest.get_host()
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def origin_is_trusted(
    *, origin: str | None, host: str | None, secure: bool, trusted_origins: Iterable[str] | None = None
) -> bool:
    """Whether a handshake from ``origin`` to the site served as ``host`` (over TLS if ``secure``) is the site's own."""
    if not origin:
        return False
    origin = origin.strip().lower()
    if host:
        host = host.strip().lower()
        domain, _port = split_domain_port(host)
        if domain and validate_host(domain, _allowed_hosts()) and origin == f"{'https' if secure else 'http'}://{host}":
            return True
    trusted = [t.lower() for t in (settings.CSRF_TRUSTED_ORIGINS if trusted_origins is None else trusted_origins)]
    if origin in {t for t in trusted if "*" not in t}:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(
        parsed.scheme == pattern.scheme and is_same_domain(parsed.netloc, pattern.netloc.lstrip("*"))
        for pattern in (urlsplit(t) for t in trusted if "*" in t)
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin1")
    return None


def scope_is_secure(scope: Scope) -> bool:
    """As ``HttpRequest.is_secure()``: the proxy's header when one is configured and present, else the scheme."""
    proxy_header = settings.SECURE_PROXY_SSL_HEADER  # Django's own default: None
    if proxy_header:
        meta_name, expected = proxy_header
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        value = _header(scope, name)
        if value is not None:
            return value.split(",", 1)[0].strip() == expected
    return scope.get("scheme") in ("wss", "https")


class SiteOriginValidator:
    """ASGI middleware: websocket handshakes from any origin but the site's own are refused (HTTP 403)."""

    def __init__(self, application: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        if origin_is_trusted(origin=origin, host=host, secure=scope_is_secure(scope)):
            return await self.application(scope, receive, send)
        logger.warning("websocket refused: origin %r is not the site's (host %r)", origin, host)
        return await WebsocketDenier()(scope, receive, send)
