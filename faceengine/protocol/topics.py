"""MQTT topics: ``acs/v1/devices/<uid>/<kind>``, and the unsigned last will."""

from __future__ import annotations

import re
from enum import StrEnum

from faceengine.protocol.codes import ProtocolError, Reason

TOPIC_ROOT = "acs/v1/devices"

#: Payload of the unsigned MQTT last will on the status topic.
OFFLINE_WILL = b"offline"

_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class TopicKind(StrEnum):
    DETECTIONS = "detections"
    HEARTBEAT = "heartbeat"
    STATUS = "status"
    COMMANDS = "commands"
    DOOR = "door"  # door position sensor and request-to-exit events (device -> server)


def validate_device_uid(uid: object) -> str:
    """Return ``uid`` if it is a valid device uid (1-64 chars of ``[A-Za-z0-9_.:-]``)."""
    if not isinstance(uid, str) or not _UID_RE.match(uid):
        raise ProtocolError(Reason.MALFORMED, f"invalid device uid {uid!r}")
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


def door_topic(uid: str) -> str:
    return topic_for(uid, TopicKind.DOOR)


def subscription_filter(kind: TopicKind | str) -> str:
    """MQTT filter for one kind over all devices, e.g. ``acs/v1/devices/+/detections``."""
    return f"{TOPIC_ROOT}/+/{TopicKind(kind)}"


def parse_topic(topic: str) -> tuple[str, TopicKind]:
    """Split ``acs/v1/devices/<uid>/<kind>`` into ``(uid, kind)``; anything else is malformed."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 5 or "/".join(parts[:3]) != TOPIC_ROOT:
        raise ProtocolError(Reason.MALFORMED, f"not an accessctl v1 topic: {topic!r}")
    try:
        kind = TopicKind(parts[4])
    except ValueError:
        raise ProtocolError(Reason.MALFORMED, f"unknown topic kind in {topic!r}") from None
    return validate_device_uid(parts[3]), kind
