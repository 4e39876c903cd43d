"""The bridge notices when the broker stops delivering to it and recovers by itself (issue 15, item 1).

A real amqtt broker, a real bridge and a real Celery worker (child processes), signed detections.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from accessctl import embedded
from accessctl.models import AccessEvent, Alarm, Door
from devices.bridge import probe_topic
from devices.provisioning import device_provision
from edge_agent import protocol as p
from tests.reliability import rig

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

UID = "liveness-cam"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[embedded.ChildService]:
    """A broker of its own: the takeover below breaks the bridge's session on it."""
    service = embedded.start_mqtt_broker(tmp_path / "mqtt")
    yield service
    service.stop()


def _decided(ids: list[str]) -> bool:
    return AccessEvent.objects.filter(detection_id__in=ids).count() == len(ids)


def _log(children: rig.Children, name: str) -> str:
    return (children.logs / f"{name}-{children.starts[name]}.log").read_text(errors="replace")


def test_client_id_takeover_deafens_the_bridge_and_it_recovers_by_itself(test_env, tmp_path, broker) -> None:
    """The report: a client connects with the bridge's client id (persistent session) and leaves
    again. The bridge reconnects and subscribes, yet the broker delivers nothing more to it (amqtt
    marks the shared session disconnected when the intruder leaves and queues everything). Before:
    no AccessEvent until a manual restart. Now: the bridge's probe does not come back, it raises a
    ``bridge_deaf`` alarm, reconnects, and the queued detections are decided; no restart."""
    client_id = f"liveness-bridge-{os.getpid()}"
    env = {
        **test_env,
        "MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
        "MQTT_CLIENT_ID": client_id,
        "MQTT_BRIDGE_PROBE_INTERVAL_S": "0.5",
        "MQTT_BRIDGE_DEAF_AFTER_S": "3",
    }
    door = Door.objects.create(name="Liveness door")
    key = p.load_private_key(device_provision(uid=UID, door=door).private_key_pem)
    children = rig.Children(env, tmp_path)
    device = rig.Device(UID, key, broker.host, broker.port)
    intruder = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    connected = threading.Event()
    intruder.on_connect = lambda *args: connected.set()
    try:
        children.start_worker()
        children.start_bridge()
        before = device.publish(2)
        assert rig.wait_until(lambda: _decided(before), 60), "not decided before the takeover"

        intruder.connect(broker.host, broker.port)
        intruder.loop_start()
        assert connected.wait(10)
        # The bridge is thrown out, reconnects (taking the session back) and says it is subscribed.
        assert rig.wait_until(lambda: _log(children, "bridge").count("bridge connected") >= 2, 30)
        intruder.disconnect()
        intruder.loop_stop()

        after = device.publish(3)
        assert rig.wait_until(lambda: _decided(after), 60), "detections after the takeover were never decided"
        assert children.alive("bridge") and children.starts["bridge"] == 1  # recovered without a restart
        alarm = Alarm.objects.get(kind=Alarm.Kind.BRIDGE_DEAF)
        assert alarm.details["client_id"] == client_id and alarm.details["silent_s"] >= 3
        log = _log(children, "bridge")
        assert "not even its own probe" in log and probe_topic(client_id) in log
    finally:
        device.close()
        children.close()
