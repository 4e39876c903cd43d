"""The payload dataclasses (detection, heartbeat, status, command), strict both ways."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar, Self, TypeVar

from faceengine.protocol.codes import (
    CommandKind,
    DeviceState,
    DoorEventKind,
    EmbeddingEncoding,
    Mode,
    ModelUpdateState,
    OfflineAction,
    OfflineMode,
    ProtocolError,
    Reason,
    SecondFactorKind,
)
from faceengine.protocol.embedding import decode_embedding, encode_embedding
from faceengine.protocol.limits import (
    MAX_CROP_BYTES,
    MAX_EMBEDDING_DIM,
    MAX_PULSE_MS,
    MAX_QUALITY_KEYS,
    MAX_TRACK_PROBES,
    PROTOCOL_VERSION,
)
from faceengine.protocol.topics import TopicKind, validate_device_uid
from faceengine.protocol.validation import (
    _CODE_RE,
    _b64decode,
    _b64encode,
    _check_jpeg,
    _check_keys,
    _check_timestamp,
    _enum,
    _fail,
    _integer,
    _label,
    _number,
    _opt_label,
    _opt_number,
    _uuid4,
    validate_uuid4,
)

_T = TypeVar("_T")


def _opt_integer(data: Mapping[str, Any], key: str, **bounds: int) -> int | None:
    return None if data.get(key) is None else _integer(data, key, **bounds)


def new_id() -> str:
    """A fresh uuid4 string (detection_id / command_id)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, kw_only=True)
class OfflineDecision:
    """What a device decided on its own while it had no server (synced back with the detection).

    ``action``: open/deny; ``basis``: why (``fail_safe``, ``fail_secure``, ``allowlist``,
    ``lockdown``, ...); ``person_ref``: allow-list entry that matched, if any. With an allow-list
    the evidence too: ``reason`` (the device's policy code: ``matched``, ``unknown_face``,
    ``outside_schedule``, ...), ``allowlist_version`` and ``similarity`` (best template score).
    """

    action: OfflineAction
    basis: str
    decided_at: float
    person_ref: str | None = None
    reason: str | None = None
    allowlist_version: int | None = None
    similarity: float | None = None

    _OPTIONAL: ClassVar[tuple[str, ...]] = ("person_ref", "reason", "allowlist_version", "similarity")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "action": str(self.action),
            "basis": self.basis,
            "decided_at": self.decided_at,
        }
        for key in self._OPTIONAL:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, {"action", "basis", "decided_at"}, set(cls._OPTIONAL), "offline_decision")
        return cls(
            action=_enum(d, "action", OfflineAction),
            basis=_label(d, "basis", pattern=_CODE_RE),
            decided_at=_check_timestamp(d["decided_at"], "decided_at"),
            person_ref=_opt_label(d, "person_ref"),
            reason=_opt_label(d, "reason", pattern=_CODE_RE),
            allowlist_version=_opt_integer(d, "allowlist_version", lo=1),
            similarity=_opt_number(d, "similarity", lo=-1.0, hi=1.0),
        )


#: a second factor's lengths: a PIN is PIN_MIN_DIGITS..PIN_MAX_DIGITS digits, a card 1..CARD_MAX_CHARS
#: letters or digits (keypad and card-reader drivers check them as the keys arrive)
PIN_MIN_DIGITS, PIN_MAX_DIGITS, CARD_MAX_CHARS = 4, 12, 32
_PIN_RE = re.compile(rf"^[0-9]{{{PIN_MIN_DIGITS},{PIN_MAX_DIGITS}}}$")
_CARD_RE = re.compile(rf"^[0-9A-Za-z]{{1,{CARD_MAX_CHARS}}}$")


