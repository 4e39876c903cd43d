"""Deciding staged detections: bad probes end in a recorded denial; redelivered tasks change nothing."""

from __future__ import annotations

import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from accessctl.models import AccessEvent, Door
from devices.models import InboundDetection
from devices.provisioning import device_provision
from edge_agent import protocol as p
from recognition.detections import detection_decide

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door: None)


@pytest.fixture
def device(media_root):
    door = Door.objects.create(name="Dock")
    return device_provision(uid="dock-1", door=door).device


def stage(device, *, mode: str = "crop", crop: bytes | None = None, **payload_overrides) -> str:
    now = time.time()
    common = {
        "device_uid": device.uid,
        "detection_id": p.new_id(),
        "captured_at": now,
        "sent_at": now,
        "detector_score": 0.9,
        "box": (0, 0, 120, 120),
        "quality": {"face_px": 120.0},
    }
    if mode == "crop":
        det = p.Detection.with_crop(jpeg=b"\xff\xd8\xff\xe0stub", **common)
    else:
        model_version = payload_overrides.pop("model_version")
        det = p.Detection.with_embedding(values=[0.1] * 64, model_version=model_version, **common)
    payload = det.to_dict()
    payload.pop("crop_jpeg", None)
    payload.update(payload_overrides)
    name = default_storage.save(f"crops/test/{det.detection_id}.jpg", ContentFile(crop)) if crop is not None else ""
    InboundDetection.objects.create(detection_id=det.detection_id, device=device, payload=payload, crop=name)
    return det.detection_id


def test_small_face_is_denied_low_quality(device) -> None:
    detection_id = stage(device, crop=b"irrelevant", quality={"face_px": 20.0})
    assert detection_decide(detection_id=detection_id) == "low_quality"
    assert not InboundDetection.objects.exists()


def test_unreadable_crop_is_denied_bad_image(device) -> None:
    detection_id = stage(device, crop=b"\xff\xd8\xff\xe0 this is not really a jpeg")
    assert detection_decide(detection_id=detection_id) == "bad_image"
    event = AccessEvent.objects.get(detection_id=detection_id)
    assert event.decision == "deny"
    assert "error" in event.details


def test_embedding_of_an_unknown_model_is_never_compared(device) -> None:
    detection_id = stage(device, mode="embedding", model_version="some-other-model-v9")
    assert detection_decide(detection_id=detection_id) == "model_mismatch"


def test_embedding_with_the_wrong_dimension_is_refused(device) -> None:
    detection_id = stage(device, mode="embedding", model_version="sface-2021dec-int8bq")  # 64 dims, needs 128
    assert detection_decide(detection_id=detection_id) == "bad_embedding"


def test_redelivered_task_is_idempotent(device) -> None:
    detection_id = stage(device, crop=b"irrelevant", quality={"face_px": 20.0})
    detection_decide(detection_id=detection_id)
    assert detection_decide(detection_id=detection_id) == "low_quality"
    assert AccessEvent.objects.filter(detection_id=detection_id).count() == 1


def test_backlogged_detection_never_opens_the_door_late(device) -> None:
    """Decided after the freshness window (a queue backlog): recorded, denied ``stale_timestamp``."""
    detection_id = stage(device, crop=b"irrelevant", sent_at=time.time() - 120)
    assert detection_decide(detection_id=detection_id) == "stale_timestamp"
    assert AccessEvent.objects.get(detection_id=detection_id).decision == "deny"


def test_resent_detection_is_late_when_its_face_is_old(device) -> None:
    """A re-send carries a new ``sent_at``; the capture time still bounds when it may open a door."""
    detection_id = stage(device, crop=b"irrelevant", captured_at=time.time() - 120, attempt=2)
    assert detection_decide(detection_id=detection_id) == "stale_timestamp"
