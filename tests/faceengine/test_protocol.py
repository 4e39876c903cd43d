"""The shared wire protocol: topics, payload validation, canonical encoding, signatures."""

from __future__ import annotations

import base64
import json
import math
import struct
import time

import pytest

from faceengine import protocol as p
from faceengine.protocol import ProtocolError, Reason

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9"
UID = "door-1"


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return p.generate_keypair()


def crop_detection(**overrides: object) -> p.Detection:
    now = time.time()
    fields: dict[str, object] = {
        "device_uid": UID,
        "detection_id": p.new_id(),
        "captured_at": now - 0.2,
        "sent_at": now,
        "detector_score": 0.998,
        "box": (10, 20, 110, 140),
        "quality": {"face_px": 100.0, "sharpness": 0.4, "yaw": -3.5},
    }
    fields.update(overrides)
    return p.Detection.with_crop(jpeg=JPEG, **fields)


def embedding_detection(encoding: str = "f32", values: list[float] | None = None) -> p.Detection:
    now = time.time()
    return p.Detection.with_embedding(
        values=values or [math.sin(i) for i in range(512)],
        model_version="arcface-r100@1",
        encoding=encoding,
        device_uid=UID,
        detection_id=p.new_id(),
        captured_at=now,
        sent_at=now,
        detector_score=0.9,
        box=(0, 0, 50, 60),
        quality={},
    )


