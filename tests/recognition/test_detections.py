"""Deciding staged detections: bad probes end in a recorded denial; redelivered tasks change nothing."""

from __future__ import annotations

import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from accessctl.models import AccessEvent, Door
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.detections import detection_decide, detections_decide
from recognition.models import InboundDetection

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)


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
        values = payload_overrides.pop("values", [0.1] * 64)
        det = p.Detection.with_embedding(values=values, model_version=model_version, **common)
    payload = det.to_dict()
    payload.pop("crop_jpeg", None)
    payload.update(payload_overrides)
    name = default_storage.save(f"crops/test/{det.detection_id}.jpg", ContentFile(crop)) if crop is not None else ""
    InboundDetection.objects.create(
        detection_id=det.detection_id, device_uid=device.uid, device_id=device.pk, door=device.door, payload=payload,
        crop=name,
    )  # fmt: skip
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


SFACE = "sface-2021dec-int8bq"


def _axis(i: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(128)]


def test_detections_staged_together_are_decided_together(device) -> None:
    """One call decides a mixed batch like one call per detection would, one event each, in order."""
    from accessctl.audit import chain_verify
    from accessctl.models import AccessGroup, Person
    from recognition.models import FaceEmbedding

    ada, bob = Person.objects.create(name="Ada"), Person.objects.create(name="Bob")
    group = AccessGroup.objects.create(name="Dockers")
    group.people.add(ada)
    group.doors.add(device.door)
    FaceEmbedding.objects.create(person=ada, model_version=SFACE, embedding=_axis(0))
    FaceEmbedding.objects.create(person=bob, model_version=SFACE, embedding=_axis(1))
    decided_before = stage(device, crop=b"irrelevant", quality={"face_px": 20.0})
    detection_decide(detection_id=decided_before)
    ids = [
        stage(device, mode="embedding", model_version=SFACE, values=_axis(0)),  # Ada: granted
        stage(device, mode="embedding", model_version=SFACE, values=_axis(1)),  # Bob: no group with the door
        stage(device, mode="embedding", model_version=SFACE, values=_axis(2)),  # nobody
        stage(device, crop=b"irrelevant", quality={"face_px": 20.0}),
        stage(device, mode="embedding", model_version="some-other-model-v9"),
        decided_before,
        p.new_id(),  # never staged
    ]
    reasons = detections_decide([*ids, ids[0]])
    assert reasons == [
        "matched", "not_in_group", "unknown_face", "low_quality", "model_mismatch", "low_quality", "missing", "matched",
    ]  # fmt: skip
    assert not InboundDetection.objects.exists()
    events = list(AccessEvent.objects.order_by("id"))
    assert [str(e.detection_id) for e in events] == [decided_before, *ids[:5]]
    assert events[1].person_id == ada.pk and events[1].decision == "grant" and events[1].similarity == 1.0
    assert chain_verify().ok


def test_a_detection_that_breaks_the_batch_does_not_hold_up_the_others(device, monkeypatch) -> None:
    """An unexpected error deciding the batch: each detection is retried alone, the bad one fails."""
    import recognition.detections as detections

    good = [stage(device, crop=b"irrelevant", quality={"face_px": 20.0}) for _ in range(3)]
    bad = stage(device, crop=b"irrelevant", quality={"face_px": 20.0})
    real = detections.access_decide_many

    def failing(inputs):
        if any(item.detection_id == bad for item in inputs):
            raise RuntimeError("a bug that only this detection triggers")
        return real(inputs)

    monkeypatch.setattr(detections, "access_decide_many", failing)
    with pytest.raises(RuntimeError):
        detections_decide([good[0], bad, *good[1:]])
    assert sorted(str(e.detection_id) for e in AccessEvent.objects.all()) == sorted(good)
    assert [str(i.detection_id) for i in InboundDetection.objects.all()] == [bad]  # staged: the sweep retries it


def test_a_match_on_a_person_deleted_meanwhile_is_an_unknown_face(device) -> None:
    import datetime as dt

    from accessctl.codes import Reason
    from accessctl.decisions import access_decide

    event, created = access_decide(
        detection_id=p.new_id(), occurred_at=dt.datetime.now(dt.UTC), device_id=device.pk, device_uid=device.uid,
        door=device.door, person_id=987654, unknown_reason=Reason.MATCHED, similarity=0.9,
    )  # fmt: skip
    assert created and (event.decision, event.reason, event.person_id) == ("deny", "unknown_face", None)


def test_a_crop_with_no_usable_active_model_is_denied_and_recorded(device) -> None:
    """The registry has no active version (or it does not verify): the detection is denied with
    processing_error and recorded, never left staged."""
    from recognition.model_registry import active_model_cache_clear
    from recognition.models import ModelVersion

    ModelVersion.objects.filter(state=ModelVersion.State.ACTIVE).update(state=ModelVersion.State.RETIRED)
    active_model_cache_clear()
    detection_id = stage(device, crop=b"\xff\xd8\xff\xe0 any bytes")
    assert detection_decide(detection_id=detection_id) == "processing_error"
    event = AccessEvent.objects.get(detection_id=detection_id)
    assert event.decision == "deny" and "No model version is active" in event.details["error"]
    assert not InboundDetection.objects.exists()
