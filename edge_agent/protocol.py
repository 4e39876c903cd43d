"""The accessctl device wire protocol (v1): topics, payloads, signing. Shared by edge and server.

This module is imported by both the edge agent and the server (``devices/``), so it uses only
the standard library at import time. The Ed25519 helpers (:func:`generate_keypair`,
:func:`sign_envelope`, :func:`open_envelope`, ...) import ``cryptography`` lazily, inside the
functions; the embedding helpers use numpy only when handed a numpy array.

Wire format
-----------
Every message except the MQTT last will is a signed envelope, UTF-8 JSON::

    {"payload": {...}, "sig": "<base64 Ed25519 signature of canonical_json(payload)>"}

``canonical_json`` is JSON with sorted keys, separators ``(",", ":")``, ``ensure_ascii=False``,
no NaN/Infinity, UTF-8. The verifier re-canonicalises the payload it parsed, so the outer
spacing and key order of the envelope do not matter. Devices sign detections, heartbeats and
status with their device key; the server signs commands with its server key (the device gets
the server public key at provisioning and ignores any command that does not verify, so a broker
user cannot open a door).

The MQTT last will is the exception: a retained, *unsigned* plain ``offline`` on the status
topic (the broker publishes it, so it cannot be signed). It is a hint only; a clean shutdown
publishes a signed ``offline`` status first.

Parsing is strict: unknown keys, wrong types, bools where numbers are expected, non-finite
numbers, oversized fields all raise :class:`ProtocolError` with a :class:`RejectReason` code.
Replay protection is split: :func:`check_freshness` checks the timestamp window here; the server
enforces ``detection_id`` uniqueness in its database and the device remembers recent
``command_id`` values.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
import struct
import sys
import time
import uuid
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

PROTOCOL_VERSION = 1
TOPIC_ROOT = "acs/v1/devices"

#: Hard limits, enforced when parsing (and when signing, so a device never builds what the
#: server would reject).
MAX_MESSAGE_BYTES = 256 * 1024
MAX_CROP_BYTES = 128 * 1024
MAX_EMBEDDING_DIM = 4096
MAX_QUALITY_KEYS = 32
MAX_PULSE_MS = 60_000
#: Smallest face a detection is worth (shorter side of the detector box, in frame pixels): the
#: one rule for both sides. The agent sends nothing smaller (``[detection] min_face_px``, this by
#: default) and the server denies smaller ones as ``low_quality`` (``ACCESSCTL_MIN_FACE_PX``, this by
#: default; LFW accuracy is measured on such faces).
MIN_FACE_PX = 40
#: Default timestamp windows (seconds) for :func:`check_freshness`.
DETECTION_WINDOW_S = 30.0
COMMAND_WINDOW_S = 30.0

#: Payload of the unsigned MQTT last will on the status topic.
OFFLINE_WILL = b"offline"

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")

_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_CODE_RE = re.compile(r"^[a-z0-9_]{1,64}$")
_LABEL_MAX = 64
_SIG_BYTES = 64
_KEY_BYTES = 32


class RejectReason(StrEnum):
    """Machine codes for why a message was rejected (also used as AccessEvent reason codes)."""

    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_DEVICE = "unknown_device"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAY = "replay"
    TOPIC_MISMATCH = "topic_mismatch"
    TOO_LARGE = "too_large"
    BAD_EMBEDDING = "bad_embedding"
    BAD_IMAGE = "bad_image"


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``code`` says why, ``message`` for logs."""

    def __init__(self, code: RejectReason, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = RejectReason(code)
        self.message = message


class TopicKind(StrEnum):
    DETECTIONS = "detections"
    HEARTBEAT = "heartbeat"
    STATUS = "status"
    COMMANDS = "commands"


class Mode(StrEnum):
    CROP = "crop"
    EMBEDDING = "embedding"


class EmbeddingEncoding(StrEnum):
    F32 = "f32"
    F16 = "f16"
    INT8 = "int8"


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class CommandKind(StrEnum):
    OPEN = "open"
    DENY = "deny"
    LOCKDOWN = "lockdown"
    LIFT_LOCKDOWN = "lift_lockdown"
    CONFIG = "config"
    ALLOWLIST = "allowlist"


class OfflineAction(StrEnum):
    OPEN = "open"
    DENY = "deny"


# --------------------------------------------------------------------------------------------
# Topics


def validate_device_uid(uid: object) -> str:
    """Return ``uid`` if it is a valid device uid (1-64 chars of ``[A-Za-z0-9_.:-]``)."""
    if not isinstance(uid, str) or not _UID_RE.match(uid):
        raise ProtocolError(RejectReason.MALFORMED, f"invalid device uid {uid!r}")
    return uid


def topic_for(uid: str, kind: TopicKind | str) -> str:
    """``acs/v1/devices/<uid>/<kind>``."""
    return f"{TOPIC_ROOT}/{validate_device_uid(uid)}/{TopicKind(kind)}"


def detections_topic(uid: str) -> str:
    return topic_for(uid, TopicKind.DETECTIONS)


def heartbeat_topic(uid: str) -> str:
    return topic_for(uid, TopicKind.HEARTBEAT)


def status_topic(uid: str) -> str:
    return topic_for(uid, TopicKind.STATUS)


def commands_topic(uid: str) -> str:
    return topic_for(uid, TopicKind.COMMANDS)


def subscription_filter(kind: TopicKind | str) -> str:
    """MQTT filter for one kind over all devices, e.g. ``acs/v1/devices/+/detections``."""
    return f"{TOPIC_ROOT}/+/{TopicKind(kind)}"


def parse_topic(topic: str) -> tuple[str, TopicKind]:
    """Split ``acs/v1/devices/<uid>/<kind>`` into ``(uid, kind)``; anything else is malformed."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 5 or "/".join(parts[:3]) != TOPIC_ROOT:
        raise ProtocolError(RejectReason.MALFORMED, f"not an accessctl v1 topic: {topic!r}")
    try:
        kind = TopicKind(parts[4])
    except ValueError:
        raise ProtocolError(RejectReason.MALFORMED, f"unknown topic kind in {topic!r}") from None
    return validate_device_uid(parts[3]), kind


# --------------------------------------------------------------------------------------------
# Field readers (strict: bool is not a number, NaN is not a number)


def _fail(message: str, code: RejectReason = RejectReason.MALFORMED) -> ProtocolError:
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
            raise ProtocolError(RejectReason.BAD_VERSION, f"unsupported protocol version {version!r}")
    keys = set(data)
    if missing := required - keys:
        raise _fail(f"{what} misses {sorted(missing)}")
    if unknown := keys - required - optional:
        raise _fail(f"{what} has unknown keys {sorted(unknown)}")
    return data


def _b64decode(value: object, key: str, code: RejectReason, max_bytes: int) -> bytes:
    if not isinstance(value, str):
        raise _fail(f"{key} must be a base64 string", code)
    if len(value) > (max_bytes + 2) // 3 * 4:
        raise _fail(f"{key} larger than {max_bytes} bytes", RejectReason.TOO_LARGE)
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _fail(f"{key} is not valid base64", code) from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_jpeg(data: bytes, key: str) -> bytes:
    if len(data) > MAX_CROP_BYTES:
        raise _fail(f"{key} larger than {MAX_CROP_BYTES} bytes", RejectReason.TOO_LARGE)
    if len(data) < 4 or not data.startswith(b"\xff\xd8\xff"):
        raise _fail(f"{key} is not a JPEG", RejectReason.BAD_IMAGE)
    return data


def _check_timestamp(value: float, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise _fail(f"{key} must be a positive unix timestamp")
    return float(value)


# --------------------------------------------------------------------------------------------
# Embeddings (stdlib; numpy fast path when given a numpy array)

_ITEMSIZE = {
    EmbeddingEncoding.F32: 4,
    EmbeddingEncoding.F16: 2,
    EmbeddingEncoding.INT8: 1,
}


def _is_numpy(values: object) -> bool:
    return type(values).__module__ == "numpy"


def encode_embedding(
    values: Sequence[float], encoding: EmbeddingEncoding | str = EmbeddingEncoding.F32
) -> tuple[bytes, float | None]:
    """Encode a vector as little-endian bytes; returns ``(data, scale)``.

    ``scale`` is None except for ``int8``, where ``value = int8 * scale`` (one scale per vector,
    ``max(|x|) / 127``). Non-finite or all-zero vectors raise ``bad_embedding``.
    """
    encoding = EmbeddingEncoding(encoding)
    if _is_numpy(values):
        floats = [float(v) for v in values.reshape(-1)]  # type: ignore[attr-defined]
    else:
        floats = [float(v) for v in values]
    if not 0 < len(floats) <= MAX_EMBEDDING_DIM:
        raise _fail(f"embedding dim must be 1..{MAX_EMBEDDING_DIM}", RejectReason.BAD_EMBEDDING)
    if not all(math.isfinite(v) for v in floats):
        raise _fail("embedding has non-finite values", RejectReason.BAD_EMBEDDING)
    peak = max(abs(v) for v in floats)
    if peak == 0.0:
        raise _fail("embedding is all zeros", RejectReason.BAD_EMBEDDING)
    if encoding is EmbeddingEncoding.F32:
        return struct.pack(f"<{len(floats)}f", *floats), None
    if encoding is EmbeddingEncoding.F16:
        try:
            return struct.pack(f"<{len(floats)}e", *floats), None
        except (OverflowError, struct.error):
            raise _fail("embedding value does not fit float16", RejectReason.BAD_EMBEDDING) from None
    scale = peak / 127.0
    quantised = array("b", (max(-127, min(127, round(v / scale))) for v in floats))
    return quantised.tobytes(), scale


def decode_embedding(
    data: bytes, encoding: EmbeddingEncoding | str, dim: int, scale: float | None = None
) -> list[float]:
    """Decode :func:`encode_embedding` output back to floats; validates length and finiteness."""
    encoding = EmbeddingEncoding(encoding)
    if len(data) != dim * _ITEMSIZE[encoding]:
        raise _fail(
            f"embedding has {len(data)} bytes, expected {dim} x {encoding}",
            RejectReason.BAD_EMBEDDING,
        )
    if encoding is EmbeddingEncoding.F32:
        values = array("f", data)
        if sys.byteorder != "little":
            values.byteswap()
        floats = values.tolist()
    elif encoding is EmbeddingEncoding.F16:
        floats = list(struct.unpack(f"<{dim}e", data))
    else:
        if scale is None or not math.isfinite(scale) or scale <= 0:
            raise _fail(
                "int8 embedding needs a positive finite scale",
                RejectReason.BAD_EMBEDDING,
            )
        floats = [q * scale for q in array("b", data)]
    if not all(math.isfinite(v) for v in floats):
        raise _fail("embedding has non-finite values", RejectReason.BAD_EMBEDDING)
    if not any(floats):
        raise _fail("embedding is all zeros", RejectReason.BAD_EMBEDDING)
    return floats


# --------------------------------------------------------------------------------------------
# Payloads


def new_id() -> str:
    """A fresh uuid4 string (detection_id / command_id)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, kw_only=True)
