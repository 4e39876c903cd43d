"""Crop mode: the server embeds every face of a track (LFW crops cut as the agent cuts them), staged
by the bridge's own staging function, and decides on all of them."""

from __future__ import annotations

import time

import pytest

from accessctl.models import AccessEvent, AccessGroup, Door, Person
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.detections import detections_decide
from recognition.enrollment import photo_enroll
from recognition.models import EnrollmentPhoto
from recognition.staging import Staged, detection_stage
from tests import faces
from tests.devices.e2e import aligned_crop_jpeg

pytestmark = [pytest.mark.dataset("lfw"), pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)


def _stage(device, main: bytes, others: list[bytes]) -> str:
    now = time.time()
    det = p.Detection.with_crop(
        jpeg=main, device_uid=device.uid, detection_id=p.new_id(), captured_at=now, sent_at=now, detector_score=0.99,
        box=(0, 0, 120, 120), quality={"face_px": 120.0},
        track_probes=tuple(p.TrackProbe(quality={"face_px": 100.0}, crop_jpeg=jpeg) for jpeg in others),
    )  # fmt: skip
    staged = detection_stage(
        detection=det, device_uid=device.uid, device_id=device.pk, door_id=device.door_id, enqueue=lambda _id: None
    )
    assert staged is Staged.STAGED
    return det.detection_id


def test_crop_track_is_embedded_and_fused(enrol_env) -> None:
    door = Door.objects.create(name="Hall")
    device = device_provision(uid="hall-1", door=door).device
    colin = Person.objects.create(name="Colin Powell")
    group = AccessGroup.objects.create(name="Hall")
    group.people.add(colin)
    group.doors.add(door)
    assert (
        photo_enroll(person=colin, image=faces.face_jpeg("Colin_Powell", 0)).status == EnrollmentPhoto.Status.ACCEPTED
    )
    crops = [aligned_crop_jpeg(path) for path in faces.face_paths("Colin_Powell", 3, offset=1)]
    fused = _stage(device, crops[0], crops[1:])
    broken = _stage(device, crops[0], [b"\xff\xd8\xff\xe0 not an image"])  # a JPEG header, no picture
    assert detections_decide([fused, broken]) == ["matched", "bad_image"]
    events = {str(e.detection_id): e for e in AccessEvent.objects.all()}
    assert events[fused].person_id == colin.pk and events[fused].probes_fused == 3
    assert events[broken].decision == "deny" and events[broken].person_id is None