def expect(code: Reason, fn, *args, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


# -- topics ---------------------------------------------------------------------------------


def test_topics_and_parse_round_trip() -> None:
    assert p.detections_topic(UID) == "acs/v1/devices/door-1/detections"
    assert p.heartbeat_topic(UID) == "acs/v1/devices/door-1/heartbeat"
    assert p.status_topic(UID) == "acs/v1/devices/door-1/status"
    assert p.commands_topic(UID) == "acs/v1/devices/door-1/commands"
    assert p.subscription_filter("detections") == "acs/v1/devices/+/detections"
    for kind in p.TopicKind:
        assert p.parse_topic(p.topic_for(UID, kind)) == (UID, kind)


@pytest.mark.parametrize(
    "topic",
    [
        "acs/v1/devices/door-1",
        "acs/v2/devices/door-1/detections",
        "acs/v1/devices/door-1/detections/extra",
        "acs/v1/devices/+/detections",
        "acs/v1/devices/#/detections",
        "acs/v1/devices//detections",
        "acs/v1/devices/door-1/unknown",
        "",
    ],
)
def test_parse_topic_rejects(topic: str) -> None:
    expect(Reason.MALFORMED, p.parse_topic, topic)


def test_topic_for_rejects_wildcards_in_uid() -> None:
    expect(Reason.MALFORMED, p.topic_for, "a/b", "detections")
    expect(Reason.MALFORMED, p.topic_for, "a+", "detections")


# -- payload round trips ----------------------------------------------------------------------


def test_crop_detection_round_trip(keys: tuple[str, str]) -> None:
    priv, pub = keys
    det = crop_detection()
    raw = p.seal(det, priv)
    got = p.open_message(p.detections_topic(UID), raw, pub, window_s=p.DETECTION_WINDOW_S)
    assert got == det
    assert got.crop_jpeg == JPEG
    assert json.loads(raw)["payload"]["crop_jpeg"] == base64.b64encode(JPEG).decode()


@pytest.mark.parametrize(("encoding", "tolerance"), [("f32", 1e-6), ("f16", 1e-3), ("int8", 1e-2)])
def test_embedding_detection_round_trip(keys: tuple[str, str], encoding: str, tolerance: float) -> None:
    priv, pub = keys
    values = [math.sin(i) for i in range(512)]
    det = embedding_detection(encoding, values)
    got = p.open_message(p.detections_topic(UID), p.seal(det, priv), pub)
    assert got == det
    assert got.dim == 512 and got.model_version == "arcface-r100@1"
    assert (got.embedding_scale is not None) == (encoding == "int8")
    decoded = got.embedding_values()
    assert max(abs(a - b) for a, b in zip(decoded, values, strict=True)) < tolerance


def test_embedding_numpy_input_matches_list() -> None:
    np = pytest.importorskip("numpy")
    values = [math.cos(i) for i in range(128)]
    assert p.encode_embedding(np.asarray(values, dtype=np.float32)) == p.encode_embedding(values)


def test_embedding_sizes() -> None:
    sizes = {enc: len(p.encode_embedding([0.5] * 512, enc)[0]) for enc in ("f32", "f16", "int8")}
    assert sizes == {"f32": 2048, "f16": 1024, "int8": 512}


def test_offline_decision_round_trip(keys: tuple[str, str]) -> None:
    priv, pub = keys
    decision = p.OfflineDecision(action=p.OfflineAction.DENY, basis="fail_secure", decided_at=time.time())
    det = crop_detection(offline_decision=decision)
    got = p.open_message(p.detections_topic(UID), p.seal(det, priv), pub)
    assert got.offline_decision == decision


def test_heartbeat_status_command_round_trip(keys: tuple[str, str]) -> None:
    priv, pub = keys
    now = time.time()
    hb = p.Heartbeat(
        device_uid=UID,
        sent_at=now,
        agent_version="0.1.0",
        model_version=None,
        camera_fps=12,
        spool_depth=3,
        spool_dropped=1,
        uptime_s=60,
        temperature_c=48.5,
        bytes_per_detection=6123.0,
    )
    assert p.open_message(p.heartbeat_topic(UID), p.seal(hb, priv), pub) == hb
    assert isinstance(hb.camera_fps, float)  # normalised by the strict parser
    st = p.Status(device_uid=UID, state=p.DeviceState.ONLINE, sent_at=now, agent_version="0.1.0")
    assert p.open_message(p.status_topic(UID), p.seal(st, priv), pub) == st
    cmd = p.Command(
        device_uid=UID,
        command=p.CommandKind.OPEN,
        command_id=p.new_id(),
        detection_id=p.new_id(),
        issued_at=now,
        reason="granted",
        pulse_ms=800,
    )
    assert p.open_message(p.commands_topic(UID), p.seal(cmd, priv), pub, window_s=30) == cmd


def test_last_will_is_unsigned_offline(keys: tuple[str, str]) -> None:
    got = p.open_message(p.status_topic(UID), p.OFFLINE_WILL, keys[1])
    assert got.state is p.DeviceState.OFFLINE and got.signed is False and got.device_uid == UID
    # ... but only on the status topic
    expect(
        Reason.MALFORMED,
        p.open_message,
        p.detections_topic(UID),
        b"offline",
        keys[1],
    )


# -- canonical encoding -----------------------------------------------------------------------


def test_canonical_json_is_stable() -> None:
    a = {"b": 1, "a": [1.5, "é", None], "c": {"z": True, "y": 0.1}}
    b = {"c": {"y": 0.1, "z": True}, "a": [1.5, "é", None], "b": 1}
    assert p.canonical_json(a) == p.canonical_json(b)
    assert p.canonical_json(a) == '{"a":[1.5,"é",null],"b":1,"c":{"y":0.1,"z":true}}'.encode()
    # parse -> re-canonicalise is the identity (what the verifier relies on)
    assert p.canonical_json(json.loads(p.canonical_json(a))) == p.canonical_json(a)
    expect(Reason.MALFORMED, p.canonical_json, {"x": float("nan")})


def test_envelope_key_order_and_spacing_do_not_matter(keys: tuple[str, str]) -> None:
    priv, pub = keys
    payload = crop_detection().to_dict()
    doc = json.loads(p.sign_envelope(payload, priv))
    pretty = json.dumps(
        {"sig": doc["sig"], "payload": dict(reversed(list(doc["payload"].items())))},
        indent=2,
    )
    assert p.open_envelope(pretty.encode(), pub) == payload


# -- signatures -------------------------------------------------------------------------------


def test_tampered_payload_is_bad_signature(keys: tuple[str, str]) -> None:
    priv, pub = keys
    doc = json.loads(p.seal(crop_detection(), priv))
    doc["payload"]["box"] = [0, 0, 999, 999]
    expect(Reason.BAD_SIGNATURE, p.open_envelope, json.dumps(doc).encode(), pub)


def test_wrong_key_is_bad_signature(keys: tuple[str, str]) -> None:
    priv, _ = keys
    _, other_pub = p.generate_keypair()
    expect(
        Reason.BAD_SIGNATURE,
        p.open_envelope,
        p.seal(crop_detection(), priv),
        other_pub,
    )


def test_bad_sig_field(keys: tuple[str, str]) -> None:
    priv, pub = keys
    doc = json.loads(p.seal(crop_detection(), priv))
    doc["sig"] = base64.b64encode(b"\x00" * 10).decode()
    expect(Reason.BAD_SIGNATURE, p.open_envelope, json.dumps(doc).encode(), pub)
    doc["sig"] = "not base64!"
    expect(Reason.BAD_SIGNATURE, p.open_envelope, json.dumps(doc).encode(), pub)


def test_private_key_forms(keys: tuple[str, str]) -> None:
    priv, pub = keys
    key = p.load_private_key(priv)
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    for form in (priv, priv.encode(), raw, base64.b64encode(raw).decode(), key):
        assert p.public_key_b64(form) == pub
        assert p.open_envelope(p.sign_envelope({"x": 1}, form), pub) == {"x": 1}


def test_topic_mismatch(keys: tuple[str, str]) -> None:
    priv, pub = keys
    raw = p.seal(crop_detection(), priv)
    expect(
        Reason.TOPIC_MISMATCH,
        p.open_message,
        p.detections_topic("door-2"),
        raw,
        pub,
    )


def test_freshness(keys: tuple[str, str]) -> None:
    now = 1_700_000_000.0
    p.check_freshness(now - 29, now, 30)
    p.check_freshness(now + 29, now, 30)
    expect(Reason.STALE_TIMESTAMP, p.check_freshness, now - 31, now, 30)
    expect(Reason.STALE_TIMESTAMP, p.check_freshness, now + 31, now, 30)
    expect(Reason.STALE_TIMESTAMP, p.check_freshness, float("nan"), now, 30)
    priv, pub = keys
    raw = p.seal(crop_detection(sent_at=time.time() - 120), priv)
    expect(
        Reason.STALE_TIMESTAMP,
        p.open_message,
        p.detections_topic(UID),
        raw,
        pub,
        window_s=30,
    )


# -- size limits ------------------------------------------------------------------------------


def test_message_too_large(keys: tuple[str, str]) -> None:
    priv, pub = keys
    expect(
        Reason.TOO_LARGE,
        p.open_envelope,
        b"{" + b" " * p.MAX_MESSAGE_BYTES + b"}",
        pub,
    )
    expect(
        Reason.TOO_LARGE,
        p.sign_envelope,
        {"blob": "x" * p.MAX_MESSAGE_BYTES},
        priv,
    )


def test_crop_too_large() -> None:
    big = b"\xff\xd8\xff" + b"\x00" * p.MAX_CROP_BYTES
    expect(
        Reason.TOO_LARGE,
        crop_detection().__class__.with_crop,
        jpeg=big,
        **_base_fields(),
    )
    payload = crop_detection().to_dict()
    payload["crop_jpeg"] = base64.b64encode(big).decode()
    expect(Reason.TOO_LARGE, p.Detection.from_dict, payload)


def _base_fields() -> dict[str, object]:
    d = crop_detection()
    return {
        k: getattr(d, k)
        for k in (
            "device_uid",
            "detection_id",
            "captured_at",
            "sent_at",
            "detector_score",
            "box",
            "quality",
        )
    }


# -- strict validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("box", [1, 2, 3]),
        ("box", [1.0, 2, 30, 40]),
        ("box", [30, 2, 10, 40]),
        ("box", [True, 2, 30, 40]),
        ("detector_score", "0.9"),
        ("detector_score", True),
        ("detector_score", 1.5),
        ("captured_at", None),
        ("captured_at", -1),
        ("detection_id", "not-a-uuid"),
        ("detection_id", "00000000-0000-1000-8000-000000000000"),  # uuid1, not 4
        ("device_uid", 5),
        ("device_uid", "a/b"),
        ("quality", {"face_px": "big"}),
        ("quality", {"Face PX": 1.0}),
        ("quality", [1.0]),
        ("mode", "fullframe"),
        ("unexpected", 1),
    ],
)
def test_detection_wrong_types(key: str, value: object) -> None:
    payload = crop_detection().to_dict()
    payload[key] = value
    expect(Reason.MALFORMED, p.Detection.from_dict, payload)


