"""Device-authenticated HTTP requests (model bundle downloads): a short-lived signature by the device key.

A device fetches a file of a model bundle it was offered with one header::

    Authorization: AcsDevice <token>

``token`` is the URL-safe base64 (no padding) of a signed envelope (:func:`sign_envelope`, the
device's Ed25519 key) over::

    {"purpose": "model_download", "device_uid": "...", "method": "GET", "path": "/api/v1/...",
     "expires_at": <unix s>, "nonce": "<uuid4>"}

The server reads ``device_uid`` (:func:`request_token_split`), verifies the signature with that
device's public key, then that purpose, method and path are the request's, that ``expires_at`` is
in the future and at most :data:`MAX_REQUEST_TTL_S` ahead (:func:`request_token_verify`), and that
the nonce was not used before (its own store, kept until the expiry). So a token is good for one
request of one path by one device for a minute, and a copy of it is refused.

No new cryptography: the envelope is the one every message uses. Domain separation: the payload has
a ``purpose`` key that no wire message has (their parsing refuses unknown keys), and a command or a
detection lacks it, so none can stand in for another.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Any

from faceengine.protocol.codes import ProtocolError, Reason
from faceengine.protocol.envelope import Envelope, sign_envelope, split_envelope, verify_envelope
from faceengine.protocol.topics import validate_device_uid
from faceengine.protocol.validation import _fail, validate_uuid4

AUTH_SCHEME = "AcsDevice"
PURPOSE_MODEL_DOWNLOAD = "model_download"
#: a token may expire at most this long after it is checked (device clocks drift a little)
MAX_REQUEST_TTL_S = 120.0
DEFAULT_REQUEST_TTL_S = 60.0
_MAX_TOKEN_CHARS = 2048
_KEYS = {"purpose", "device_uid", "method", "path", "expires_at", "nonce"}


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed, not yet verified request token."""

    device_uid: str
    purpose: str
    method: str
    path: str
    expires_at: float
    nonce: str
    envelope: Envelope


def request_token_sign(
    *,
    device_uid: str,
    path: str,
    private_key: Any,
    method: str = "GET",
    purpose: str = PURPOSE_MODEL_DOWNLOAD,
    ttl_s: float = DEFAULT_REQUEST_TTL_S,
    now: float | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one request of ``path`` by ``device_uid``."""
    payload = {
        "purpose": purpose,
        "device_uid": device_uid,
        "method": method.upper(),
        "path": path,
        "expires_at": round((time.time() if now is None else now) + ttl_s, 3),
        "nonce": nonce or str(uuid.uuid4()),
    }
    raw = sign_envelope(payload, private_key)
    return f"{AUTH_SCHEME} " + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def request_token_split(header: str | None) -> DeviceRequest:
    """Parse an ``Authorization`` header WITHOUT verifying it (``malformed`` / ``bad_signature``)."""
    if not header or not header.startswith(AUTH_SCHEME + " "):
        raise _fail(f"no {AUTH_SCHEME} authorization")
    token = header[len(AUTH_SCHEME) + 1 :].strip()
    if not token or len(token) > _MAX_TOKEN_CHARS:
        raise _fail("request token missing or too long", Reason.TOO_LARGE if token else Reason.MALFORMED)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _fail("request token is not base64url") from None
    envelope = split_envelope(raw)
    d = envelope.payload
    if set(d) != _KEYS:
        raise _fail(f"a request token has exactly the keys {sorted(_KEYS)}")
    for key in ("purpose", "method", "path"):
        if not isinstance(d[key], str) or not 0 < len(d[key]) <= 512:
            raise _fail(f"{key} must be a short string")
    expires_at = d["expires_at"]
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise _fail("expires_at must be a number")
    return DeviceRequest(
        device_uid=validate_device_uid(d["device_uid"]),
        purpose=d["purpose"],
        method=d["method"],
        path=d["path"],
        expires_at=float(expires_at),
        nonce=validate_uuid4(d["nonce"], "nonce"),
        envelope=envelope,
    )


def request_token_verify(
    request: DeviceRequest,
    public_key_b64: str,
    *,
    method: str,
    path: str,
    purpose: str = PURPOSE_MODEL_DOWNLOAD,
    now: float | None = None,
    max_ttl_s: float = MAX_REQUEST_TTL_S,
) -> DeviceRequest:
    """The device's signature, then purpose, method and path, then the expiry window. Raises
    :class:`ProtocolError` (``bad_signature``, ``topic_mismatch``, ``stale_timestamp``). The nonce
    (replay) is the caller's: it must remember it until ``expires_at``."""
    verify_envelope(request.envelope, public_key_b64)
    if request.purpose != purpose or request.method != method.upper() or request.path != path:
        raise ProtocolError(Reason.TOPIC_MISMATCH, "the token was signed for another request")
    now = time.time() if now is None else now
    if request.expires_at <= now:
        raise ProtocolError(Reason.STALE_TIMESTAMP, f"the token expired {now - request.expires_at:.0f} s ago")
    if request.expires_at > now + max_ttl_s:
        raise ProtocolError(Reason.STALE_TIMESTAMP, f"the token expires more than {max_ttl_s:g} s ahead")
    return request
