"""The server's live score of a received crop (informational, ``liveness_server``) and the device's
signed score carried from the staged payload to the decision."""

from __future__ import annotations

import sys
import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from accessctl.models import AccessEvent, Door
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.detections import detection_decide
from recognition.liveness import crop_box, crop_liveness_score
from recognition.models import InboundDetection
from tests import faces
from tests.devices import e2e


def test_the_crop_is_scored_whole_around_a_centred_box() -> None:
    x1, y1, x2, y2 = crop_box(112, 112)
    assert x2 - x1 == pytest.approx(112 / 2.7) and (x1 + x2) / 2 == pytest.approx(56)
    from faceengine.liveness.crop import crop_window

    for scale in (2.7, 4.0):  # both networks' windows cover the whole crop
        left, top, right, bottom = crop_window((x1, y1, x2, y2), scale, 112, 112)
        assert left <= 1 and top <= 1 and right >= 110 and bottom >= 110


def test_an_unreadable_crop_has_no_score() -> None:
    assert crop_liveness_score(b"\xff\xd8\xff\xe0 not a jpeg", detection_id="x") is None


@pytest.mark.dataset("nuaa-dev")
def test_printed_photo_crops_score_lower_than_live_ones_and_torch_keeps_its_threads() -> None:
    import torch

    root = faces.dataset_require("nuaa-dev")
    threads = torch.get_num_threads()
    live = [
        crop_liveness_score(e2e.aligned_crop_jpeg(path)) for path in sorted((root / "live" / "0001").glob("*.jpg"))[:3]
    ]
    attack = [
        crop_liveness_score(e2e.aligned_crop_jpeg(path)) for path in sorted((root / "print" / "0001").glob("*.jpg"))[:3]
    ]
    assert all(score is not None and 0.0 <= score <= 1.0 for score in live + attack)
    assert max(attack) < min(live), (attack, live)  # a weaker measurement than the device's, still telling
    assert torch.get_num_threads() == threads
    assert "torch" in sys.modules


@pytest.fixture
def device(media_root):
    door = Door.objects.create(name="Vault", liveness_required=True, liveness_threshold=0.5)
    return device_provision(uid="vault-1", door=door).device


def _stage(device, jpeg: bytes, **liveness) -> str:
    now = time.time()
    det = p.Detection.with_crop(
        jpeg=jpeg, device_uid=device.uid, detection_id=p.new_id(), captured_at=now, sent_at=now, detector_score=0.9,
        box=(0, 0, 120, 120), quality={"face_px": 120.0},
    )  # fmt: skip
    payload = {**det.to_dict(), **liveness}
    payload.pop("crop_jpeg")
    name = default_storage.save(f"crops/test/{det.detection_id}.jpg", ContentFile(jpeg))
    InboundDetection.objects.create(
        detection_id=det.detection_id, device_uid=device.uid, device_id=device.pk, door=device.door, payload=payload,
        crop=name,
    )  # fmt: skip
    return det.detection_id


@pytest.mark.django_db(transaction=True)
def test_the_devices_score_decides_and_the_servers_is_recorded(device, settings, monkeypatch) -> None:
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)
    jpeg = faces.face_jpeg()
    attack = _stage(device, jpeg, liveness=0.2, liveness_frames=12, liveness_model="minifasnet-test")
    assert detection_decide(detection_id=attack) == "presentation_attack"
    event = AccessEvent.objects.get(detection_id=attack)
    assert (event.liveness_edge, event.liveness_frames, event.liveness_threshold) == (0.2, 12, 0.5)
    assert event.liveness_server is not None  # scored at the server too; not what decided
    assert event.details["liveness_model"] == "minifasnet-test"

    unscored = _stage(device, jpeg)
    assert detection_decide(detection_id=unscored) == "liveness_not_measured"

    device.door.liveness_required = False  # a door without liveness: the crop is not scored
    device.door.save()
    plain = _stage(device, jpeg, liveness=0.1, liveness_frames=3)
    assert detection_decide(detection_id=plain) == "unknown_face"
    event = AccessEvent.objects.get(detection_id=plain)
    assert (event.liveness_edge, event.liveness_server, event.liveness_threshold) == (0.1, None, None)

    device.door.liveness_required = True
    device.door.save()
    settings.LIVENESS_SERVER_SCORE = False
    off = _stage(device, jpeg, liveness=0.9, liveness_frames=3)
    assert detection_decide(detection_id=off) == "unknown_face"  # live: the match decides (an empty gallery)
    event = AccessEvent.objects.get(detection_id=off)
    assert (event.liveness_edge, event.liveness_server) == (0.9, None)
