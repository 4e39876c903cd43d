"""The optional ``track_probes`` of a detection: the next best faces of the same track, each checked
like the main one, bounded in number and size, and covered by the signature."""

from __future__ import annotations

import base64
import json
import math
import time

import pytest

from faceengine import protocol as p
from faceengine.protocol import ProtocolError, Reason

UID = "door-7"
JPEG = b"\xff\xd8\xff\xe0" + b"face" * 50


@pytest.fixture(scope="module")
def keys() -> tuple[str, str]:
    return p.generate_keypair()


def _fields() -> dict[str, object]:
    now = time.time()
    return {
        "device_uid": UID,
        "detection_id": p.new_id(),
        "captured_at": now - 0.2,
        "sent_at": now,
        "detector_score": 0.99,
        "box": (10, 20, 110, 140),
        "quality": {"face_px": 100.0, "sharpness": 80.0},
    }


def crop_track(n: int = 2) -> p.Detection:
    probes = tuple(p.TrackProbe(quality={"face_px": 90.0 - i}, crop_jpeg=JPEG + bytes([i])) for i in range(n))
    return p.Detection.with_crop(jpeg=JPEG, track_probes=probes, **_fields())


def embedding_track(encoding: str = "int8", n: int = 2) -> p.Detection:
    values = [math.sin(i) for i in range(128)]
    probes = tuple(
        p.TrackProbe.with_embedding(values=[math.cos(i + k) for i in range(128)], encoding=encoding, quality={})
        for k in range(n)
    )
    return p.Detection.with_embedding(
        values=values, model_version="sface-2021dec-int8bq", encoding=encoding, track_probes=probes, **_fields()
    )


def expect(code: Reason, fn, *args, **kwargs) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


def test_crop_track_round_trip_through_the_signed_envelope(keys: tuple[str, str]) -> None:
    priv, pub = keys
    det = crop_track(2)
    assert det.probe_count == 3
    back = p.open_message(p.detections_topic(UID), p.seal(det, priv), pub)
    assert back == det and back.track_probes[1].crop_jpeg == JPEG + b"\x01"
    assert back.track_probes[0].quality == {"face_px": 90.0}


@pytest.mark.parametrize("encoding", ["f32", "f16", "int8"])
def test_embedding_track_round_trip(keys: tuple[str, str], encoding: str) -> None:
    priv, pub = keys
    det = embedding_track(encoding)
    back = p.open_message(p.detections_topic(UID), p.seal(det, priv), pub)
    assert back == det
    values = back.track_embedding_values()
    assert len(values) == 2 and all(len(v) == 128 for v in values)
    assert values[0][0] == pytest.approx(1.0, abs=0.02)


def test_a_detection_without_track_probes_is_as_before() -> None:
    """Older agents: no key on the wire, one probe."""
    det = p.Detection.with_crop(jpeg=JPEG, **_fields())
    assert "track_probes" not in det.to_dict() and det.probe_count == 1 and det.track_probes == ()


def test_signature_covers_the_track_probes(keys: tuple[str, str]) -> None:
    """Swapping in another face (say, an enrolled person's photo) breaks the signature."""
    priv, pub = keys
    doc = json.loads(p.seal(crop_track(1), priv))
    doc["payload"]["track_probes"][0]["crop_jpeg"] = base64.b64encode(JPEG + b"other").decode()
    expect(Reason.BAD_SIGNATURE, p.open_envelope, json.dumps(doc).encode(), pub)
    doc = json.loads(p.seal(crop_track(2), priv))
    doc["payload"]["track_probes"].pop()
    expect(Reason.BAD_SIGNATURE, p.open_envelope, json.dumps(doc).encode(), pub)


def test_number_of_track_probes_is_capped() -> None:
    assert p.MAX_TRACK_PROBES == 5 and p.DEFAULT_TRACK_PROBES <= p.MAX_TRACK_PROBES
    crop_track(p.MAX_TRACK_PROBES - 1)
    expect(Reason.MALFORMED, crop_track, p.MAX_TRACK_PROBES)
    payload = crop_track(1).to_dict()
    for bad in ([], {}, "x", [None]):
        payload["track_probes"] = bad
        expect(Reason.MALFORMED, p.Detection.from_dict, payload)


