"""Hostile device input: fuzzed payloads, forged and replayed signatures, devices speaking for others.

Every message on a detections topic must end in exactly one AccessEvent (a decision, or a denial with
a clear reason code) and never in an exception. The fuzz calls ``devices.ingest.detection_ingest``
directly with the decision run inline (fast); one test goes through the real broker and bridge.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from accessctl.models import AccessEvent, Door
from devices import ingest
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.detections import detection_decide
from recognition.models import EMBEDDING_DIMS, InboundDetection

SFACE = "sface-2021dec-int8bq"
UID_A, UID_B = "fuzz-cam-a", "fuzz-cam-b"
DECIDED = {"grant", "deny"}

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _jpeg(width: int = 112, height: int = 112, quality: int = 80) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 110, 100)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` (a decompression bomb header)."""
    data = bytearray(_jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.fixture
def devices(db, monkeypatch, media_root) -> dict[str, Any]:
    """Two provisioned devices at one door; decisions run inline instead of through Celery."""
    monkeypatch.setattr(
        ingest, "decision_enqueue", lambda detection_id, queue=None: detection_decide(detection_id=detection_id)
    )
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)  # no broker round trip
    door = Door.objects.create(name="Fuzz door")
    keys = {uid: p.load_private_key(device_provision(uid=uid, door=door).private_key_pem) for uid in (UID_A, UID_B)}
    return {"door": door, "keys": keys}


@pytest.fixture
def ingest_once(devices, django_capture_on_commit_callbacks) -> Any:
    """``ingest_once(uid, raw)`` -> (result, new events); asserts no staged leftovers."""

    seen: set[bytes] = set()  # hypothesis examples share the test's database

    def run(uid: str, raw: bytes, *, fresh: bool = False) -> tuple[str, list[AccessEvent]]:
        if fresh:
            assume(raw not in seen)
        seen.add(raw)
        last = AccessEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        with django_capture_on_commit_callbacks(execute=True):
            result = ingest.detection_ingest(device_uid=uid, raw=raw)
        assert not InboundDetection.objects.exists(), "a detection was staged but not decided"
        return str(result), list(AccessEvent.objects.filter(pk__gt=last))

    return run


def _base_payload(mode: str, detection_id: str, uid: str = UID_A) -> dict[str, Any]:
    now = time.time()
    common = {"device_uid": uid, "detection_id": detection_id, "captured_at": now, "sent_at": now,
              "detector_score": 0.99, "box": (10, 10, 90, 110), "quality": {"face_px": 100.0}}  # fmt: skip
    if mode == "crop":
        return p.Detection.with_crop(jpeg=_jpeg(), **common).to_dict()
    vector = [((i * 37) % 11 - 5) / 5.0 + 0.01 for i in range(EMBEDDING_DIMS[SFACE])]
    return p.Detection.with_embedding(values=vector, model_version=SFACE, **common).to_dict()


def _envelope(payload: Any, key: Any) -> bytes:
    """Sign whatever ``payload`` is; when it cannot be canonical JSON, send it with a junk signature."""
    try:
        return p.sign_envelope(payload, key)
    except p.ProtocolError:
        body = {"payload": payload, "sig": base64.b64encode(b"\x00" * 64).decode()}
        return json.dumps(body, default=str).encode()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=12,
)
FIELDS = [*sorted(p.Detection._REQUIRED | p.Detection._OPTIONAL), "extra"]


def _check_one_event(result: str, events: list[AccessEvent]) -> AccessEvent:
    assert len(events) == 1, f"{result}: {len(events)} events"
    event = events[0]
    assert event.decision in DECIDED and event.reason
    if result != "staged":
        assert event.decision == "deny"
        assert result in {event.reason, "stale_timestamp"}
    return event


@FUZZ
@given(raw=st.binary(max_size=2048) | st.builds(lambda v: json.dumps(v).encode(), json_values))
def test_garbage_bytes_are_rejected_and_recorded_once(ingest_once, raw: bytes) -> None:
    result, events = ingest_once(UID_A, raw, fresh=True)
    event = _check_one_event(result, events)
    assert event.reason in {"malformed", "too_large", "bad_signature", "bad_version"}
    assert ingest_once(UID_A, raw)[1] == []  # a redelivered copy of the same bad message: recorded once