@dataclass(frozen=True, kw_only=True)
class SecondFactor:
    """What the person entered at the door besides their face, carried inside the signed detection:
    ``kind`` (``pin``: 4-12 digits; ``card``: 1-32 letters or digits, as the reader gives them),
    ``value`` and ``entered_at`` (unix s). The server checks it against the recognised person."""

    kind: SecondFactorKind
    value: str
    entered_at: float

    def __post_init__(self) -> None:
        _normalise(self)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "value": self.value, "entered_at": self.entered_at}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, {"kind", "value", "entered_at"}, set(), "second_factor")
        kind = _enum(d, "kind", SecondFactorKind)
        value = d["value"]
        pattern = _PIN_RE if kind is SecondFactorKind.PIN else _CARD_RE
        if not isinstance(value, str) or not pattern.match(value):
            raise _fail(f"second_factor value is not a valid {kind}")
        return _construct(cls, kind=kind, value=value, entered_at=_check_timestamp(d["entered_at"], "entered_at"))

    def __repr__(self) -> str:  # never the PIN in a log line
        return f"SecondFactor(kind={self.kind!s}, entered_at={self.entered_at})"


def _liveness_fields(d: Mapping[str, Any], *, max_frames: int) -> dict[str, Any]:
    """The optional liveness evidence of a detection: the live score fused over the track (0..1,
    higher is more likely a live face), how many frames it fused, and the networks' version. Score
    and frames come together or not at all; a detection without them was not measured (older
    agents, or liveness off on the device)."""
    if d.get("liveness") is None:
        if d.get("liveness_frames") is not None or d.get("liveness_model") is not None:
            raise _fail("liveness_frames and liveness_model need liveness")
        return {}
    if d.get("liveness_frames") is None:
        raise _fail("liveness needs liveness_frames")
    return {
        "liveness": _number(d, "liveness", lo=0.0, hi=1.0),
        "liveness_frames": _integer(d, "liveness_frames", lo=1, hi=max_frames),
        "liveness_model": _opt_label(d, "liveness_model"),
    }


