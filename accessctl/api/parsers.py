"""The API's JSON parser: DRF's, with a size cap and a 400 for nesting too deep to parse.

DRF's own parser reads the whole body whatever its size (Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``
guards only ``request.body`` and forms) and lets the ``RecursionError`` of a body such as 100,000
``[`` escape as a 500. Here both are client errors in the API's error format.
"""

from __future__ import annotations

from typing import IO, Any

from django.conf import settings
from rest_framework import parsers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.utils import json


class RequestBodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


class JSONParser(parsers.JSONParser):
    def parse(self, stream: IO[bytes] | None, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raw = stream.read(limit + 1 if limit is not None else -1) if stream is not None else b""
        if limit is not None and len(raw) > limit:
            raise RequestBodyTooLarge(f"A JSON body may hold at most {limit} bytes.")
        try:
            text = raw.decode(encoding)
            parse_constant = json.strict_constant if self.strict else None
            return json.loads(text, parse_constant=parse_constant)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply.") from exc
        except ValueError as exc:  # also UnicodeDecodeError
            raise ParseError(f"JSON parse error - {exc}") from exc
