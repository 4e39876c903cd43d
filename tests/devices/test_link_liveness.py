"""Deaf links (issue 15, item 1): the bridge notices when the broker stops delivering to it and
recovers by itself; a device that heartbeats but gets no answers shows as degraded.

A real amqtt broker (authenticated: tests/broker_logins.py), a real bridge and a real Celery worker
(child processes), signed detections. The broker admits nobody anonymous and binds client ids to
identities, so the takeovers below use the legitimate identity's own credentials: a second bridge
started with the same ``MQTT_CLIENT_ID`` (misconfiguration, or the server's secret leaked) and a
cloned device (its key and broker password copied). amqtt 0.12 still shares one session object per
client id between the two connections, which is what deafens the legitimate one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.conf import settings

from accessctl.models import AccessEvent, Alarm, Door
from accessctl.project import embedded
from devices.bridge import probe_topic
from devices.commands import server_public_key_b64
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from edge_agent.agent import EdgeAgent
from edge_agent.relay import SimulatedRelay
from faceengine import protocol as p
from tests.broker_logins import observer_client, suite_broker_start
from tests.edge_agent.conftest import Keys, make_config
from tests.reliability import rig

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

UID = "liveness-cam"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[embedded.ChildService]:
    """A broker of its own (the suite's identities): the takeover below breaks the bridge's session on it."""
    service = suite_broker_start(tmp_path / "mqtt")
    yield service
    service.stop()


def _decided(ids: list[str]) -> bool:
    return AccessEvent.objects.filter(detection_id__in=ids).count() == len(ids)


def _log(children: rig.Children, name: str) -> str:
    return (children.logs / f"{name}-{children.starts[name]}.log").read_text(errors="replace")


def _intruder(client_id: str, login: tuple[str, str]) -> tuple[mqtt.Client, threading.Event]:
    """A second client with the same identity and client id as a legitimate one, persistent session
    (and it does not retry). ``connected`` is set only when the broker accepted it."""
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
        reconnect_on_failure=False,
    )
    client.username_pw_set(*login)
    connected = threading.Event()

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: mqtt.ReasonCode, props: object) -> None:
        if not reason.is_failure:
            connected.set()

    client.on_connect = on_connect
    return client, connected


def test_client_id_takeover_deafens_the_bridge_and_it_recovers_by_itself(test_env, tmp_path, broker) -> None:
    """The report: a client connects with the bridge's client id (persistent session) and leaves
    again. Anonymous clients and other identities are refused that id now (test_broker_identities);
    what remains is a second bridge with the same ``MQTT_CLIENT_ID`` and the server's credentials
    (a misconfigured second instance, or a leaked server secret). The bridge reconnects and
    subscribes, yet the broker delivers nothing more to it (amqtt marks the shared session
    disconnected when the intruder leaves and queues everything). Before: no AccessEvent until a
    manual restart. Now: the bridge's probe does not come back, it raises a ``bridge_deaf`` alarm,
    reconnects, and the queued detections are decided; no restart."""
    client_id = f"accessctl-liveness-bridge-{os.getpid()}"
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
    intruder, connected = _intruder(client_id, (settings.MQTT_USERNAME, settings.MQTT_PASSWORD))
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


def test_device_without_answers_shows_degraded_then_recovers(test_env, tmp_path, broker) -> None:
    """The same takeover against a device's client id, by a clone of the device (its key and broker
    password copied; nothing else gets that client id in): the agent keeps heartbeating, its detections
    get decided, but the answers never reach it. Before: the dashboard said "online". Now: its
    heartbeat reports the overdue answers and the server shows it ``degraded`` (alarm); the agent
    reconnects by itself, the answers arrive, and it is ``online`` again."""
    env = {**test_env, "MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
           "MQTT_CLIENT_ID": f"accessctl-liveness-bridge-{os.getpid()}"}  # fmt: skip
    door = Door.objects.create(name="Degraded door")
    provisioned = device_provision(uid=UID, door=door)
    keys = Keys(provisioned.private_key_pem, provisioned.device.public_key, "", server_public_key_b64())
    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.device.uid = UID
    config.mqtt.username, config.mqtt.password = UID, provisioned.mqtt_password
    config.agent.heartbeat_interval_s = 0.5
    config.mqtt.decision_timeout_s = 1.0
    config.mqtt.resend_window_s = 20.0
    config.mqtt.unanswered_reconnect_s = 6.0
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay())
    rng = random.Random(UID)
    children = rig.Children(env, tmp_path)
    intruder, connected = _intruder(UID, (UID, provisioned.mqtt_password))

    def detect() -> str:
        detection = rig.embedding_detection(UID, rng)
        agent.link.send(
            p.detections_topic(UID), p.seal(detection, agent.private_key), detection_id=detection.detection_id
        )
        return detection.detection_id

    def status() -> str:
        return EdgeDevice.objects.get(uid=UID).status

    try:
        children.start_worker()
        children.start_bridge()
        agent.start()
        assert agent.link.wait_subscribed(10)
        answered = detect()
        assert rig.wait_until(lambda: _decided([answered]) and agent.spool.awaiting == 0, 60)
        assert rig.wait_until(lambda: status() == EdgeDevice.Status.ONLINE, 10)

        intruder.connect(broker.host, broker.port)
        intruder.loop_start()
        assert connected.wait(10)
        # The agent is thrown out and connects again, taking its session back; then the intruder leaves.
        assert rig.wait_until(lambda: agent.link.connects >= 2 and agent.link.wait_subscribed(0), 30)
        intruder.disconnect()
        intruder.loop_stop()
        started = time.monotonic()
        unanswered = detect()

        assert rig.wait_until(lambda: Alarm.objects.filter(kind=Alarm.Kind.DEVICE_DEGRADED).exists(), 30, step=0.1)
        alarm = Alarm.objects.get(kind=Alarm.Kind.DEVICE_DEGRADED)
        assert alarm.device_uid == UID and alarm.details["answers_overdue"] >= 1
        # the server does decide (a loaded machine may take longer than the alarm); the answer does not reach the door
        assert rig.wait_until(lambda: _decided([unanswered]), 30)
        assert agent.link.reconnects == 0, "recovered before the server could see it degraded"

        assert rig.wait_until(lambda: agent.spool.awaiting == 0 and status() == EdgeDevice.Status.ONLINE, 60)
        assert agent.link.reconnects >= 1 and time.monotonic() - started >= config.mqtt.unanswered_reconnect_s
        assert AccessEvent.objects.filter(detection_id=unanswered).count() == 1
    finally:
        agent.stop()
        children.close()


class _Recorder:
    """A bridge handler that records what it handled; raises OperationalError for ``failing`` payloads."""

    def __init__(self, failing: bytes = b"") -> None:
        self.failing = failing
        self.handled: list[tuple[str, bytes]] = []
        self.attempts = 0

    def __call__(self, topic: str, payload: bytes, ack) -> None:
        from django.db import OperationalError

        if payload == self.failing:
            self.attempts += 1
            raise OperationalError("database unavailable (test)")
        self.handled.append((topic, payload))
        ack()


@pytest.fixture
def running_bridge(broker):
    """An in-process bridge on the test's own broker; yields a factory."""
    from django.test import override_settings

    started: list[tuple[object, threading.Thread]] = []

    def start(handler, **options):
        from devices.bridge import Bridge

        with override_settings(MQTT_URL=f"mqtt://{broker.host}:{broker.port}"):
            bridge = Bridge(handler, client_id=f"accessctl-inproc-bridge-{os.getpid()}", workers=1, **options)
        thread = threading.Thread(target=bridge.run_forever, daemon=True)
        thread.start()
        started.append((bridge, thread))
        assert bridge.connected.wait(10)
        return bridge

    yield start
    for bridge, thread in started:
        bridge.stop()
        thread.join(10)