def _quality(value: object, what: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or len(value) > MAX_QUALITY_KEYS:
        raise _fail(f"{what} must be an object of at most {MAX_QUALITY_KEYS} numbers")
    for key in value:
        if not isinstance(key, str) or not _CODE_RE.match(key):
            raise _fail(f"{what} key {key!r} invalid")
    return {k: _number(value, k) for k in value}


@dataclass(frozen=True, kw_only=True)
class TrackProbe:
    """One more face of the same track as a detection's main one (its next best frames).

    Crop mode: ``crop_jpeg`` (raw JPEG bytes; base64 on the wire), checked like the main crop.
    Embedding mode: ``embedding`` (raw encoded bytes; base64 on the wire) in the detection's own
    ``embedding_encoding``, ``dim`` and ``model_version``, with its own ``embedding_scale`` (int8
    only), checked like the main embedding. ``quality``: that frame's metrics (as the detection's).
    """

    quality: dict[str, float]
    crop_jpeg: bytes | None = None
    embedding: bytes | None = None
    embedding_scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quality": dict(self.quality)}
        if self.crop_jpeg is not None:
            out["crop_jpeg"] = _b64encode(self.crop_jpeg)
        if self.embedding is not None:
            out["embedding"] = _b64encode(self.embedding)
        if self.embedding_scale is not None:
            out["embedding_scale"] = self.embedding_scale
        return out

    @classmethod
    def from_dict(
        cls, data: object, *, mode: Mode, encoding: EmbeddingEncoding | None = None, dim: int | None = None
    ) -> TrackProbe:
        d = _check_keys(data, {"quality"}, {"crop_jpeg", "embedding", "embedding_scale"}, "track probe")
        quality = _quality(d["quality"], "track probe quality")
        if mode is Mode.CROP:
            if d.get("embedding") is not None or d.get("embedding_scale") is not None:
                raise _fail("a crop mode track probe must not carry an embedding")
            if d.get("crop_jpeg") is None:
                raise _fail("a crop mode track probe needs crop_jpeg", Reason.BAD_IMAGE)
            jpeg = _b64decode(d["crop_jpeg"], "track probe crop_jpeg", Reason.BAD_IMAGE, MAX_CROP_BYTES)
            return cls(quality=quality, crop_jpeg=_check_jpeg(jpeg, "track probe crop_jpeg"))
        if d.get("crop_jpeg") is not None:
            raise _fail("an embedding mode track probe must not carry a crop")
        if d.get("embedding") is None or encoding is None or dim is None:
            raise _fail("an embedding mode track probe needs embedding", Reason.BAD_EMBEDDING)
        try:
            scale = _opt_number(d, "embedding_scale")
        except ProtocolError as exc:
            raise _fail(exc.message, Reason.BAD_EMBEDDING) from None
        if (scale is None) != (encoding is not EmbeddingEncoding.INT8):
            raise _fail("embedding_scale is required for int8 and only for int8", Reason.BAD_EMBEDDING)
        raw = _b64decode(d["embedding"], "track probe embedding", Reason.BAD_EMBEDDING, MAX_EMBEDDING_DIM * 4)
        decode_embedding(raw, encoding, dim, scale)  # validates length and finiteness
        return cls(quality=quality, embedding=raw, embedding_scale=scale)

    @classmethod
    def with_embedding(
        cls, *, values: Sequence[float], encoding: EmbeddingEncoding | str, quality: dict[str, float]
    ) -> TrackProbe:
        data, scale = encode_embedding(values, encoding)
        return cls(quality=dict(quality), embedding=data, embedding_scale=scale)


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
    liveness: float | None = None
    liveness_frames: int | None = None
    liveness_model: str | None = None
    second_factor: SecondFactor | None = None
    track_probes: tuple[TrackProbe, ...] = ()
    v: int = PROTOCOL_VERSION

    KIND: ClassVar[TopicKind] = TopicKind.DETECTIONS
    _REQUIRED: ClassVar[set[str]] = {
        "v", "device_uid", "detection_id", "captured_at", "sent_at", "detector_score", "box", "quality", "mode",
    }  # fmt: skip
    _OPTIONAL: ClassVar[set[str]] = {
        "crop_jpeg", "embedding", "embedding_encoding", "embedding_scale", "dim", "model_version", "offline_decision",
        "attempt", "liveness", "liveness_frames", "liveness_model", "second_factor", "track_probes",
    }  # fmt: skip
    #: Most frames a device may say it scored for liveness over one track.
    MAX_LIVENESS_FRAMES: ClassVar[int] = 10_000
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
            raise _fail("detection carries no embedding", Reason.BAD_EMBEDDING)
        return decode_embedding(self.embedding, self.embedding_encoding, self.dim, self.embedding_scale)

    def track_embedding_values(self) -> list[list[float]]:
        """The floats of each track probe's embedding (embedding mode), in order."""
        if self.embedding_encoding is None or self.dim is None:
            raise _fail("detection carries no embedding", Reason.BAD_EMBEDDING)
        out = []
        for probe in self.track_probes:
            if probe.embedding is None:
                raise _fail("track probe carries no embedding", Reason.BAD_EMBEDDING)
            out.append(decode_embedding(probe.embedding, self.embedding_encoding, self.dim, probe.embedding_scale))
        return out

    @property
    def probe_count(self) -> int:
        """Faces of the track this detection carries: the main one and its track probes."""
        return 1 + len(self.track_probes)

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
        if self.liveness is not None:
            out["liveness"] = self.liveness
            out["liveness_frames"] = self.liveness_frames
            if self.liveness_model is not None:
                out["liveness_model"] = self.liveness_model
        if self.second_factor is not None:
            out["second_factor"] = self.second_factor.to_dict()
        if self.track_probes:
            out["track_probes"] = [probe.to_dict() for probe in self.track_probes]
        return out

    def resent(self, *, sent_at: float) -> Self:
        """The same detection (same id, capture and face) sent again because no decision came back:
        ``attempt`` + 1 and a new ``sent_at``, so it must be signed again (a copy of the old bytes
        is a replay; this is not)."""
        return replace(self, sent_at=sent_at, attempt=self.attempt + 1)

    @classmethod
    def from_dict(cls, data: object, *, crop_stored: bool = False) -> Self:
        """Parse and validate a detection. ``crop_stored``: a crop-mode payload whose crop bytes
        were taken out and stored apart once it was verified (the server's staged copy); it is
        parsed without them and ``crop_jpeg`` stays None."""
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
        quality = _quality(d["quality"], "quality")
        mode = _enum(d, "mode", Mode)
        fields: dict[str, Any] = {
            "device_uid": validate_device_uid(d["device_uid"]),
            "detection_id": _uuid4(d, "detection_id"),
            "captured_at": _check_timestamp(d["captured_at"], "captured_at"),
            "sent_at": _check_timestamp(d["sent_at"], "sent_at"),
            "detector_score": _number(d, "detector_score", lo=0.0, hi=1.0),
            "box": tuple(box),
            "quality": quality,
            "mode": mode,
            "model_version": _opt_label(d, "model_version"),
        }
        if d.get("offline_decision") is not None:
            fields["offline_decision"] = OfflineDecision.from_dict(d["offline_decision"])
        if d.get("attempt") is not None:
            fields["attempt"] = _integer(d, "attempt", lo=0, hi=cls.MAX_ATTEMPT)
        fields.update(_liveness_fields(d, max_frames=cls.MAX_LIVENESS_FRAMES))
        if d.get("second_factor") is not None:
            fields["second_factor"] = SecondFactor.from_dict(d["second_factor"])
        embedding_keys = ("embedding", "embedding_encoding", "embedding_scale", "dim")
        if mode is Mode.CROP:
            if any(d.get(k) is not None for k in embedding_keys):
                raise _fail("crop mode detection must not carry an embedding")
            if d.get("crop_jpeg") is None:
                if not crop_stored:
                    raise _fail("crop mode detection needs crop_jpeg", Reason.BAD_IMAGE)
            else:
                jpeg = _b64decode(d["crop_jpeg"], "crop_jpeg", Reason.BAD_IMAGE, MAX_CROP_BYTES)
                fields["crop_jpeg"] = _check_jpeg(jpeg, "crop_jpeg")
        else:
            if d.get("crop_jpeg") is not None:
                raise _fail("embedding mode detection must not carry a crop")
            if d.get("embedding") is None or fields["model_version"] is None:
                raise _fail(
                    "embedding mode detection needs embedding and model_version",
                    Reason.BAD_EMBEDDING,
                )
            encoding = _enum(d, "embedding_encoding", EmbeddingEncoding)
            try:
                dim = _integer(d, "dim", lo=1, hi=MAX_EMBEDDING_DIM)
                scale = _opt_number(d, "embedding_scale")
            except ProtocolError as exc:
                raise _fail(exc.message, Reason.BAD_EMBEDDING) from None
            if (scale is None) != (encoding is not EmbeddingEncoding.INT8):
                raise _fail(
                    "embedding_scale is required for int8 and only for int8",
                    Reason.BAD_EMBEDDING,
                )
            raw = _b64decode(
                d["embedding"],
                "embedding",
                Reason.BAD_EMBEDDING,
                MAX_EMBEDDING_DIM * 4,
            )
            decode_embedding(raw, encoding, dim, scale)  # validates length and finiteness
            fields.update(
                embedding=raw,
                embedding_encoding=encoding,
                embedding_scale=scale,
                dim=dim,
            )
        probes = d.get("track_probes")
        if probes is not None:
            if not isinstance(probes, list) or not 0 < len(probes) < MAX_TRACK_PROBES:
                raise _fail(f"track_probes must be a list of 1 to {MAX_TRACK_PROBES - 1} probes")
            fields["track_probes"] = tuple(
                TrackProbe.from_dict(probe, mode=mode, encoding=fields.get("embedding_encoding"), dim=fields.get("dim"))
                for probe in probes
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
    #: the offline allow-list the device holds (acknowledgement): version, expiry, entries, the
    #: last revocation applied, and what the door does if the link drops now; None: no list / older agent
    allowlist_version: int | None = None
    allowlist_expires_at: float | None = None
    allowlist_entries: int | None = None
    revocation_seq: int | None = None
    offline_mode: OfflineMode | None = None
    #: the model offer the device works on (or last finished): its version, where the device is with
    #: it and, when it failed or rolled back, why (a code); None: no offer since the agent started
    model_update_version: str | None = None
    model_update_state: ModelUpdateState | None = None
    model_update_reason: str | None = None
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
        "allowlist_version",
        "allowlist_expires_at",
        "allowlist_entries",
        "revocation_seq",
        "offline_mode",
        "model_update_version",
        "model_update_state",
        "model_update_reason",
    }
    _OMIT_NONE: ClassVar[tuple[str, ...]] = (
        "bytes_per_detection", "answers_overdue", "oldest_overdue_s", "allowlist_version", "allowlist_expires_at",
        "allowlist_entries", "revocation_seq", "offline_mode", "model_update_version", "model_update_state",
        "model_update_reason",
    )  # fmt: skip

    def __post_init__(self) -> None:
        _normalise(self)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self._REQUIRED | self._OPTIONAL}
        if self.offline_mode is not None:
            out["offline_mode"] = str(self.offline_mode)
        if self.model_update_state is not None:
            out["model_update_state"] = str(self.model_update_state)
        for key in self._OMIT_NONE:
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
            allowlist_version=_opt_integer(d, "allowlist_version", lo=1),
            allowlist_expires_at=_check_timestamp(d["allowlist_expires_at"], "allowlist_expires_at")
            if d.get("allowlist_expires_at") is not None
            else None,
            allowlist_entries=_opt_integer(d, "allowlist_entries"),
            revocation_seq=_opt_integer(d, "revocation_seq"),
            offline_mode=_enum(d, "offline_mode", OfflineMode) if d.get("offline_mode") is not None else None,
            model_update_version=_opt_label(d, "model_update_version"),
            model_update_state=_enum(d, "model_update_state", ModelUpdateState)
            if d.get("model_update_state") is not None
            else None,
            model_update_reason=_opt_label(d, "model_update_reason", pattern=_CODE_RE),
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