class OfflineDecision:
    """What a device decided on its own while it had no server (synced back with the detection).

    ``action``: open/deny; ``basis``: why (``fail_safe``, ``fail_secure``, ``allowlist``,
    ``lockdown``, ...); ``person_ref``: allow-list entry that matched, if any.
    """

    action: OfflineAction
    basis: str
    decided_at: float
    person_ref: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": str(self.action),
            "basis": self.basis,
            "decided_at": self.decided_at,
        }
        if self.person_ref is not None:
            out["person_ref"] = self.person_ref
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, {"action", "basis", "decided_at"}, {"person_ref"}, "offline_decision")
        return cls(
            action=_enum(d, "action", OfflineAction),
            basis=_label(d, "basis", pattern=_CODE_RE),
            decided_at=_check_timestamp(d["decided_at"], "decided_at"),
            person_ref=_opt_label(d, "person_ref"),
        )


@dataclass(frozen=True, kw_only=True)
class Detection:
    """One face seen by a device (one per tracked person), device -> server.

    ``crop`` mode carries ``crop_jpeg`` (raw JPEG bytes here, base64 on the wire); ``embedding``
    mode carries ``embedding`` (raw encoded bytes here, base64 on the wire) with
    ``embedding_encoding``, ``embedding_scale`` (int8 only), ``dim`` and ``model_version``.
    Use :meth:`embedding_values` for the floats.
    """

    device_uid: str
    detection_id: str
    captured_at: float
    sent_at: float
    detector_score: float
    box: tuple[int, int, int, int]
    quality: dict[str, float]
    mode: Mode
    crop_jpeg: bytes | None = None
    embedding: bytes | None = None
    embedding_encoding: EmbeddingEncoding | None = None
    embedding_scale: float | None = None
    dim: int | None = None
    model_version: str | None = None
    offline_decision: OfflineDecision | None = None
    attempt: int = 0
    v: int = PROTOCOL_VERSION

    KIND: ClassVar[TopicKind] = TopicKind.DETECTIONS
    _REQUIRED: ClassVar[set[str]] = {
        "v", "device_uid", "detection_id", "captured_at", "sent_at", "detector_score", "box", "quality", "mode",
    }  # fmt: skip
    _OPTIONAL: ClassVar[set[str]] = {
        "crop_jpeg", "embedding", "embedding_encoding", "embedding_scale", "dim", "model_version", "offline_decision",
        "attempt",
    }  # fmt: skip
    #: Highest ``attempt``: a device re-sends an unanswered detection a few times, never forever.
    MAX_ATTEMPT: ClassVar[int] = 16

    def __post_init__(self) -> None:
        _normalise(self)

    @classmethod
    def with_crop(cls, *, jpeg: bytes, **fields: Any) -> Self:
        return cls(mode=Mode.CROP, crop_jpeg=jpeg, **fields)

    @classmethod
    def with_embedding(
        cls,
        *,
        values: Sequence[float],
        model_version: str,
        encoding: EmbeddingEncoding | str = EmbeddingEncoding.F32,
        **fields: Any,
    ) -> Self:
        data, scale = encode_embedding(values, encoding)
        return cls(
            mode=Mode.EMBEDDING,
            embedding=data,
            embedding_encoding=EmbeddingEncoding(encoding),
            embedding_scale=scale,
            dim=len(values),
            model_version=model_version,
            **fields,
        )

    def embedding_values(self) -> list[float]:
        """The embedding as floats (dequantised); ``bad_embedding`` if there is none."""
        if self.embedding is None or self.embedding_encoding is None or self.dim is None:
            raise _fail("detection carries no embedding", RejectReason.BAD_EMBEDDING)
        return decode_embedding(self.embedding, self.embedding_encoding, self.dim, self.embedding_scale)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "device_uid": self.device_uid,
            "detection_id": self.detection_id,
            "captured_at": self.captured_at,
            "sent_at": self.sent_at,
            "detector_score": self.detector_score,
            "box": list(self.box),
            "quality": dict(self.quality),
            "mode": str(self.mode),
        }
        if self.crop_jpeg is not None:
            out["crop_jpeg"] = _b64encode(self.crop_jpeg)
        if self.embedding is not None:
            out["embedding"] = _b64encode(self.embedding)
        for key in ("embedding_encoding", "embedding_scale", "dim", "model_version"):
            value = getattr(self, key)
            if value is not None:
                out[key] = str(value) if isinstance(value, StrEnum) else value
        if self.offline_decision is not None:
            out["offline_decision"] = self.offline_decision.to_dict()
        if self.attempt:
            out["attempt"] = self.attempt
        return out

    def resent(self, *, sent_at: float) -> Self:
        """The same detection (same id, capture and face) sent again because no decision came back:
        ``attempt`` + 1 and a new ``sent_at``, so it must be signed again (a copy of the old bytes
        is a replay; this is not)."""
        return replace(self, sent_at=sent_at, attempt=self.attempt + 1)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, cls._REQUIRED, cls._OPTIONAL, "detection")
        box = d["box"]
        if (
            not isinstance(box, list)
            or len(box) != 4
            or any(isinstance(c, bool) or not isinstance(c, int) or abs(c) > 100_000 for c in box)
            or box[2] <= box[0]
            or box[3] <= box[1]
        ):
            raise _fail("box must be [x1, y1, x2, y2] integers with x2 > x1 and y2 > y1")
        quality = d["quality"]
        if not isinstance(quality, Mapping) or len(quality) > MAX_QUALITY_KEYS:
            raise _fail(f"quality must be an object of at most {MAX_QUALITY_KEYS} numbers")
        for key in quality:
            if not _CODE_RE.match(key):
                raise _fail(f"quality key {key!r} invalid")
        mode = _enum(d, "mode", Mode)
        fields: dict[str, Any] = {
            "device_uid": validate_device_uid(d["device_uid"]),
            "detection_id": _uuid4(d, "detection_id"),
            "captured_at": _check_timestamp(d["captured_at"], "captured_at"),
            "sent_at": _check_timestamp(d["sent_at"], "sent_at"),
            "detector_score": _number(d, "detector_score", lo=0.0, hi=1.0),
            "box": tuple(box),
            "quality": {k: _number(quality, k) for k in quality},
            "mode": mode,
            "model_version": _opt_label(d, "model_version"),
        }
        if d.get("offline_decision") is not None:
            fields["offline_decision"] = OfflineDecision.from_dict(d["offline_decision"])
        if d.get("attempt") is not None:
            fields["attempt"] = _integer(d, "attempt", lo=0, hi=cls.MAX_ATTEMPT)
        embedding_keys = ("embedding", "embedding_encoding", "embedding_scale", "dim")
        if mode is Mode.CROP:
            if any(d.get(k) is not None for k in embedding_keys):
                raise _fail("crop mode detection must not carry an embedding")
            if d.get("crop_jpeg") is None:
                raise _fail("crop mode detection needs crop_jpeg", RejectReason.BAD_IMAGE)
            jpeg = _b64decode(d["crop_jpeg"], "crop_jpeg", RejectReason.BAD_IMAGE, MAX_CROP_BYTES)
            fields["crop_jpeg"] = _check_jpeg(jpeg, "crop_jpeg")
        else:
            if d.get("crop_jpeg") is not None:
                raise _fail("embedding mode detection must not carry a crop")
            if d.get("embedding") is None or fields["model_version"] is None:
                raise _fail(
                    "embedding mode detection needs embedding and model_version",
                    RejectReason.BAD_EMBEDDING,
                )
            encoding = _enum(d, "embedding_encoding", EmbeddingEncoding)
            try:
                dim = _integer(d, "dim", lo=1, hi=MAX_EMBEDDING_DIM)
                scale = _opt_number(d, "embedding_scale")
            except ProtocolError as exc:
                raise _fail(exc.message, RejectReason.BAD_EMBEDDING) from None
            if (scale is None) != (encoding is not EmbeddingEncoding.INT8):
                raise _fail(
                    "embedding_scale is required for int8 and only for int8",
                    RejectReason.BAD_EMBEDDING,
                )
            raw = _b64decode(
                d["embedding"],
                "embedding",
                RejectReason.BAD_EMBEDDING,
                MAX_EMBEDDING_DIM * 4,
            )
            decode_embedding(raw, encoding, dim, scale)  # validates length and finiteness
            fields.update(
                embedding=raw,
                embedding_encoding=encoding,
                embedding_scale=scale,
                dim=dim,
            )
        return _construct(cls, **fields)


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """Periodic device health, device -> server."""

    device_uid: str
    sent_at: float
    agent_version: str
    model_version: str | None
    camera_fps: float
    spool_depth: int
    spool_dropped: int
    uptime_s: float
    temperature_c: float | None = None
    detections_sent: int = 0
    bytes_per_detection: float | None = None
    offline_decisions: int = 0
    lockdown: bool = False
    #: detections the broker accepted that still wait for their answer / that never got one
    awaiting_answer: int = 0
    unanswered: int = 0
    #: detections whose answer is overdue now (past the decision timeout) plus those given up since
    #: the last answer arrived, and the age of the oldest overdue one; None: not measured (older agent)
    answers_overdue: int | None = None
    oldest_overdue_s: float | None = None
    v: int = PROTOCOL_VERSION

    KIND: ClassVar[TopicKind] = TopicKind.HEARTBEAT
    _REQUIRED: ClassVar[set[str]] = {
        "v", "device_uid", "sent_at", "agent_version", "model_version", "camera_fps", "spool_depth",
        "spool_dropped", "uptime_s", "temperature_c",
    }  # fmt: skip
    _OPTIONAL: ClassVar[set[str]] = {
        "detections_sent",
        "bytes_per_detection",
        "offline_decisions",
        "lockdown",
        "awaiting_answer",
        "unanswered",
        "answers_overdue",
        "oldest_overdue_s",
    }

    def __post_init__(self) -> None:
        _normalise(self)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._REQUIRED | self._OPTIONAL}
        for key in ("bytes_per_detection", "answers_overdue", "oldest_overdue_s"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, cls._REQUIRED, cls._OPTIONAL, "heartbeat")
        lockdown = d.get("lockdown", False)
        if not isinstance(lockdown, bool):
            raise _fail("lockdown must be a boolean")
        return _construct(
            cls,
            device_uid=validate_device_uid(d["device_uid"]),
            sent_at=_check_timestamp(d["sent_at"], "sent_at"),
            agent_version=_label(d, "agent_version"),
            model_version=_opt_label(d, "model_version"),
            camera_fps=_number(d, "camera_fps", lo=0.0, hi=1000.0),
            spool_depth=_integer(d, "spool_depth"),
            spool_dropped=_integer(d, "spool_dropped"),
            uptime_s=_number(d, "uptime_s", lo=0.0),
            temperature_c=_opt_number(d, "temperature_c", lo=-100.0, hi=200.0),
            detections_sent=_integer(d, "detections_sent") if "detections_sent" in d else 0,
            bytes_per_detection=_opt_number(d, "bytes_per_detection", lo=0.0),
            offline_decisions=_integer(d, "offline_decisions") if "offline_decisions" in d else 0,
            lockdown=lockdown,
            awaiting_answer=_integer(d, "awaiting_answer") if "awaiting_answer" in d else 0,
            unanswered=_integer(d, "unanswered") if "unanswered" in d else 0,
            answers_overdue=_integer(d, "answers_overdue") if d.get("answers_overdue") is not None else None,
            oldest_overdue_s=_opt_number(d, "oldest_overdue_s", lo=0.0),
        )


