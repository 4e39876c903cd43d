"""One domain exception base and the DRF exception handler that renders every API error the same way.

Services raise :class:`DomainError` (or a subclass) with a stable ``code``; the API answers
``{"error": {"code": ..., "message": ..., "details": ...}}`` with the error's HTTP status. DRF's own
errors (validation, authentication, permission, throttling, 404) use the same envelope, so an
integrator parses one shape.
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


class DomainError(Exception):
    """A business rule refused an operation. ``code`` is a stable machine-readable string."""

    code: str = "domain_error"
    message: str = "The operation was refused."
    http_status: int = status.HTTP_400_BAD_REQUEST

    def __init__(self, message: str | None = None, *, code: str | None = None, details: Any = None) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = details
        super().__init__(self.message)


class InvalidInput(DomainError):
    code = "invalid"
    message = "Invalid input."


class Forbidden(DomainError):
    code = "permission_denied"
    message = "You are not allowed to do this."
    http_status = status.HTTP_403_FORBIDDEN


class NotFound(DomainError):
    code = "not_found"
    message = "Not found."
    http_status = status.HTTP_404_NOT_FOUND


class Conflict(DomainError):
    code = "conflict"
    message = "The resource is in use or in a conflicting state."
    http_status = status.HTTP_409_CONFLICT


class Unprocessable(DomainError):
    code = "unprocessable"
    message = "The request was well-formed but could not be processed."
    http_status = status.HTTP_422_UNPROCESSABLE_ENTITY


class ServiceUnavailable(DomainError):
    code = "unavailable"
    message = "A component needed for this request is not available."
    http_status = status.HTTP_503_SERVICE_UNAVAILABLE


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
