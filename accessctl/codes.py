"""Decision and reason codes shared by the policy, the audit log, the API and the dashboard.

Codes are StrEnum values stored as-is in the database and sent on the wire; never prose.
"""

from __future__ import annotations

from enum import StrEnum


class Decision(StrEnum):
    GRANT = "grant"
    DENY = "deny"


class Reason(StrEnum):
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
    # rejected messages
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


def choices(enum: type[StrEnum]) -> list[tuple[str, str]]:
    """Django ``choices`` for a StrEnum: value and a readable label."""
    return [(member.value, member.value.replace("_", " ")) for member in enum]


DECISION_CHOICES = choices(Decision)
REASON_CHOICES = choices(Reason)

__all__ = ["DECISION_CHOICES", "REASON_CHOICES", "Decision", "Reason", "choices"]