def _publisher(broker) -> mqtt.Client:
    client = observer_client(f"pub-{os.getpid()}")
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def test_bridge_probes_only_when_idle_and_keeps_the_probe_tiny(broker, running_bridge) -> None:
    heard: list[bytes] = []
    spy = observer_client(f"spy-{os.getpid()}")  # the test-only observer reads acs/v1/#, the bridge's topics too
    spy.on_message = lambda c, u, m: heard.append(m.payload)
    spy.connect(broker.host, broker.port)
    spy.subscribe("acs/v1/bridge/#", qos=1)
    spy.loop_start()
    try:
        bridge = running_bridge(_Recorder(), probe_interval_s=0.3, deaf_after_s=5.0)
        assert rig.wait_until(lambda: len(heard) >= 3, 10, step=0.05)
        assert all(len(body) < 40 for body in heard), heard
        assert bridge.recoveries == 0 and bridge.connected.is_set()
    finally:
        spy.loop_stop()
        spy.disconnect()


def test_bridge_reconnects_after_leaving_a_message_for_redelivery(broker, running_bridge) -> None:
    """The database stays unreachable past ``retry_for_s``: the bridge leaves the message
    unacknowledged and reconnects. Before, it called ``disconnect()``, which ends paho's network
    thread for good: the bridge never received anything again."""
    handler = _Recorder(failing=b"db-down")
    bridge = running_bridge(handler, retry_for_s=0.3, probe_interval_s=0.5, deaf_after_s=5.0)
    client = _publisher(broker)
    try:
        client.publish("acs/v1/devices/cam-1/heartbeat", b"db-down", qos=1).wait_for_publish(5)
        assert rig.wait_until(lambda: handler.attempts >= 1 and bridge.connects >= 2, 10, step=0.05)
        handler.failing = b""  # the database is back
        assert bridge.connected.wait(10)
        client.publish("acs/v1/devices/cam-1/heartbeat", b"later", qos=1).wait_for_publish(5)
        assert rig.wait_until(lambda: ("acs/v1/devices/cam-1/heartbeat", b"later") in handler.handled, 10)
    finally:
        client.loop_stop()
        client.disconnect()