@FUZZ
@given(
    mode=st.sampled_from(["crop", "embedding"]),
    detection_id=st.uuids(version=4).map(str),
    field=st.sampled_from(FIELDS),
    value=json_values,
    delete=st.booleans(),
)
def test_signed_but_malformed_payloads_are_rejected_or_decided_never_crash(
    devices, ingest_once, mode: str, detection_id: str, field: str, value: Any, delete: bool
) -> None:
    """The device's own key signs a payload with one field removed or replaced by anything."""
    payload = _base_payload(mode, detection_id)
    if delete:
        payload.pop(field, None)
    else:
        payload[field] = value
    raw = _envelope(payload, devices["keys"][UID_A])
    assume(not AccessEvent.objects.filter(detection_id=detection_id).exists())
    result, events = ingest_once(UID_A, raw, fresh=True)
    _check_one_event(result, events)


@FUZZ
@given(
    encoding=st.sampled_from(["f32", "f16", "int8"]),
    dim=st.integers(min_value=1, max_value=600),
    fill=st.sampled_from([0.5, float("nan"), float("inf"), 0.0, 1e30]),
    model_version=st.sampled_from([SFACE, "facenet-casia-20180408", "no-such-model"]),
)
def test_bad_embeddings_are_denied_with_a_reason(
    devices, ingest_once, encoding: str, dim: int, fill: float, model_version: str
) -> None:
    import struct

    fmt = {"f32": "f", "f16": "e", "int8": "b"}[encoding]
    value = 3 if encoding == "int8" else fill
    try:
        data = struct.pack(f"<{dim}{fmt}", *([value] * dim))
    except (OverflowError, struct.error):
        data = b"\x00" * dim * struct.calcsize(fmt)
    payload = _base_payload("embedding", str(uuid.uuid4()))
    payload.update(embedding=base64.b64encode(data).decode(), embedding_encoding=encoding, dim=dim,
                   model_version=model_version, embedding_scale=0.01 if encoding == "int8" else None)  # fmt: skip
    if payload["embedding_scale"] is None:
        del payload["embedding_scale"]
    result, events = ingest_once(UID_A, _envelope(payload, devices["keys"][UID_A]), fresh=True)
    event = _check_one_event(result, events)
    usable = EMBEDDING_DIMS.get(model_version) == dim and fill not in (0.0,) and fill == fill and abs(fill) < 1e4
    if not usable and encoding != "int8":
        assert event.decision == "deny"
        assert event.reason in {"bad_embedding", "model_mismatch", "malformed"}


@pytest.mark.parametrize(
    ("jpeg", "reason"),
    [
        pytest.param(b"\xff\xd8\xff" + b"\x00" * 500, "bad_image", id="jpeg-magic-garbage"),
        pytest.param(_jpeg()[:200], "bad_image", id="truncated-jpeg"),
        pytest.param(_jpeg_claiming(5000, 5000), "bad_image", id="header-5000x5000"),
        pytest.param(_jpeg_claiming(65000, 65000), "bad_image", id="decompression-bomb-header"),
        pytest.param(b"GIF89a" + b"\x00" * 100, "bad_image", id="not-a-jpeg"),
        pytest.param(b"\xff\xd8\xff" + b"\x00" * (p.MAX_CROP_BYTES + 10), "too_large", id="oversized-crop"),
    ],
)
def test_hostile_crops_are_denied_with_a_reason(devices, ingest_once, jpeg: bytes, reason: str) -> None:
    payload = _base_payload("crop", str(uuid.uuid4()))
    payload["crop_jpeg"] = base64.b64encode(jpeg).decode()
    result, events = ingest_once(UID_A, _envelope(payload, devices["keys"][UID_A]))
    event = _check_one_event(result, events)
    assert event.reason == reason


def test_unforeseen_processing_failure_is_denied_not_retried_forever(devices, ingest_once, monkeypatch) -> None:
    """A bug or engine failure on one detection ends in a ``processing_error`` denial; the detection
    does not stay staged (where the sweep would re-enqueue it forever)."""

    def broken(payload: dict, crop_name: str) -> None:
        raise RuntimeError("engine exploded")

    monkeypatch.setattr("recognition.detections.probe_vector", broken)
    payload = _base_payload("embedding", str(uuid.uuid4()))
    result, events = ingest_once(UID_A, p.sign_envelope(payload, devices["keys"][UID_A]))
    event = _check_one_event(result, events)
    assert (event.decision, event.reason) == ("deny", "processing_error")
    assert "engine exploded" in event.details["error"]


