"""Request bodies over the limit are refused with 413 before they are read.

Two layers, one limit (:func:`request_body_limit`: ``settings.MAX_REQUEST_BYTES``, or
``MAX_IMPORT_REQUEST_BYTES`` under ``IMPORT_REQUEST_PATH_PREFIX`` where the enrolment pages upload
zip archives and batches of photos):

* :class:`RequestBodyLimitMiddleware`, the outermost ASGI layer of ``accessctl.project.asgi.application``:
  a declared ``Content-Length`` over the limit is answered 413 without reading the body; a body
  without one (chunked) is counted while it streams and cut off (413) at the limit, before Django
  spools it. This holds under any ASGI server.
* daphne (Twisted) reads a whole request body into a temporary file before it calls the
  application. :func:`daphne_body_limit_install` (run by ``python -m accessctl.project.web_server``, the
  web process of ``manage.py up``) makes it answer 413 as soon as the headers declare too much, and
  stop storing a chunked body at the limit; the rest of such a body is read and discarded (so the
  client sees the answer instead of a reset), then the connection is closed. It also stops
  Twisted from parsing multipart bodies itself (a bare 400 for a form without fields, issue 16).

Errors are ``{"error": {"code": "too_large", "message": ...}}`` under ``/api/``, ``{"error": ...}``
for other callers asking for JSON and plain text otherwise. Each refusal is logged (warning, with
the client address, path and size).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: How long a refused connection may keep sending (discarded) before it is closed.
DISCARD_TIMEOUT_S = 10.0


def request_body_limit(*, path: str) -> int:
    """Largest request body (bytes) accepted for ``path``."""
    if path.startswith(settings.IMPORT_REQUEST_PATH_PREFIX):
        return int(settings.MAX_IMPORT_REQUEST_BYTES)
    return int(settings.MAX_REQUEST_BYTES)


def refusal_response(*, path: str, accept: str, limit: int) -> tuple[str, bytes]:
    """``(content type, body)`` of the 413 answer for ``path``."""
    message = f"The request body is too large (at most {limit} bytes)."
    if path.startswith("/api/"):
        body = {"error": {"code": "too_large", "message": message}}
    elif "application/json" in accept:
        body = {"error": message}
    else:
        return "text/plain; charset=utf-8", message.encode()
    return "application/json", json.dumps(body).encode()


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class RequestBodyLimitMiddleware:
    """ASGI middleware: 413 for bodies over :func:`request_body_limit` (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = request_body_limit(path=path)
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size < 0:
                await self._answer(scope, send, 400, "text/plain; charset=utf-8", b"Invalid Content-Length.")
                return
            if size > limit:
                await self._refuse(scope, send, limit, size)
                return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    await self._refuse(scope, send, limit, received)
                    # The application sees a client that went away: Django stops reading and answers nothing.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, scope: Scope, send: Send, limit: int, size: int) -> None:
        client = scope.get("client") or ("?", 0)
        logger.warning(
            "request body refused: %s %s from %s: %d bytes over the limit of %d",
            scope.get("method"), scope.get("path"), client[0], size, limit,
        )  # fmt: skip
        accept = (_header(scope, b"accept") or b"").decode("latin-1")
        content_type, body = refusal_response(path=scope.get("path", ""), accept=accept, limit=limit)
        await self._answer(scope, send, 413, content_type, body)

    @staticmethod
    async def _answer(scope: Scope, send: Send, status: int, content_type: str, body: bytes) -> None:
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


# --- daphne ------------------------------------------------------------------------------------


def daphne_body_limit_install() -> None:
    """Make daphne's requests refuse oversized bodies at the headers (idempotent)."""
    from daphne import http_protocol

    base = http_protocol.WebRequest
    if getattr(base, "body_limit_installed", False):
        return

    class BodyLimitedWebRequest(base):  # type: ignore[misc, valid-type]
        body_limit_installed = True
        _body_refused = False
        _body_limit = 0
        _body_stored = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # daphne hands the raw body to the application and never reads ``request.args``: without
            # this, Twisted parses every multipart body in memory a second time, and answers a bare
            # 400 before the application for one it cannot parse (a browser's empty FormData).
            self._parsePOSTFormSubmission = False

        def _target(self) -> tuple[str, str]:
            raw = getattr(self.channel, "_path", b"/") or b"/"
            path = urllib.parse.unquote(raw.split(b"?", 1)[0].decode("ascii", "replace"))
            accept = (self.requestHeaders.getRawHeaders(b"accept") or [b""])[0].decode("latin-1")
            return path, accept

        def _refuse_body(self, size: int) -> None:
            import io

            self._body_refused = True
            self.content = io.BytesIO()
            # No "100 Continue" after this answer: the client should not send the body at all.
            self.requestHeaders.removeHeader(b"expect")
            path, accept = self._target()
            content_type, body = refusal_response(path=path, accept=accept, limit=self._body_limit)
            logger.warning(
                "request body refused: %s from %s: %d bytes over the limit of %d",
                path, getattr(self.client, "host", "?"), size, self._body_limit,
            )  # fmt: skip
            self.channel.transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nContent-Type: " + content_type.encode()
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            from twisted.internet import reactor  # daphne's (asyncio) reactor, installed by now

            channel = self.channel
            reactor.callLater(DISCARD_TIMEOUT_S, lambda: channel.transport and channel.transport.loseConnection())

        def gotLength(self, length: int | None) -> None:
            self._body_limit = request_body_limit(path=self._target()[0])
            if length is not None and length > self._body_limit:
                self._refuse_body(length)
                return
            super().gotLength(length)

        def handleContentChunk(self, data: bytes) -> None:
            if self._body_refused:
                return  # read and discarded
            self._body_stored += len(data)
            if self._body_stored > self._body_limit:
                self._refuse_body(self._body_stored)
                return
            super().handleContentChunk(data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self._body_refused:
                self.channel.loseConnection()  # answered already
                return
            super().requestReceived(command, path, version)

    http_protocol.WebRequest = BodyLimitedWebRequest
