"""End to end, deciding on a track: a signed crop-mode detection carrying two more faces of the same
track goes over a real MQTT broker, the bridge and a real Celery worker; the door opens for the
person and the access log says three faces were fused. LFW photos of one enrolled person."""

from __future__ import annotations

import dataclasses

import pytest

from accessctl.models import AccessEvent, AccessGroup, Door, Person
from devices.commands import server_public_key_b64
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.enrollment import photo_enroll
from recognition.models import EnrollmentPhoto
from tests import faces
from tests.devices import e2e

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.dataset("lfw")]


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, test_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("e2e-track-logs")
    with (
        e2e.child_process(e2e.worker_argv(name="e2e-track"), test_env, "ready.", logs / "worker.log"),
        e2e.child_process(e2e.bridge_argv(), test_env, "bridge connected", logs / "bridge.log"),
    ):
        yield logs


def test_a_track_of_three_faces_opens_the_door_and_is_recorded_as_fused(stack, media_root) -> None:
    door = Door.objects.create(name="Hall")
    group = AccessGroup.objects.create(name="Staff")
    colin = Person.objects.create(name="Colin Powell")
    group.doors.add(door)
    group.people.add(colin)
    assert (
        photo_enroll(person=colin, image=faces.face_jpeg("Colin_Powell", 0)).status == EnrollmentPhoto.Status.ACCEPTED
    )
    key = p.load_private_key(device_provision(uid="hall-cam", door=door).private_key_pem)
    host, port = e2e.mqtt_address()
    listener, client = e2e.CommandListener(host, port, server_public_key_b64()), e2e.publisher()
    try:
        crops = [e2e.aligned_crop_jpeg(path) for path in faces.face_paths("Colin_Powell", 3, offset=1)]
        detection = dataclasses.replace(
            e2e.crop_detection("hall-cam", crops[0]),
            track_probes=tuple(p.TrackProbe(quality={"face_px": 110.0}, crop_jpeg=jpeg) for jpeg in crops[1:]),
        )
        client.publish(p.detections_topic("hall-cam"), p.seal(detection, key), qos=1).wait_for_publish(5)
        command = listener.wait(detection.detection_id, timeout=60)
        event = AccessEvent.objects.get(detection_id=detection.detection_id)
        assert (event.decision, event.reason, command.command) == ("grant", "matched", p.CommandKind.OPEN)
        assert event.person_id == colin.pk and event.probes_fused == 3
    finally:
        listener.close()
        client.loop_stop()
        client.disconnect()