@dataclass(frozen=True, kw_only=True)
class Status:
    """Device presence on the retained status topic, device -> server.

    ``signed`` is False only for the broker-published last will (plain ``offline``); it is not
    part of the wire payload.
    """

    device_uid: str
    state: DeviceState
    sent_at: float | None
    agent_version: str | None = None
    signed: bool = field(default=True, compare=False)
    v: int = PROTOCOL_VERSION

    KIND: ClassVar[TopicKind] = TopicKind.STATUS

    def __post_init__(self) -> None:
        if self.signed:
            _normalise(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "device_uid": self.device_uid,
            "state": str(self.state),
        }
        out["sent_at"] = self.sent_at
        if self.agent_version is not None:
            out["agent_version"] = self.agent_version
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, {"v", "device_uid", "state", "sent_at"}, {"agent_version"}, "status")
        return _construct(
            cls,
            device_uid=validate_device_uid(d["device_uid"]),
            state=_enum(d, "state", DeviceState),
            sent_at=_check_timestamp(d["sent_at"], "sent_at"),
            agent_version=_opt_label(d, "agent_version"),
            signed=True,
        )

    @classmethod
    def last_will(cls, device_uid: str) -> Self:
        """The unsigned ``offline`` the broker publishes for a vanished device."""
        return _construct(
            cls,
            device_uid=device_uid,
            state=DeviceState.OFFLINE,
            sent_at=None,
            signed=False,
        )


