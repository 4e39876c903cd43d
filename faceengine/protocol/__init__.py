"""The accessctl device wire protocol (v1): topics, payloads, signing. Shared by edge and server.

Use it as ``from faceengine import protocol as p``: this package re-exports every public name of
:mod:`~faceengine.protocol.limits`, :mod:`~faceengine.protocol.codes`, :mod:`~faceengine.protocol.topics`,
:mod:`~faceengine.protocol.validation`, :mod:`~faceengine.protocol.embedding`,
:mod:`~faceengine.protocol.payloads`, :mod:`~faceengine.protocol.signing`, :mod:`~faceengine.protocol.allowlist` and
:mod:`~faceengine.protocol.envelope`. It is imported by both the edge agent and the server
(``devices/``), so it uses only the standard library at import time. The Ed25519 helpers (:func:`generate_keypair`,
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
numbers, oversized fields all raise :class:`ProtocolError` with a :class:`Reason` code.
Replay protection is split: :func:`check_freshness` checks the timestamp window here; the server
enforces ``detection_id`` uniqueness in its database and the device remembers recent
``command_id`` values.
"""

from __future__ import annotations

from faceengine.protocol.allowlist import (
    ALLOWLIST_FORMAT,
    ALWAYS,
    MAX_CHUNK_DATA_BYTES,
    AllowlistChunk,
    AllowlistEntry,
    AllowlistHeader,
    Revocation,
    Template,
    allowlist_chunks,
    entry_may_pass,
    window_open,
)
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
    offline_reason,
)
from faceengine.protocol.embedding import decode_embedding, encode_embedding
from faceengine.protocol.envelope import (
    Envelope,
    canonical_json,
    check_detection_freshness,
    check_freshness,
    detection_is_fresh,
    loads_strict,
    open_envelope,
    open_message,
    seal,
    sign_envelope,
    split_envelope,
    verify_envelope,
)
from faceengine.protocol.limits import (
    COMMAND_WINDOW_S,
    DEFAULT_TRACK_PROBES,
    DETECTION_WINDOW_S,
    MAX_CROP_BYTES,
    MAX_EMBEDDING_DIM,
    MAX_MESSAGE_BYTES,
    MAX_PULSE_MS,
    MAX_QUALITY_KEYS,
    MAX_TRACK_PROBES,
    MIN_FACE_PX,
    PROTOCOL_VERSION,
)
from faceengine.protocol.payloads import (
    CARD_MAX_CHARS,
    PIN_MAX_DIGITS,
    PIN_MIN_DIGITS,
    Command,
    Detection,
    DoorEvent,
    Heartbeat,
    Message,
    OfflineDecision,
    SecondFactor,
    Status,
    TrackProbe,
    new_id,
    payload_from_dict,
)
from faceengine.protocol.signing import generate_keypair, load_private_key, public_key_b64
from faceengine.protocol.topics import (
    OFFLINE_WILL,
    TOPIC_ROOT,
    TopicKind,
    commands_topic,
    detections_topic,
    door_topic,
    heartbeat_topic,
    parse_topic,
    status_topic,
    subscription_filter,
    topic_for,
    validate_device_uid,
)
from faceengine.protocol.validation import validate_uuid4

__all__ = [
    "ALLOWLIST_FORMAT",
    "ALWAYS",
    "CARD_MAX_CHARS",
    "COMMAND_WINDOW_S",
    "DEFAULT_TRACK_PROBES",
    "DETECTION_WINDOW_S",
    "MAX_CHUNK_DATA_BYTES",
    "MAX_CROP_BYTES",
    "MAX_EMBEDDING_DIM",
    "MAX_MESSAGE_BYTES",
    "MAX_PULSE_MS",
    "MAX_QUALITY_KEYS",
    "MAX_TRACK_PROBES",
    "MIN_FACE_PX",
    "OFFLINE_WILL",
    "PIN_MAX_DIGITS",
    "PIN_MIN_DIGITS",
    "PROTOCOL_VERSION",
    "TOPIC_ROOT",
    "AllowlistChunk",
    "AllowlistEntry",
    "AllowlistHeader",
    "Command",
    "CommandKind",
    "Detection",
    "DeviceState",
    "DoorEvent",
    "DoorEventKind",
    "EmbeddingEncoding",
    "Envelope",
    "Heartbeat",
    "Message",
    "Mode",
    "ModelUpdateState",
    "OfflineAction",
    "OfflineDecision",
    "OfflineMode",
    "ProtocolError",
    "Reason",
    "Revocation",
    "SecondFactor",
    "SecondFactorKind",
    "Status",
    "Template",
    "TopicKind",
    "TrackProbe",
    "allowlist_chunks",
    "canonical_json",
    "check_detection_freshness",
    "check_freshness",
    "commands_topic",
    "decode_embedding",
    "detection_is_fresh",
    "detections_topic",
    "door_topic",
    "encode_embedding",
    "entry_may_pass",
    "generate_keypair",
    "heartbeat_topic",
    "load_private_key",
    "loads_strict",
    "new_id",
    "offline_reason",
    "open_envelope",
    "open_message",
    "parse_topic",
    "payload_from_dict",
    "public_key_b64",
    "seal",
    "sign_envelope",
    "split_envelope",
    "status_topic",
    "subscription_filter",
    "topic_for",
    "validate_device_uid",
    "validate_uuid4",
    "verify_envelope",
    "window_open",
]