def test_missing_key_and_bad_version() -> None:
    payload = crop_detection().to_dict()
    del payload["box"]
    expect(Reason.MALFORMED, p.Detection.from_dict, payload)
    for version in (2, "1", True, None):
        payload = crop_detection().to_dict()
        payload["v"] = version
        expect(Reason.BAD_VERSION, p.Detection.from_dict, payload)


def test_crop_must_be_jpeg() -> None:
    payload = crop_detection().to_dict()
    payload["crop_jpeg"] = base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()
    expect(Reason.BAD_IMAGE, p.Detection.from_dict, payload)
    payload["crop_jpeg"] = "@@@"
    expect(Reason.BAD_IMAGE, p.Detection.from_dict, payload)
    del payload["crop_jpeg"]
    expect(Reason.BAD_IMAGE, p.Detection.from_dict, payload)


def test_modes_do_not_mix() -> None:
    payload = crop_detection().to_dict()
    payload["embedding"] = embedding_detection().to_dict()["embedding"]
    expect(Reason.MALFORMED, p.Detection.from_dict, payload)


def test_nan_in_embedding_rejected() -> None:
    values = [0.1] * 16
    expect(Reason.BAD_EMBEDDING, p.encode_embedding, [*values, float("nan")])
    payload = embedding_detection().to_dict()
    nan_vec = struct.pack("<4f", 0.1, float("nan"), 0.2, 0.3)
    payload.update(embedding=base64.b64encode(nan_vec).decode(), dim=4)
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, payload)
    inf_vec = struct.pack("<4e", 0.1, float("inf"), 0.2, 0.3)
    payload.update(embedding=base64.b64encode(inf_vec).decode(), embedding_encoding="f16")
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, payload)