@dataclass(frozen=True, kw_only=True)
class Command:
    """An instruction for one device, server -> device, signed with the server key.

    ``device_uid`` names the target (a command for another door is rejected as
    ``topic_mismatch``); ``pulse_ms`` is the relay pulse for ``open`` (0 otherwise); ``reason``
    is a machine code (AccessEvent reason); ``data`` carries ``config``/``allowlist`` content.
    """

    device_uid: str
    command: CommandKind
    command_id: str
    issued_at: float
    reason: str
    detection_id: str | None = None
    pulse_ms: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    v: int = PROTOCOL_VERSION

    KIND: ClassVar[TopicKind] = TopicKind.COMMANDS
    _REQUIRED: ClassVar[set[str]] = {
        "v",
        "device_uid",
        "command",
        "command_id",
        "issued_at",
        "reason",
        "pulse_ms",
    }
    _OPTIONAL: ClassVar[set[str]] = {"detection_id", "data"}

    def __post_init__(self) -> None:
        _normalise(self)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._REQUIRED | self._OPTIONAL}
        out["command"] = str(self.command)
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, cls._REQUIRED, cls._OPTIONAL, "command")
        payload = d.get("data", {})
        if not isinstance(payload, Mapping):
            raise _fail("data must be a JSON object")
        command = _enum(d, "command", CommandKind)
        pulse_ms = _integer(d, "pulse_ms", hi=MAX_PULSE_MS)
        if command is CommandKind.OPEN and pulse_ms <= 0:
            raise _fail("open needs pulse_ms > 0")
        detection_id = d.get("detection_id")
        return _construct(
            cls,
            device_uid=validate_device_uid(d["device_uid"]),
            command=command,
            command_id=_uuid4(d, "command_id"),
            issued_at=_check_timestamp(d["issued_at"], "issued_at"),
            reason=_label(d, "reason", pattern=_CODE_RE),
            detection_id=None if detection_id is None else validate_uuid4(detection_id, "detection_id"),
            pulse_ms=pulse_ms,
            data=dict(payload),
        )


