"""Codes on the wire: the one :class:`Reason` enum, :class:`ProtocolError` and the payload vocabularies."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why a message was rejected, a detection denied or an access event recorded: THE code set.

    Stored as-is in the access log (``AccessEvent.reason``), sent on the wire (command
    ``reason``) and shown on the dashboard; :class:`ProtocolError` carries the rejection codes.
    """

    # grants
    MATCHED = "matched"
    REMOTE_UNLOCK = "remote_unlock"
    LOCKDOWN_LIFTED = "lockdown_lifted"
    # system records
    PERSON_ERASED = "person_erased"
    RETENTION_PURGE = "retention_purge"
    HELD_OPEN = "held_open"
    OFFLINE_ALLOWED = "offline_allowed"
    ENROLMENT_APPROVED = "enrolment_approved"  # a reviewer accepted an enrolment photo into the gallery
    ENROLMENT_REJECTED = "enrolment_rejected"  # a reviewer rejected an enrolment photo
    # policy denials
    UNKNOWN_FACE = "unknown_face"
    AMBIGUOUS_MATCH = "ambiguous_match"
    NOT_IN_GROUP = "not_in_group"
    OUTSIDE_SCHEDULE = "outside_schedule"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    SUSPENDED = "suspended"
    WATCHLIST = "watchlist"
    LOCKDOWN = "lockdown"
    LOW_QUALITY = "low_quality"
    DOOR_UNASSIGNED = "door_unassigned"
    OFFLINE_DENIED = "offline_denied"
    PRESENTATION_ATTACK = "presentation_attack"  # liveness judged the face an attack (photo, screen)
    LIVENESS_NOT_MEASURED = "liveness_not_measured"  # the door requires liveness; the detection has no score
    # rejected messages (the codes :class:`ProtocolError` carries, and the server's own checks)
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_DISABLED = "device_disabled"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    TOO_LARGE = "too_large"
    STALE_TIMESTAMP = "stale_timestamp"
    REPLAY = "replay"
    TOPIC_MISMATCH = "topic_mismatch"
    MODEL_MISMATCH = "model_mismatch"
    BAD_EMBEDDING = "bad_embedding"
    BAD_IMAGE = "bad_image"
    PROCESSING_ERROR = "processing_error"


class ProtocolError(ValueError):
    """A message that does not follow the protocol; ``code`` says why, ``message`` for logs."""

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = Reason(code)
        self.message = message


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
