"""The DRF exception handler that renders every API error the same way.

Services raise :class:`~accessctl.exceptions.DomainError` (or a subclass) with a stable ``code``; the
API answers ``{"error": {"code": ..., "message": ..., "details": ...}}`` with the error's HTTP status.
DRF's own errors (validation, authentication, permission, throttling, 404) use the same envelope, so
an integrator parses one shape.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db.models import ProtectedError, RestrictedError
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from accessctl.exceptions import DomainError


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _drf_code(exc: drf_exceptions.APIException) -> str:
    codes = exc.get_codes()
    if isinstance(codes, str):
        return codes
    if isinstance(exc, drf_exceptions.ValidationError):
        return "invalid"
    return exc.default_code


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF ``EXCEPTION_HANDLER``: domain errors, DRF errors and protected deletes in one envelope."""
    if isinstance(exc, DomainError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.http_status)
    if isinstance(exc, ProtectedError | RestrictedError):
        return Response(
            error_body("protected", "The object is still referenced and cannot be deleted."),
            status=status.HTTP_409_CONFLICT,
        )
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("too_large", str(exc) or "The request body is too large."), status=413)
    if isinstance(exc, SuspiciousOperation):  # too many fields or files, malformed multipart, ...
        return Response(error_body("invalid", str(exc) or "Invalid request."), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, drf_exceptions.APIException):
        return response  # None: Django answers 500 and logs the traceback
    if isinstance(exc, drf_exceptions.ValidationError):
        response.data = error_body("invalid", "Invalid input.", exc.detail)
    else:
        detail = exc.detail
        message = str(detail) if not isinstance(detail, dict | list) else exc.default_detail
        response.data = error_body(_drf_code(exc), str(message))
    return response