@pytest.mark.parametrize(
    "change",
    [
        {"dim": 511},  # length mismatch
        {"dim": 0},
        {"dim": True},
        {"embedding_encoding": "int8"},  # int8 without scale
        {"embedding_scale": 0.5},  # scale on f32
        {"embedding": "%%%"},
        {"embedding": base64.b64encode(b"\x00" * 2048).decode()},  # all zeros
    ],
)
def test_bad_embedding(change: dict[str, object]) -> None:
    payload = embedding_detection().to_dict()
    payload.update(change)
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, payload)


def test_embedding_mode_needs_model_version() -> None:
    payload = embedding_detection().to_dict()
    del payload["model_version"]
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, payload)


def test_int8_numpy_fast_path_gives_the_same_bytes_and_checks() -> None:
    """The vectorised int8 encoding of a numpy vector (allow-list compiles) equals the loop's."""
    np = pytest.importorskip("numpy")
    vectors = np.random.default_rng(3).normal(size=(500, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ties = np.zeros(128, dtype=np.float32)
    ties[:4] = [127.0, 0.5, 1.5, -2.5]  # scale 1: exact halves round to even, as Python's round()
    for vector in [*vectors, ties]:
        assert p.encode_embedding(vector, "int8") == p.encode_embedding(vector.tolist(), "int8")
        assert p.Template.from_values(vector) == p.Template.from_values(vector.tolist())
    for bad in (np.zeros(128, dtype=np.float32), np.array([1.0, np.nan]), np.zeros(0), np.ones(5000)):
        with pytest.raises(ProtocolError) as info:
            p.encode_embedding(bad, "int8")
        assert info.value.code is Reason.BAD_EMBEDDING


def test_int8_zero_scale_rejected() -> None:
    payload = embedding_detection("int8").to_dict()
    payload["embedding_scale"] = 0.0
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, payload)


def test_command_validation() -> None:
    good = p.Command(
        device_uid=UID,
        command="deny",
        command_id=p.new_id(),
        issued_at=time.time(),
        reason="unknown_face",
    ).to_dict()
    assert p.Command.from_dict(good).command is p.CommandKind.DENY
    for change in (
        {"command": "explode"},
        {"command": "open", "pulse_ms": 0},
        {"pulse_ms": p.MAX_PULSE_MS + 1},
        {"reason": "Not A Code"},
        {"data": []},
        {"detection_id": "x"},
    ):
        expect(Reason.MALFORMED, p.Command.from_dict, {**good, **change})


def test_constructor_validates() -> None:
    expect(Reason.MALFORMED, crop_detection, box=(0, 0, 0, 0))
    expect(
        Reason.MALFORMED,
        p.Command,
        device_uid=UID,
        command="open",
        command_id="x",
        issued_at=1.0,
        reason="r",
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        b"[]",
        b'{"payload": {}}',
        b'{"payload": [], "sig": ""}',
        b'{"payload": {"a": 1, "a": 2}, "sig": ""}',
        b'{"payload": {"a": NaN}, "sig": ""}',
        b'{"payload": {}, "sig": "", "extra": 1}',
        b"[" * 100_000,
    ],
)
def test_malformed_envelopes(keys: tuple[str, str], raw: bytes) -> None:
    expect(Reason.MALFORMED, p.open_envelope, raw, keys[1])


def test_protocol_imports_only_stdlib() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import faceengine.protocol; "
        "bad = [m for m in ('cryptography', 'numpy', 'django', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- liveness evidence (optional: older agents send none) ----------------------------------------


