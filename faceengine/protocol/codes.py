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
    HELD_OPEN = "held_open"  # a door left open past its held_open_s after an authorised opening (alarm)
    EXIT_REQUEST = "exit_request"  # the request-to-exit button opened the door (the device, locally)
    DOOR_OPENED = "door_opened"  # the door position sensor: opened after a grant or an exit request
    DOOR_CLOSED = "door_closed"  # the door position sensor: closed (clears forced/held-open alarms)
    SUPPRESSED_REPEAT = "suppressed_repeat"  # the same person again at the same door within its cooldown
    ANTI_PASSBACK_RESET = "anti_passback_reset"  # an operator reset a person's presence in an area
    OFFLINE_ALLOWED = "offline_allowed"  # the device opened alone: fail-safe door while offline
    OFFLINE_MATCHED = "offline_matched"  # the device opened alone: a person on its signed allow-list
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
    #: the face's model version has no measured door threshold (only an unmeasured built-in value):
    #: it must not decide at a door; run ``manage.py calibrate_threshold`` (or set one) first
    MODEL_NOT_CALIBRATED = "model_not_calibrated"
    DOOR_UNASSIGNED = "door_unassigned"
    FORCED_OPEN = "forced_open"  # the door opened with no grant or exit request (alarm)
    ANTI_PASSBACK = "anti_passback"  # entering an area (hard anti-passback) the person entered and never left
    SECOND_FACTOR_REQUIRED = "second_factor_required"  # the door needs a PIN or card with the face: none (in time)
    SECOND_FACTOR_MISMATCH = "second_factor_mismatch"  # the PIN or card is not the recognised person's
    OFFLINE_DENIED = "offline_denied"  # the device kept the door shut alone: fail-secure (or no valid allow-list)
    # the device's own allow-list denials while offline (``offline_`` + the device's reason)
    OFFLINE_UNKNOWN_FACE = "offline_unknown_face"
    OFFLINE_AMBIGUOUS_MATCH = "offline_ambiguous_match"
    OFFLINE_OUTSIDE_SCHEDULE = "offline_outside_schedule"
    OFFLINE_NOT_YET_VALID = "offline_not_yet_valid"
    OFFLINE_EXPIRED = "offline_expired"
    OFFLINE_REVOKED = "offline_revoked"
    OFFLINE_LOCKDOWN = "offline_lockdown"
    OFFLINE_PRESENTATION_ATTACK = "offline_presentation_attack"
    OFFLINE_LIVENESS_NOT_MEASURED = "offline_liveness_not_measured"
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
    #: a device asked for a model bundle nobody offered it (or a file not in the bundle)
    MODEL_NOT_OFFERED = "model_not_offered"
    #: a device sent more requests than its budget allows (model downloads)
    RATE_LIMITED = "rate_limited"


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
    ALLOWLIST = "allowlist"  # one chunk of an offline allow-list version (faceengine.protocol.allowlist)
    REVOKE = "revoke"  # drop people from the device's allow-list now
    MODEL_OFFER = "model_offer"  # a signed model bundle to download, verify, self-test and switch to
    MODEL_ROLLBACK = "model_rollback"  # go back to the model the device ran before the offer


class ModelUpdateState(StrEnum):
    """Where a device is with a model offer (heartbeat ``model_update_state``; the server's per-device
    rollout status uses the same words, plus ``offered`` before the device answers)."""

    OFFERED = "offered"
    DOWNLOADING = "downloading"
    # signature and every file's SHA-256 checked, the model loaded and self-tested; with the reason
    # "waiting_for_faces": checked, and its self-test waits until the agent has seen enough faces
    VERIFIED = "verified"
    SWITCHED = "switched"  # detections carry the new version
    FAILED = "failed"  # download, verification, load or self-test failed: the old model stays
    ROLLED_BACK = "rolled_back"  # back on the previous model (a failure after the switch, or a command)


class DoorEventKind(StrEnum):
    """What a door's inputs report (:class:`~faceengine.protocol.payloads.DoorEvent`)."""

    OPENED = "opened"  # door position sensor: the door left its frame
    CLOSED = "closed"  # door position sensor: the door is back in its frame
    EXIT_REQUEST = "exit_request"  # request-to-exit button: the device released the lock itself


class SecondFactorKind(StrEnum):
    PIN = "pin"  # typed on the door's keypad
    CARD = "card"  # read from a card (a USB reader typing digits, or Wiegand)


class OfflineAction(StrEnum):
    OPEN = "open"
    DENY = "deny"


class OfflineMode(StrEnum):
    """What a door does when its link is down, as the device reports it in heartbeats."""

    SECURE = "secure"  # stay locked
    SAFE = "safe"  # release until the link returns
    ALLOWLIST = "allowlist"  # decide alone with a valid (signed, unexpired) allow-list


def offline_reason(*, action: OfflineAction | str, basis: str, reason: str | None) -> Reason:
    """The access-log reason of a decision a device took alone: an allow-list decision is
    ``offline_`` + the device's reason (when the code set has it); fail-safe / fail-secure and
    anything else are ``offline_allowed`` / ``offline_denied`` by the action."""
    opened = str(action) == str(OfflineAction.OPEN)
    if basis == "allowlist" and reason:
        try:
            code = Reason(f"offline_{reason}")
        except ValueError:
            code = None
        if code is not None and (code is Reason.OFFLINE_MATCHED) == opened:
            return code
    return Reason.OFFLINE_ALLOWED if opened else Reason.OFFLINE_DENIED
