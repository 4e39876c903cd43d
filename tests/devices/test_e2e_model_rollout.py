"""End to end, a model rollout (issue 21): two edge agents in embedding mode (sface) on the test run's
real broker, the bridge as a process, the real database, and the server's download endpoint on a live
server. One of the two devices is rolled to ``facenet-casia``: it gets the signed offer over MQTT,
downloads the 94 MB bundle with requests signed by its key, verifies it, loads FaceNet beside SFace,
self-tests it on the faces it saw, switches, and reports the new model in its heartbeat; the other
device keeps sface. The rollout is done.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accessctl.models import Door
from devices.model_rollout import rollout_create
from devices.models import EdgeDevice, ModelRollout, ModelRolloutDevice
from edge_agent.agent import EdgeAgent
from faceengine.backends.sface import SFACE_MODEL_VERSION
from recognition.model_registry import model_version_register
from tests.devices import e2e
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.dataset("lfw")]

CASIA = "facenet-casia-20180408"
UIDS = ("e2e-model-a", "e2e-model-b")


@pytest.fixture(scope="module")
def bridge(django_db_setup, test_env, tmp_path_factory) -> Iterator[None]:
    logs = tmp_path_factory.mktemp("e2e-model")
    with e2e.child_process(e2e.bridge_argv(), test_env, "bridge connected", logs / "bridge.log"):
        yield


@pytest.fixture
def agents(bridge, live_server, tmp_path: Path) -> Iterator[dict[str, EdgeAgent]]:
    door = Door.objects.create(name="Lobby")
    started: dict[str, EdgeAgent] = {}
    try:
        for uid in UIDS:
            started[uid] = e2e.agent_start(uid, door, tmp_path / uid)
        for agent in started.values():
            assert agent.link.wait_subscribed(15), "an agent did not subscribe to its commands"
        yield started
    finally:
        for agent in started.values():
            agent.stop()


def test_one_of_two_devices_is_rolled_to_facenet_casia_and_reports_it_in_its_heartbeat(
    agents, live_server, settings
) -> None:
    settings.MODEL_DOWNLOAD_BASE_URL = live_server.url
    a, b = (agents[uid] for uid in UIDS)
    for face in e2e.lfw_faces(6):  # the faces door A saw lately: its self-test
        a.samples.add(face)
    # both devices report sface in their heartbeats: they embed, so they can be offered a model
    assert wait_until(
        lambda: EdgeDevice.objects.filter(uid__in=UIDS, model_version=SFACE_MODEL_VERSION).count() == 2, 20
    )
    model_version_register(backend="facenet-casia", model_version=CASIA, options={"flip": False})  # signed

    rollout = rollout_create(model_version=CASIA, devices=[UIDS[0]])

    assert wait_until(lambda: EdgeDevice.objects.get(uid=UIDS[0]).model_version == CASIA, timeout=240)
    row = ModelRolloutDevice.objects.get(rollout=rollout)
    assert wait_until(lambda: ModelRolloutDevice.objects.get(pk=row.pk).status == "switched", timeout=20)
    assert ModelRollout.objects.get(pk=rollout.pk).state == ModelRollout.State.DONE
    assert EdgeDevice.objects.get(uid=UIDS[1]).model_version == SFACE_MODEL_VERSION
    assert a.model_updater is not None and a.model_updater.download_stats.bytes > 90_000_000
    assert a.model_updater.last_self_test is not None and a.model_updater.last_self_test.ok
    face = e2e.lfw_faces(1)[0]
    assert a.build_detection(face, captured_at=time.time()).model_version == CASIA
    assert b.build_detection(face, captured_at=time.time()).model_version == SFACE_MODEL_VERSION
    print(f"facenet-casia rollout on device A: {a.model_updater.timings}, self-test {a.model_updater.last_self_test}")
