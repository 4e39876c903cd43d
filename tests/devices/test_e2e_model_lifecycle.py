"""End to end, a model's whole lifecycle (issue 21, "Tests"): with ``sface`` active and two people
enrolled from LFW photos, ``facenet-casia`` is registered as a candidate, its gallery is built by a
real worker process (``promote --build-only``), it shadows a crop-mode detection, it is rolled to one
of two embedding-mode agents (both keep being decided right, each in its own version), promoted,
and ``sface`` is retired once no device reports it; every access event carries the version used.
The bridge and the worker (recognition, default, shadow and gallery queues) are processes; the agents
are real, on the test run's broker; the bundle comes from the live server's download endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command

from accessctl.models import AccessEvent, AccessGroup, Door, Person
from devices.commands import server_public_key_b64
from devices.model_rollout import rollout_create
from devices.models import EdgeDevice, ModelRollout
from edge_agent.agent import EdgeAgent
from faceengine.backends.sface import SFACE_MODEL_VERSION
from recognition.calibration import store_threshold
from recognition.enrollment import photo_enroll
from recognition.gallery_versions import gallery_ready
from recognition.indexing import hnsw_ensure, hnsw_index
from recognition.model_registry import (
    RegistryError,
    model_version_register,
    model_version_retire,
    model_version_transition,
)
from recognition.models import FaceEmbedding, ModelStateChange, ModelVersion, ShadowDecision
from tests import faces
from tests.devices import e2e
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.dataset("lfw")]

CASIA = "facenet-casia-20180408"
State = ModelVersion.State
PEOPLE = ("Colin_Powell", "George_W_Bush")


@pytest.fixture(scope="module")
def stack(django_db_setup, test_env, tmp_path_factory) -> Iterator[Path]:
    """The bridge and one worker for every queue, sharing a media folder with this process; every
    crop-mode decision is offered to the shadow version (sample rate 1)."""
    logs = tmp_path_factory.mktemp("e2e-lifecycle")
    media = logs / "media"
    env = {**test_env, "ACCESSCTL_MEDIA_ROOT": str(media), "ACCESSCTL_MIN_FACE_PX": "40",
           "ACCESSCTL_SHADOW_SAMPLE_RATE": "1.0"}  # fmt: skip
    from django.conf import settings

    worker = e2e.worker_argv(2, "lifecycle", queues=(settings.RECOGNITION_SHADOW_QUEUE, settings.GALLERY_QUEUE))
    with (
        e2e.child_process(e2e.bridge_argv(), env, "bridge connected", logs / "bridge.log"),
        e2e.child_process(worker, env, "ready.", logs / "worker.log"),
    ):
        yield media


@pytest.fixture
def sface_index_restored() -> Iterator[None]:
    yield
    hnsw_ensure(SFACE_MODEL_VERSION)  # other tests expect the shipped versions' indexes


def _event(agent: EdgeAgent, face, listener: e2e.CommandListener) -> AccessEvent:
    """Send ``face`` from ``agent``; the access event once decided (a grant: once the door got its command)."""
    detection, _ = agent.send_candidate(face, captured_at=time.time())
    decided = AccessEvent.objects.filter(detection_id=detection.detection_id)
    assert wait_until(decided.exists, timeout=60), f"detection {detection.detection_id} of {agent.uid} not decided"
    event = decided.get()
    if event.decision == "grant":
        assert listener.wait(detection.detection_id, timeout=30).detection_id == detection.detection_id
    return event


def test_facenet_casia_from_candidate_through_shadow_and_rollout_to_active_and_sface_retired(
    stack, live_server, settings, sface_index_restored
) -> None:
    started = time.monotonic()
    settings.MEDIA_ROOT, settings.RECOGNITION_MIN_FACE_PX = stack, 40
    settings.MODEL_DOWNLOAD_BASE_URL = live_server.url
    door = Door.objects.create(name="Lobby")
    group = AccessGroup.objects.create(name="Staff")
    group.doors.add(door)
    people = {}
    for name in PEOPLE:  # enrolled while sface is the only version
        person = Person.objects.create(name=name.replace("_", " "))
        group.people.add(person)
        assert photo_enroll(person=person, image=faces.face_jpeg(name, 0)).status == "accepted"
        people[name] = person
    seen = {name: e2e.lfw_face(faces.face_paths(name, 1, offset=2)[0]) for name in PEOPLE}  # other photos
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    agents: dict[str, EdgeAgent] = {}
    try:
        for uid, mode in (("e2e-life-a", "embedding"), ("e2e-life-b", "embedding"), ("e2e-life-crop", "crop")):
            agents[uid] = e2e.agent_start(uid, door, stack.parent / uid, mode=mode)
        for agent in agents.values():
            assert agent.link.wait_subscribed(15), "an agent did not subscribe to its commands"
        a, b, crop = agents.values()
        for agent in (a, b):  # the faces these doors saw lately: their self-tests
            for face in e2e.lfw_faces(4):
                agent.samples.add(face)
        assert wait_until(
            lambda: EdgeDevice.objects.filter(uid__in=[a.uid, b.uid], model_version=SFACE_MODEL_VERSION).count() == 2,
            20,
        )

        # Candidate, signed and calibrated; its gallery built in the background by the worker.
        model_version_register(backend="facenet-casia", model_version=CASIA, options={"flip": False})
        store_threshold(model_version=CASIA, threshold=0.45, target_fmr=1e-3)
        call_command("model_registry", "promote", CASIA, "--build-only")
        assert wait_until(lambda: gallery_ready(CASIA), timeout=120)
        casia = ModelVersion.objects.get(model_version=CASIA)
        assert casia.state == State.CANDIDATE and FaceEmbedding.objects.filter(model_version=CASIA).count() == 2
        built = time.monotonic()

        # Shadow: a crop-mode face is decided by sface, and by facenet-casia without acting.
        model_version_transition(model=casia, to_state=State.SHADOW)
        event = _event(crop, seen["Colin_Powell"], listener)
        assert (event.model_version, event.decision, event.person_id) == (
            SFACE_MODEL_VERSION, "grant", people["Colin_Powell"].pk)  # fmt: skip
        assert wait_until(lambda: ShadowDecision.objects.filter(event_id=event.pk).exists(), timeout=60)
        shadow = ShadowDecision.objects.get(event_id=event.pk)
        assert shadow.model.model_version == CASIA and shadow.shadow_person_id == people["Colin_Powell"].pk

        # Rolled to device A only: each device's faces decided right, in the version it embedded with.
        rollout_create(model_version=CASIA, devices=[a.uid])
        assert wait_until(lambda: EdgeDevice.objects.get(uid=a.uid).model_version == CASIA, timeout=240)
        rolled = time.monotonic()
        on_a, on_b = _event(a, seen["Colin_Powell"], listener), _event(b, seen["George_W_Bush"], listener)
        assert (on_a.model_version, on_a.decision, on_a.person_id) == (CASIA, "grant", people["Colin_Powell"].pk)
        assert (on_b.model_version, on_b.decision, on_b.person_id) == (
            SFACE_MODEL_VERSION, "grant", people["George_W_Bush"].pk)  # fmt: skip

        # Promoted: the gallery is complete, so the worker's run activates it; sface keeps its vectors.
        call_command("model_registry", "promote", CASIA)
        assert wait_until(lambda: ModelVersion.objects.get(model_version=CASIA).state == State.ACTIVE, timeout=60)
        sface = ModelVersion.objects.get(model_version=SFACE_MODEL_VERSION)
        assert sface.state == State.RETIRED and FaceEmbedding.objects.filter(model_version=SFACE_MODEL_VERSION).count()
        still_b = _event(b, seen["George_W_Bush"], listener)  # device B still runs sface: still decided in it
        assert (still_b.model_version, still_b.person_id) == (SFACE_MODEL_VERSION, people["George_W_Bush"].pk)

        # Removing sface's gallery is refused while B reports sface; B is rolled too, then it goes.
        with pytest.raises(RegistryError) as refused:
            model_version_retire(model=sface)
        assert refused.value.code == "in_use" and b.uid in refused.value.message
        rollout_create(model_version=CASIA, devices=[b.uid])
        assert wait_until(lambda: EdgeDevice.objects.get(uid=b.uid).model_version == CASIA, timeout=240)
        assert ModelRollout.objects.filter(state=ModelRollout.State.DONE).count() == 2
        model_version_retire(model=sface, note="fleet on facenet-casia")
        assert not FaceEmbedding.objects.filter(model_version=SFACE_MODEL_VERSION).exists()
        assert wait_until(lambda: hnsw_index(SFACE_MODEL_VERSION) is None, timeout=10)
        assert ModelStateChange.objects.filter(model=sface, to_state=State.RETIRED, note__contains="2 vectors").exists()

        # After: every device, crop mode included, decided in facenet-casia.
        after = [
            _event(agent, seen[name], listener) for agent, name in zip((a, b, crop), PEOPLE + PEOPLE[:1], strict=True)
        ]
        assert [(e.model_version, e.decision, e.person_id) for e in after] == [
            (CASIA, "grant", people[name].pk) for name in PEOPLE + PEOPLE[:1]
        ]
        # The audit trail: each event names the version that decided it, in order.
        trail = list(AccessEvent.objects.order_by("pk").values_list("device_uid", "model_version"))
        assert trail == [
            (crop.uid, SFACE_MODEL_VERSION), (a.uid, CASIA), (b.uid, SFACE_MODEL_VERSION), (b.uid, SFACE_MODEL_VERSION),
            (a.uid, CASIA), (b.uid, CASIA), (crop.uid, CASIA),
        ]  # fmt: skip
        # ... and the registry's history names each step of the version's life, none of them forced.
        history = ModelStateChange.objects.filter(model__model_version=CASIA).order_by("pk")
        steps = [(c.from_state, c.to_state) for c in history if c.from_state != c.to_state]
        assert steps == [("", State.CANDIDATE), (State.CANDIDATE, State.SHADOW), (State.SHADOW, State.ACTIVE)]
        assert not ModelStateChange.objects.filter(forced=True).exists()
    finally:
        for agent in agents.values():
            agent.stop()
        listener.close()
    total = time.monotonic() - started
    print(f"lifecycle: gallery built {built - started:.1f}s, rolled to A {rolled - built:.1f}s, total {total:.1f}s")