def _payload_with_probe(det: p.Detection, **probe: object) -> dict[str, object]:
    payload = det.to_dict()
    payload["track_probes"] = [{"quality": {}, **probe}]
    return payload


def test_each_crop_probe_is_checked_like_the_main_crop() -> None:
    det = crop_track(1)
    expect(
        Reason.BAD_IMAGE,
        p.Detection.from_dict,
        _payload_with_probe(det, crop_jpeg=base64.b64encode(b"GIF89a").decode()),
    )
    expect(Reason.BAD_IMAGE, p.Detection.from_dict, _payload_with_probe(det, crop_jpeg="not base64!"))
    expect(Reason.BAD_IMAGE, p.Detection.from_dict, _payload_with_probe(det))  # no crop at all
    big = base64.b64encode(b"\xff\xd8\xff" + b"x" * p.MAX_CROP_BYTES).decode()
    expect(Reason.TOO_LARGE, p.Detection.from_dict, _payload_with_probe(det, crop_jpeg=big))
    # no embedding in a crop-mode track, no unknown keys, quality checked
    emb = base64.b64encode(b"\x00" * 512).decode()
    expect(
        Reason.MALFORMED,
        p.Detection.from_dict,
        _payload_with_probe(det, crop_jpeg=base64.b64encode(JPEG).decode(), embedding=emb),
    )
    expect(
        Reason.MALFORMED,
        p.Detection.from_dict,
        _payload_with_probe(det, crop_jpeg=base64.b64encode(JPEG).decode(), box=[0, 0, 1, 1]),
    )
    payload = _payload_with_probe(det, crop_jpeg=base64.b64encode(JPEG).decode())
    payload["track_probes"][0]["quality"] = {"face_px": float("nan")}
    expect(Reason.MALFORMED, p.Detection.from_dict, payload)
    payload["track_probes"][0]["quality"] = {"Bad Key": 1.0}
    expect(Reason.MALFORMED, p.Detection.from_dict, payload)


def test_each_embedding_probe_is_checked_like_the_main_embedding() -> None:
    det = embedding_track("f32", 1)
    good = det.to_dict()["track_probes"][0]["embedding"]
    zero = base64.b64encode(b"\x00" * 4 * 128).decode()
    nan = base64.b64encode(b"\x00\x00\xc0\x7f" * 128).decode()
    short = base64.b64encode(b"\x00\x00\x80\x3f" * 64).decode()  # 64 of the detection's 128 dims
    for bad in (zero, nan, short):
        expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, _payload_with_probe(det, embedding=bad))
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, _payload_with_probe(det))  # no embedding
    # a scale only with int8, and always with it
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, _payload_with_probe(det, embedding=good, embedding_scale=0.1))
    int8 = embedding_track("int8", 1).to_dict()
    int8["track_probes"][0].pop("embedding_scale")
    expect(Reason.BAD_EMBEDDING, p.Detection.from_dict, int8)
    expect(
        Reason.MALFORMED,
        p.Detection.from_dict,
        _payload_with_probe(det, embedding=good, crop_jpeg=base64.b64encode(JPEG).decode()),
    )


def test_a_track_too_large_for_one_message_is_refused_when_signing(keys: tuple[str, str]) -> None:
    """Each crop fits alone, four of them do not: the device learns it before sending (and sends the
    best face alone, see the agent)."""
    priv, _ = keys
    big = b"\xff\xd8\xff" + b"x" * (p.MAX_CROP_BYTES - 3)
    det = p.Detection.with_crop(
        jpeg=big, track_probes=tuple(p.TrackProbe(quality={}, crop_jpeg=big) for _ in range(2)), **_fields()
    )
    expect(Reason.TOO_LARGE, p.seal, det, priv)
