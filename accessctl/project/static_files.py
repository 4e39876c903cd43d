"""Static files as served by the ASGI app itself (``SERVE_STATIC``, the default without a proxy).

Django's ``ASGIStaticFilesHandler`` turns only ``Http404`` into a response: a path that climbs out
of the static folders (``/static/..%2f..%2faccessctl/project/settings.py``: the server decodes ``%2f``
before routing) raises ``SuspiciousFileOperation``: a 500. Here it is the 400 Django gives a
suspicious request elsewhere (logged on ``django.security``); nothing outside the static folders is
ever read.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.core.handlers.exception import response_for_exception
from django.http import HttpRequest, HttpResponse


class StaticFilesHandler(ASGIStaticFilesHandler):
    async def get_response_async(self, request: HttpRequest) -> HttpResponse:
        try:
            return await super().get_response_async(request)
        except SuspiciousOperation as exc:
            return await sync_to_async(response_for_exception, thread_sensitive=False)(request, exc)