def test_huge_message_is_rejected_as_too_large(ingest_once) -> None:
    raw = b'{"payload": {"x": "' + b"A" * (p.MAX_MESSAGE_BYTES + 1) + b'"}, "sig": ""}'
    result, events = ingest_once(UID_A, raw)
    assert _check_one_event(result, events).reason == "too_large"


@pytest.mark.parametrize("captured_at", [1e12, 1e300, 253402300800.0])
def test_absurd_capture_time_from_an_authentic_device_is_denied(devices, ingest_once, captured_at: float) -> None:
    payload = _base_payload("embedding", str(uuid.uuid4()))
    payload["captured_at"] = captured_at
    result, events = ingest_once(UID_A, _envelope(payload, devices["keys"][UID_A]))
    assert _check_one_event(result, events).decision == "deny"


def test_forged_signature_is_denied_and_recorded_once(devices, ingest_once) -> None:
    forger = p.load_private_key(p.generate_keypair()[0])
    payload = _base_payload("embedding", str(uuid.uuid4()))
    raw = p.sign_envelope(payload, forger)
    result, events = ingest_once(UID_A, raw)
    event = _check_one_event(result, events)
    assert event.reason == "bad_signature"
    assert event.details["claimed_detection_id"] == payload["detection_id"]
    assert ingest_once(UID_A, raw)[1] == []
    # The forged message did not burn the genuine detection id: the real device can still use it.
    result, events = ingest_once(UID_A, p.sign_envelope(payload, devices["keys"][UID_A]))
    assert result == "staged"
    assert str(_check_one_event(result, events).detection_id) == payload["detection_id"]


def test_tampered_payload_fails_the_signature(devices, ingest_once) -> None:
    raw = p.sign_envelope(_base_payload("embedding", str(uuid.uuid4())), devices["keys"][UID_A])
    doc = json.loads(raw)
    doc["payload"]["detector_score"] = 0.5
    result, events = ingest_once(UID_A, json.dumps(doc).encode())
    assert _check_one_event(result, events).reason == "bad_signature"


def test_replay_of_a_decided_detection_is_recorded_once(devices, ingest_once) -> None:
    payload = _base_payload("embedding", str(uuid.uuid4()))
    raw = p.sign_envelope(payload, devices["keys"][UID_A])
    assert ingest_once(UID_A, raw)[0] == "staged"
    result, events = ingest_once(UID_A, raw)
    event = _check_one_event(result, events)
    assert (event.reason, event.details["replayed_detection_id"]) == ("replay", payload["detection_id"])
    assert ingest_once(UID_A, raw)[1] == []  # replayed again: still one replay record
    # Same detection id, fresh signature and timestamp: also a replay, never a second decision.
    payload["sent_at"] = time.time()
    result, events = ingest_once(UID_A, p.sign_envelope(payload, devices["keys"][UID_A]))
    assert _check_one_event(result, events).reason == "replay"


def test_stale_message_is_denied(devices, ingest_once) -> None:
    payload = _base_payload("embedding", str(uuid.uuid4()))
    payload["sent_at"] = payload["captured_at"] = time.time() - 3600
    result, events = ingest_once(UID_A, p.sign_envelope(payload, devices["keys"][UID_A]))
    assert _check_one_event(result, events).reason == "stale_timestamp"


def test_device_publishing_on_another_devices_topic_is_denied(devices, ingest_once) -> None:
    keys = devices["keys"]
    # A's own message (payload says A) on B's topic: B's key does not verify it.
    own = p.sign_envelope(_base_payload("embedding", str(uuid.uuid4()), uid=UID_A), keys[UID_A])
    result, events = ingest_once(UID_B, own)
    event = _check_one_event(result, events)
    assert (event.reason, event.device_uid) == ("bad_signature", UID_B)
    # A impersonates B in the payload, signed with A's key, on B's topic: still not B's signature.
    impersonated = _base_payload("embedding", str(uuid.uuid4()), uid=UID_B)
    result, events = ingest_once(UID_B, p.sign_envelope(impersonated, keys[UID_A]))
    assert _check_one_event(result, events).reason == "bad_signature"
    # A signs a payload naming B and sends it on its own topic: authentic, but the topic does not match.
    mismatch = _base_payload("embedding", str(uuid.uuid4()), uid=UID_B)
    result, events = ingest_once(UID_A, p.sign_envelope(mismatch, keys[UID_A]))
    event = _check_one_event(result, events)
    assert (event.reason, str(event.detection_id)) == ("topic_mismatch", mismatch["detection_id"])