def test_liveness_evidence_round_trips_signed_in_both_modes(keys: tuple[str, str]) -> None:
    priv, pub = keys
    live = {"liveness": 0.93, "liveness_frames": 7, "liveness_model": "minifasnet-v2+v1se@1"}
    for det in (
        crop_detection(**live),
        p.Detection.with_embedding(values=[0.1] * 128, model_version="sface@1", **_fields(), **live),
    ):
        raw = p.seal(det, priv)
        got = p.open_message(p.detections_topic(UID), raw, pub, window_s=p.DETECTION_WINDOW_S)
        assert (got.liveness, got.liveness_frames, got.liveness_model) == (0.93, 7, "minifasnet-v2+v1se@1")
        tampered = json.loads(raw)
        tampered["payload"]["liveness"] = 0.99  # the score is inside the signature
        expect(Reason.BAD_SIGNATURE, p.open_message, p.detections_topic(UID), json.dumps(tampered).encode(), pub)


def test_a_detection_without_liveness_is_not_measured() -> None:
    det = p.Detection.from_dict(crop_detection().to_dict())
    assert det.liveness is None and det.liveness_frames is None
    assert "liveness" not in crop_detection().to_dict()


@pytest.mark.parametrize(
    "fields",
    [
        {"liveness": 1.5, "liveness_frames": 3},
        {"liveness": -0.1, "liveness_frames": 3},
        {"liveness": float("nan"), "liveness_frames": 3},
        {"liveness": True, "liveness_frames": 3},
        {"liveness": 0.5},
        {"liveness": 0.5, "liveness_frames": 0},
        {"liveness": 0.5, "liveness_frames": 10_001},
        {"liveness_frames": 3},
        {"liveness_model": "x"},
    ],
)
def test_bad_liveness_evidence_is_malformed(fields: dict[str, object]) -> None:
    data = {**crop_detection().to_dict(), **fields}
    expect(Reason.MALFORMED, p.Detection.from_dict, data)


def _fields() -> dict[str, object]:
    d = crop_detection()
    return {
        k: getattr(d, k)
        for k in ("device_uid", "detection_id", "captured_at", "sent_at", "detector_score", "box", "quality")
    }


def test_a_stored_crop_parses_without_its_bytes_only_when_asked() -> None:
    """The server stages a verified crop-mode detection without its JPEG (stored apart)."""
    staged = crop_detection().to_dict()
    del staged["crop_jpeg"]
    expect(Reason.BAD_IMAGE, p.Detection.from_dict, staged)
    det = p.Detection.from_dict(staged, crop_stored=True)
    assert det.mode == p.Mode.CROP and det.crop_jpeg is None


# -- door events (issue 23) -------------------------------------------------------------------


def test_door_event_round_trip_signed(keys: tuple[str, str]) -> None:
    private, public = keys
    now = time.time()
    event = p.DoorEvent(
        device_uid=UID, event_id=p.new_id(), kind="exit_request", occurred_at=now, sent_at=now, released=True
    )
    assert p.door_topic(UID) == "acs/v1/devices/door-1/door"
    opened = p.open_message(p.door_topic(UID), p.seal(event, p.load_private_key(private)), public, window_s=30)
    assert opened == event and opened.kind is p.DoorEventKind.EXIT_REQUEST
    bare = p.DoorEvent(device_uid=UID, event_id=p.new_id(), kind="closed", occurred_at=now, sent_at=now)
    assert "released" not in bare.to_dict() and bare.released is None


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "kicked"},
        {"released": 1},
        {"event_id": "not-a-uuid"},
        {"extra": True},
        {"occurred_at": float("nan")},
    ],
)
def test_door_event_rejects(change: dict) -> None:
    now = time.time()
    data = {"v": 1, "device_uid": UID, "event_id": p.new_id(), "kind": "opened", "occurred_at": now, "sent_at": now}
    expect(Reason.MALFORMED, p.payload_from_dict, "door", {**data, **change})


def test_second_factor_round_trip_and_rules() -> None:
    now = time.time()
    det = crop_detection().__class__.from_dict(
        {**crop_detection().to_dict(), "second_factor": {"kind": "pin", "value": "0042", "entered_at": now}}
    )
    assert det.second_factor == p.SecondFactor(kind="pin", value="0042", entered_at=now)
    assert det.to_dict()["second_factor"] == {"kind": "pin", "value": "0042", "entered_at": now}
    assert "0042" not in repr(det)
    for bad in ({"kind": "pin", "value": "12"}, {"kind": "pin", "value": "12a4"}, {"kind": "card", "value": "x" * 33},
                {"kind": "iris", "value": "1234"}):  # fmt: skip
        expect(Reason.MALFORMED, p.SecondFactor.from_dict, {**bad, "entered_at": now})
