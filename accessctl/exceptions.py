"""One domain exception base: services raise :class:`DomainError` (or a subclass) with a stable
``code`` and the HTTP status an API answers it with (``accessctl/api/exceptions.py`` renders it).
"""

from __future__ import annotations

from typing import Any

from rest_framework import status


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
