"""Canonical JSON, signed envelopes and the receiver's checks for one MQTT message."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from faceengine.protocol.codes import ProtocolError, Reason
from faceengine.protocol.limits import MAX_MESSAGE_BYTES
from faceengine.protocol.payloads import Command, Detection, Message, Status, payload_from_dict
from faceengine.protocol.signing import _public_key, load_private_key
from faceengine.protocol.topics import OFFLINE_WILL, TopicKind, parse_topic
from faceengine.protocol.validation import _b64decode, _b64encode, _fail

_SIG_BYTES = 64


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: sorted keys, compact separators, UTF-8, no NaN."""
    try:
        text = json.dumps(
            payload,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise _fail(f"payload is not canonical JSON: {exc}") from None
    return text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise _fail(f"{name} is not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _fail(f"duplicate key {key!r}")
        out[key] = value
    return out


def loads_strict(raw: bytes | str) -> Any:
    """``json.loads`` that rejects NaN/Infinity, duplicate keys and absurd nesting."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _fail("not valid UTF-8 JSON") from None


@dataclass(frozen=True)
class Envelope:
    """An envelope split but not yet verified (server side: read ids before knowing the key)."""

    payload: dict[str, Any]
    sig: bytes


def split_envelope(raw: bytes) -> Envelope:
    """Parse ``raw`` into payload and signature WITHOUT verifying it (``too_large``/``malformed``)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise _fail(
            f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}",
            Reason.TOO_LARGE,
        )
    doc = loads_strict(raw)
    if not isinstance(doc, dict) or set(doc) != {"payload", "sig"} or not isinstance(doc["payload"], dict):
        raise _fail('envelope must be {"payload": {...}, "sig": "..."}')
    sig = _b64decode(doc["sig"], "sig", Reason.BAD_SIGNATURE, _SIG_BYTES)
    if len(sig) != _SIG_BYTES:
        raise _fail("signature must be 64 bytes", Reason.BAD_SIGNATURE)
    return Envelope(payload=doc["payload"], sig=sig)


def sign_envelope(payload: Mapping[str, Any], private_key: Any) -> bytes:
    """Sign ``canonical_json(payload)`` and return the envelope bytes to publish.

    Raises ``too_large`` if the envelope would exceed :data:`MAX_MESSAGE_BYTES`.
    """
    sig = load_private_key(private_key).sign(canonical_json(payload))
    envelope = {"payload": payload, "sig": _b64encode(sig)}
    raw = canonical_json(envelope)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise _fail(
            f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}",
            Reason.TOO_LARGE,
        )
    return raw


def verify_envelope(envelope: Envelope, public_key_b64: str) -> dict[str, Any]:
    """Verify a split envelope against ``public_key_b64``; returns the payload or raises ``bad_signature``."""
    from cryptography.exceptions import InvalidSignature

    try:
        _public_key(public_key_b64).verify(envelope.sig, canonical_json(envelope.payload))
    except InvalidSignature:
        raise _fail("signature does not verify", Reason.BAD_SIGNATURE) from None
    return envelope.payload


def open_envelope(raw: bytes, public_key_b64: str) -> dict[str, Any]:
    """Size-check, parse and verify ``raw``; returns the payload dict.

    Raises :class:`ProtocolError` with ``too_large``, ``malformed`` or ``bad_signature``.
    """
    return verify_envelope(split_envelope(raw), public_key_b64)


def check_freshness(ts: float, now: float, window_s: float) -> None:
    """Raise ``stale_timestamp`` unless ``|now - ts| <= window_s`` (both unix seconds)."""
    if not isinstance(ts, int | float) or not math.isfinite(ts) or abs(now - ts) > window_s:
        raise _fail(
            f"timestamp {ts!r} outside +-{window_s:g}s of {now:.3f}",
            Reason.STALE_TIMESTAMP,
        )


def check_detection_freshness(detection: Detection, now: float, window_s: float) -> None:
    """The one freshness rule of a detection, wherever it is applied (at the bridge, when deciding a
    backlog, when answering a re-send): sent within ``window_s`` of ``now`` and, for a re-send
    (``attempt`` > 0, signed anew), also captured within it. Raises ``stale_timestamp``."""
    check_freshness(detection.sent_at, now, window_s)
    if detection.attempt:
        check_freshness(detection.captured_at, now, window_s)


def detection_is_fresh(detection: Detection, now: float, window_s: float) -> bool:
    """:func:`check_detection_freshness` as a yes/no."""
    try:
        check_detection_freshness(detection, now, window_s)
    except ProtocolError:
        return False
    return True


def open_message(
    topic: str,
    raw: bytes,
    public_key_b64: str,
    *,
    now: float | None = None,
    window_s: float | None = None,
) -> Message:
    """Everything a receiver checks for one MQTT message, in order.

    Topic shape, the unsigned last will (status only: returns ``Status.last_will``), size,
    envelope, signature, version and payload schema, ``payload.device_uid == topic uid``
    (``topic_mismatch``) and, when ``window_s`` is given, freshness of ``sent_at``/``issued_at``.
    Replay (duplicate ``detection_id``/``command_id``) is the caller's job.
    """
    uid, kind = parse_topic(topic)
    if kind is TopicKind.STATUS and raw.strip() == OFFLINE_WILL:
        return Status.last_will(uid)
    message = payload_from_dict(kind, open_envelope(raw, public_key_b64))
    if message.device_uid != uid:
        raise _fail(
            f"payload device {message.device_uid!r} on topic of {uid!r}",
            Reason.TOPIC_MISMATCH,
        )
    if window_s is not None:
        ts = message.issued_at if isinstance(message, Command) else message.sent_at
        check_freshness(ts, time.time() if now is None else now, window_s)  # type: ignore[arg-type]
    return message


def seal(message: Message, private_key: Any) -> bytes:
    """Sign a payload dataclass: ``sign_envelope(message.to_dict(), private_key)``."""
    return sign_envelope(message.to_dict(), private_key)