Message = Detection | Heartbeat | Status | Command
_BY_KIND: dict[TopicKind, type[Detection | Heartbeat | Status | Command]] = {
    TopicKind.DETECTIONS: Detection,
    TopicKind.HEARTBEAT: Heartbeat,
    TopicKind.STATUS: Status,
    TopicKind.COMMANDS: Command,
}


def _construct(cls: type[_T], **fields: Any) -> _T:
    """Build a frozen payload from already-validated fields without validating twice."""
    obj = object.__new__(cls)
    for f in cls.__dataclass_fields__.values():  # type: ignore[attr-defined]
        if f.name in fields:
            value = fields[f.name]
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            value = f.default
        object.__setattr__(obj, f.name, value)
    return obj


def _normalise(message: Any) -> None:
    """Validate a directly built payload with the strict parser (one rule set for both
    directions) and adopt the parsed field values (tuples, floats)."""
    parsed = type(message).from_dict(message.to_dict())
    for name in message.__dataclass_fields__:
        object.__setattr__(message, name, getattr(parsed, name))


def payload_from_dict(kind: TopicKind | str, data: object) -> Message:
    """Parse a payload dict for topic ``kind`` into its dataclass (strict)."""
    return _BY_KIND[TopicKind(kind)].from_dict(data)


# --------------------------------------------------------------------------------------------
# Canonical JSON, envelopes, Ed25519


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
            RejectReason.TOO_LARGE,
        )
    doc = loads_strict(raw)
    if not isinstance(doc, dict) or set(doc) != {"payload", "sig"} or not isinstance(doc["payload"], dict):
        raise _fail('envelope must be {"payload": {...}, "sig": "..."}')
    sig = _b64decode(doc["sig"], "sig", RejectReason.BAD_SIGNATURE, _SIG_BYTES)
    if len(sig) != _SIG_BYTES:
        raise _fail("signature must be 64 bytes", RejectReason.BAD_SIGNATURE)
    return Envelope(payload=doc["payload"], sig=sig)


