"""Strict field readers shared by the payload parsers (a bool is not a number, NaN is not a number)."""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, TypeVar

from faceengine.protocol.codes import ProtocolError, Reason
from faceengine.protocol.limits import MAX_CROP_BYTES, PROTOCOL_VERSION

_E = TypeVar("_E", bound=StrEnum)

_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_LABEL_MAX = 64


def _fail(message: str, code: Reason = Reason.MALFORMED) -> ProtocolError:
    return ProtocolError(code, message)


def _number(
    data: Mapping[str, Any],
    key: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{key} must be a number")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _fail(f"{key} out of range")
    return value


def _opt_number(data: Mapping[str, Any], key: str, **bounds: float) -> float | None:
    return None if data.get(key) is None else _number(data, key, **bounds)


def _integer(data: Mapping[str, Any], key: str, *, lo: int = 0, hi: int = 2**53) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{key} must be an integer")
    if not lo <= value <= hi:
        raise _fail(f"{key} out of range")
    return value


def _label(data: Mapping[str, Any], key: str, *, pattern: re.Pattern[str] | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= _LABEL_MAX or not value.isprintable():
        raise _fail(f"{key} must be a short printable string")
    if pattern is not None and not pattern.match(value):
        raise _fail(f"{key} has an invalid format")
    return value


def _opt_label(data: Mapping[str, Any], key: str, **kw: Any) -> str | None:
    return None if data.get(key) is None else _label(data, key, **kw)


def _enum(data: Mapping[str, Any], key: str, enum: type[_E]) -> _E:
    value = data.get(key)
    try:
        return enum(value)
    except ValueError:
        raise _fail(f"{key} must be one of {[e.value for e in enum]}") from None


def _uuid4(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    return validate_uuid4(value, key)


def validate_uuid4(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a canonical lowercase uuid4 string."""
    try:
        parsed = uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != 4 or str(parsed) != value:
        raise _fail(f"{what} must be a canonical uuid4 string")
    return value


def _check_keys(data: object, required: set[str], optional: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(f"{what} must be a JSON object")
    if "v" in required:
        version = data.get("v")
        if isinstance(version, bool) or version != PROTOCOL_VERSION:
            raise ProtocolError(Reason.BAD_VERSION, f"unsupported protocol version {version!r}")
    keys = set(data)
    if missing := required - keys:
        raise _fail(f"{what} misses {sorted(missing)}")
    if unknown := keys - required - optional:
        raise _fail(f"{what} has unknown keys {sorted(unknown)}")
    return data


def _b64decode(value: object, key: str, code: Reason, max_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise _fail(f"{key} must be a base64 string", code)
    if len(value) > (max_bytes + 2) // 3 * 4:
        raise _fail(f"{key} larger than {max_bytes} bytes", Reason.TOO_LARGE)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _fail(f"{key} is not valid base64", code) from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_jpeg(data: bytes, key: str) -> bytes:
    if len(data) > MAX_CROP_BYTES:
        raise _fail(f"{key} larger than {MAX_CROP_BYTES} bytes", Reason.TOO_LARGE)
    if len(data) < 4 or not data.startswith(b"\xff\xd8\xff"):
        raise _fail(f"{key} is not a JPEG", Reason.BAD_IMAGE)
    return data


def _check_timestamp(value: float, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise _fail(f"{key} must be a positive unix timestamp")
    return float(value)