@dataclass(frozen=True, kw_only=True)
class DoorEvent:
    """What a door's inputs saw, device -> server (the ``door`` topic), signed with the device key.

    ``kind``: the position sensor's ``opened`` / ``closed``, or ``exit_request`` (the request-to-exit
    button; the device released the lock itself). ``event_id`` (uuid4) is unique: the server
    records each event once and refuses another payload under the same id (``replay``).
    ``occurred_at``: when the input changed; ``sent_at``: when it was signed (a spooled event keeps
    both). ``released``: whether the lock relay was energised at that moment (the device's own
    evidence that an opening was let in: an offline grant, fail-safe, an exit request); None when
    the device does not say.
    """

    device_uid: str
    event_id: str
    kind: DoorEventKind
    occurred_at: float
    sent_at: float
    released: bool | None = None
    v: int = PROTOCOL_VERSION

    KIND: ClassVar[TopicKind] = TopicKind.DOOR
    _REQUIRED: ClassVar[set[str]] = {"v", "device_uid", "event_id", "kind", "occurred_at", "sent_at"}
    _OPTIONAL: ClassVar[set[str]] = {"released"}

    def __post_init__(self) -> None:
        _normalise(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": self.v,
            "device_uid": self.device_uid,
            "event_id": self.event_id,
            "kind": str(self.kind),
            "occurred_at": self.occurred_at,
            "sent_at": self.sent_at,
        }
        if self.released is not None:
            out["released"] = self.released
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, cls._REQUIRED, cls._OPTIONAL, "door event")
        released = d.get("released")
        if released is not None and not isinstance(released, bool):
            raise _fail("released must be a boolean")
        return _construct(
            cls,
            device_uid=validate_device_uid(d["device_uid"]),
            event_id=_uuid4(d, "event_id"),
            kind=_enum(d, "kind", DoorEventKind),
            occurred_at=_check_timestamp(d["occurred_at"], "occurred_at"),
            sent_at=_check_timestamp(d["sent_at"], "sent_at"),
            released=released,
        )


Message = Detection | Heartbeat | Status | Command | DoorEvent
_BY_KIND: dict[TopicKind, type[Detection | Heartbeat | Status | Command | DoorEvent]] = {
    TopicKind.DETECTIONS: Detection,
    TopicKind.HEARTBEAT: Heartbeat,
    TopicKind.STATUS: Status,
    TopicKind.COMMANDS: Command,
    TopicKind.DOOR: DoorEvent,
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