def generate_keypair() -> tuple[str, str]:
    """New Ed25519 key pair: ``(private_key_pem, public_key_b64)`` (lazily imports cryptography).

    The private key is unencrypted PKCS#8 PEM (store it mode 0600); the public key is the raw
    32-byte key in base64, which is what the server stores and what :func:`open_envelope` takes.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return pem, public_key_b64(key)


def load_private_key(key: Any) -> Any:
    """An ``Ed25519PrivateKey`` from PEM (str/bytes), raw 32 bytes, base64 of those, or a key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, str):
        key = key.strip().encode("ascii")
    if isinstance(key, bytes) and key.startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_private_key(key, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("private key is not Ed25519")
        return loaded
    if isinstance(key, bytes) and len(key) != _KEY_BYTES:
        key = base64.b64decode(key, validate=True)
    return Ed25519PrivateKey.from_private_bytes(key)


def public_key_b64(private_key: Any) -> str:
    """Base64 of the raw public key belonging to ``private_key`` (any form :func:`load_private_key` takes)."""
    from cryptography.hazmat.primitives import serialization

    raw = (
        load_private_key(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return _b64encode(raw)


@functools.lru_cache(maxsize=1024)
def _public_key(public_key_b64: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = base64.b64decode(public_key_b64.encode("ascii"), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _fail(
            "public key is not base64 of 32 raw Ed25519 bytes",
            RejectReason.BAD_SIGNATURE,
        ) from None


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
            RejectReason.TOO_LARGE,
        )
    return raw


def verify_envelope(envelope: Envelope, public_key_b64: str) -> dict[str, Any]:
    """Verify a split envelope against ``public_key_b64``; returns the payload or raises ``bad_signature``."""
    from cryptography.exceptions import InvalidSignature

    try:
        _public_key(public_key_b64).verify(envelope.sig, canonical_json(envelope.payload))
    except InvalidSignature:
        raise _fail("signature does not verify", RejectReason.BAD_SIGNATURE) from None
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
            RejectReason.STALE_TIMESTAMP,
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
            RejectReason.TOPIC_MISMATCH,
        )
    if window_s is not None:
        ts = message.issued_at if isinstance(message, Command) else message.sent_at
        check_freshness(ts, time.time() if now is None else now, window_s)  # type: ignore[arg-type]
    return message


def seal(message: Message, private_key: Any) -> bytes:
    """Sign a payload dataclass: ``sign_envelope(message.to_dict(), private_key)``."""
    return sign_envelope(message.to_dict(), private_key)