def test_unknown_and_disabled_devices_are_denied(devices, ingest_once) -> None:
    raw = p.sign_envelope(_base_payload("embedding", str(uuid.uuid4()), uid="ghost-cam"), devices["keys"][UID_A])
    assert _check_one_event(*ingest_once("ghost-cam", raw)).reason == "unknown_device"
    EdgeDevice.objects.filter(uid=UID_B).update(status=EdgeDevice.Status.DISABLED)
    raw = p.sign_envelope(_base_payload("embedding", str(uuid.uuid4()), uid=UID_B), devices["keys"][UID_B])
    assert _check_one_event(*ingest_once(UID_B, raw)).reason == "device_disabled"


def test_detections_topic_with_an_invalid_device_uid_is_recorded(devices, django_capture_on_commit_callbacks) -> None:
    """``acs/v1/devices/+/detections`` also matches uids the protocol forbids; such a message is
    still a detection message and must leave an audit record, not only a log line."""
    with django_capture_on_commit_callbacks(execute=True):
        ingest.message_ingest("acs/v1/devices/bad uid!/detections", b"{}")
        ingest.message_ingest("acs/v1/devices/" + "x" * 300 + "/detections", b"{}")
    reasons = list(AccessEvent.objects.values_list("reason", "device_uid"))
    assert [r for r, _ in reasons] == ["malformed", "malformed"]
    assert all(len(uid) <= 64 for _, uid in reasons)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_bridge_and_worker_survive_garbage_on_the_real_broker(django_db_setup, test_env, tmp_path) -> None:
    """Garbage, oversized, forged and crashing messages through the real broker: each is recorded once,
    and afterwards the same bridge and worker still decide a genuine detection."""
    from devices.commands import server_public_key_b64
    from tests.devices import e2e
    from tests.reliability import rig

    door = Door.objects.create(name="Garbage door")
    key = p.load_private_key(device_provision(uid=UID_A, door=door).private_key_pem)
    forger = p.load_private_key(p.generate_keypair()[0])
    host, port = e2e.mqtt_address()
    children = rig.Children(test_env, tmp_path)
    device = rig.Device(UID_A, key, host, port)
    commands = rig.CommandCollector(host, port, server_public_key_b64(), {UID_A})
    bomb = _base_payload("crop", str(uuid.uuid4()))
    bomb["crop_jpeg"] = base64.b64encode(_jpeg_claiming(65000, 65000)).decode()
    late = _base_payload("embedding", str(uuid.uuid4()))
    late["captured_at"] = 1e300
    garbage = [
        b"",
        b"\xff\xfe\x00garbage",
        b"{" * 10_000,
        b"A" * (p.MAX_MESSAGE_BYTES + 100),
        b'{"payload": {"v": 1}, "sig": "AAAA"}',
        p.sign_envelope(_base_payload("embedding", str(uuid.uuid4())), forger),
        p.sign_envelope(bomb, key),
        p.sign_envelope(late, key),
    ]
    try:
        children.start_worker()
        bridge = children.start_bridge()
        for raw in garbage:
            device.client.publish(p.detections_topic(UID_A), raw, qos=1).wait_for_publish(5)
        device.client.publish("acs/v1/devices/not a uid!/detections", b"{}", qos=1).wait_for_publish(5)
        assert rig.wait_until(lambda: AccessEvent.objects.count() >= len(garbage) + 1, 60)
        genuine = device.publish(1)[0]
        assert rig.wait_until(lambda: commands.got(genuine), 60), "the genuine detection got no command"
        time.sleep(1.0)
        assert bridge.poll() is None and children.alive("worker")
        assert AccessEvent.objects.count() == len(garbage) + 2  # one per message, nothing twice
        reasons = sorted(AccessEvent.objects.exclude(detection_id=genuine).values_list("reason", flat=True))
        assert reasons == sorted(["malformed", "malformed", "malformed", "too_large", "bad_signature",
                                  "bad_signature", "bad_image", "malformed", "malformed"])  # fmt: skip
        assert not InboundDetection.objects.exists()
    finally:
        commands.close()
        device.close()
        children.close()
