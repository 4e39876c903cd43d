"""End to end, liveness: signed crop-mode detections carrying the device's live score, over a real
MQTT broker, the bridge, a real Celery worker and the database. The scores are the real scorer's, on
the full frames of a printed-photo capture and a live capture of one nuaa-dev subject, who is
enrolled from another live frame."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from accessctl.models import AccessEvent, AccessGroup, Alarm, Door, Person
from devices.commands import server_public_key_b64
from devices.provisioning import device_provision
from faceengine import protocol as p
from faceengine.pipeline import embed_image
from recognition.engine import active_embedder
from recognition.models import FaceEmbedding
from tests import faces
from tests.devices import e2e

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.dataset("nuaa-dev"),
]

SUBJECT = "0001"


def _frames() -> dict[str, list[Path]]:
    root = faces.dataset_require("nuaa-dev")
    return {kind: sorted((root / kind / SUBJECT).glob("*.jpg")) for kind in ("live", "print")}


def _device_score(path: Path) -> float:
    """What the door device sends: the live score of the largest face on the full camera frame
    (one frame here; the agent fuses a track's frames)."""
    from PIL import Image

    from faceengine.detector import FaceDetector
    from faceengine.liveness import get_scorer

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    found = FaceDetector(min_face_size=settings.RECOGNITION_MIN_FACE_PX, num_threads=2)(rgb)
    box = max(found, key=lambda face: (face.box[2] - face.box[0]) * (face.box[3] - face.box[1])).box
    return float(get_scorer(num_threads=2).score(rgb, np.asarray([box[:4]], dtype=np.float32))[0])


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, test_env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("e2e-liveness-logs")
    with (
        e2e.child_process(e2e.worker_argv(name="e2e-live"), test_env, "ready.", logs / "worker.log"),
        e2e.child_process(e2e.bridge_argv(), test_env, "bridge connected", logs / "bridge.log"),
    ):
        yield logs


@pytest.fixture
def site(stack):
    from PIL import Image

    frames = _frames()
    vault = Door.objects.create(name="Vault", liveness_required=True)  # the site's calibrated threshold
    lobby = Door.objects.create(name="Lobby")
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(vault, lobby)
    subject = Person.objects.create(name=f"NUAA subject {SUBJECT}")
    staff.people.add(subject)
    with Image.open(frames["live"][0]) as image:  # enrolled from a live frame
        face = embed_image(image.convert("RGB"), embedder=active_embedder(), max_faces=1)[0]
    FaceEmbedding.objects.create(
        person=subject, model_version=face.model_version, embedding=face.embedding.tolist(), quality=1.0
    )
    keys = {}
    for uid, door in (("vault-cam", vault), ("lobby-cam", lobby)):
        keys[uid] = p.load_private_key(device_provision(uid=uid, door=door).private_key_pem)
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    client = e2e.publisher()
    yield {"frames": frames, "vault": vault, "subject": subject, "keys": keys, "listener": listener, "client": client}
    listener.close()
    client.loop_stop()
    client.disconnect()


def _send(site, uid: str, frame: Path, liveness: float | None) -> tuple[AccessEvent, p.Command]:
    detection = e2e.crop_detection(uid, e2e.aligned_crop_jpeg(frame))
    if liveness is not None:
        detection = dataclasses.replace(detection, liveness=liveness, liveness_frames=1, liveness_model="test")
    raw = p.seal(detection, site["keys"][uid])
    site["client"].publish(p.detections_topic(uid), raw, qos=1).wait_for_publish(5)
    command = site["listener"].wait(detection.detection_id, timeout=60)  # sent after the event commits
    return AccessEvent.objects.get(detection_id=detection.detection_id), command


def test_a_printed_photo_is_an_attack_a_live_face_opens_and_an_unscored_one_is_not_measured(site) -> None:
    live_frame, print_frame = site["frames"]["live"][len(site["frames"]["live"]) // 2], site["frames"]["print"][0]
    attack_score, live_score = _device_score(print_frame), _device_score(live_frame)
    threshold = settings.LIVENESS_THRESHOLD
    assert attack_score < threshold <= live_score, (attack_score, threshold, live_score)

    attack, command = _send(site, "vault-cam", print_frame, attack_score)
    assert (attack.decision, attack.reason, command.command) == ("deny", "presentation_attack", p.CommandKind.DENY)
    assert attack.person_id == site["subject"].pk  # who it looked like
    assert attack.liveness_edge == pytest.approx(attack_score) and attack.liveness_frames == 1
    assert attack.liveness_threshold == pytest.approx(threshold)
    assert attack.liveness_server is not None and 0.0 <= attack.liveness_server <= 1.0  # re-scored, recorded
    assert attack.details["liveness_model"] == "test"
    alarm = Alarm.objects.get(kind=Alarm.Kind.PRESENTATION_ATTACK)
    assert (alarm.door_id, alarm.event_id) == (site["vault"].pk, attack.pk) and alarm.details["snapshot"]

    live, command = _send(site, "vault-cam", live_frame, live_score)
    assert (live.decision, live.reason, command.command) == ("grant", "matched", p.CommandKind.OPEN)
    assert live.person_id == site["subject"].pk and live.liveness_edge == pytest.approx(live_score)

    unscored, command = _send(site, "vault-cam", live_frame, None)  # an agent without liveness
    assert (unscored.decision, unscored.reason, command.command) == ("deny", "liveness_not_measured", "deny")
    assert unscored.liveness_edge is None and unscored.liveness_threshold == pytest.approx(threshold)

    plain, command = _send(site, "lobby-cam", live_frame, None)  # a door without liveness: as before
    assert (plain.decision, plain.reason, command.command) == ("grant", "matched", p.CommandKind.OPEN)
    assert plain.liveness_threshold is None and plain.liveness_server is None  # not re-scored there
    assert Alarm.objects.filter(kind=Alarm.Kind.PRESENTATION_ATTACK).count() == 1


def test_the_edge_agent_holding_a_print_then_a_live_face_to_a_liveness_door(site, tmp_path) -> None:
    """The whole path: ``python -m edge_agent simulate`` (the agent's own detector, tracker, liveness
    fusion and signing) plays the subject's printed-photo frames, then live frames, to the vault's
    camera; the bridge, the worker and the database decide."""
    import os
    import re
    import subprocess
    import sys

    from django.core.management import call_command

    frames_limit = 15
    call_command("provision_device", "vault-agent", "--door", "Vault", "--out", str(tmp_path / "agent"))
    root = faces.dataset_require("nuaa-dev")
    argv = [sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "simulate"]
    argv += ["--config", str(tmp_path / "agent" / "agent.toml")]
    argv += ["--frames", str(root / "print" / SUBJECT), "--frames", str(root / "live" / SUBJECT)]
    argv += ["--frames-limit", str(frames_limit), "--fps", "0", "--wait", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACS_EDGE_")}
    result = subprocess.run(argv, cwd=e2e.ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    sent: dict[str, list[str]] = {"print": [], "live": []}
    for line in result.stdout.splitlines():
        if m := re.match(r"visitor \d+/2 (\S+): detection ([0-9a-f-]{36})", line):
            sent[Path(m.group(1)).parent.name].append(m.group(2))
    assert sent["print"] and sent["live"], result.stdout

    for kind, (decision, reason) in {"print": ("deny", "presentation_attack"), "live": ("grant", "matched")}.items():
        for detection_id in sent[kind]:
            command = site["listener"].wait(detection_id, timeout=60)
            event = AccessEvent.objects.get(detection_id=detection_id)
            assert (event.decision, event.reason, command.reason) == (decision, reason, reason), (kind, event.pk)
            assert event.liveness_edge is not None and event.liveness_frames >= 1
    attacks = AccessEvent.objects.filter(detection_id__in=sent["print"])
    alarm = Alarm.objects.get(kind=Alarm.Kind.PRESENTATION_ATTACK, door=site["vault"])
    assert alarm.event_id in set(attacks.values_list("pk", flat=True)) and alarm.count == len(sent["print"])
