"""The decision path on the machine's real services: Celery on Redis and on RabbitMQ, MQTT on Mosquitto
(including a bridge crash with a persistent session, and two bridges sharing one subscription).

Run with ``pytest -m realservices tests/reliability``; each test skips when its service's port is closed.
The database stays the embedded PostgreSQL (it has pgvector). Device uids, MQTT client ids and the
shared-subscription group are unique per run so parallel users of the same broker do not collide.
"""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from accessctl.models import Alarm, Door
from devices.commands import server_public_key_b64
from devices.provisioning import device_provision
from faceengine import protocol as p
from tests.devices import e2e
from tests.reliability import rig
from tests.reliability.test_faults import _assert_exactly_once, bridge_kill_scenario

pytestmark = [pytest.mark.realservices, pytest.mark.slow, pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)
MOSQUITTO = ("127.0.0.1", 1883)
BURST = 30


def _require(name: str, address: tuple[str, int]) -> None:
    if not rig.port_open(*address):
        pytest.skip(f"{name} is not listening on {address[0]}:{address[1]}")


@pytest.fixture
def env(django_db_setup, test_env) -> dict[str, str]:
    """``test_env`` once the test database exists (its name is taken from the live connection)."""
    return test_env


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def door(db) -> Door:
    return Door.objects.create(name="Real services door")


def _device(door: Door, uid: str, address: tuple[str, int]) -> rig.Device:
    key = p.load_private_key(device_provision(uid=uid, door=door).private_key_pem)
    return rig.Device(uid, key, *address)


def _forget_session(client_id: str, address: tuple[str, int]) -> None:
    """Connect once with clean_session so the broker drops a persistent session we left behind."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    try:
        client.connect(*address)
        client.loop_start()
        connected.wait(10)  # the broker dropped the old session when it accepted this one
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass


def _decided_with_commands(device: rig.Device, address: tuple[str, int], count: int = BURST) -> None:
    commands = rig.CommandCollector(*address, server_public_key_b64(), {device.uid})
    try:
        ids = device.publish(count, interval=0.01)
        assert rig.wait_until(lambda: all(commands.got(i) for i in ids), 90), "not every detection got its command"
        time.sleep(1.0)
        _assert_exactly_once(ids)
        assert all(commands.counts[i] == 1 for i in ids), "a detection got more than one command"
    finally:
        commands.close()


@pytest.fixture
def children(django_db_setup, tmp_path) -> Iterator[rig.Children]:
    procs = rig.Children({}, tmp_path)
    yield procs
    procs.close()


@pytest.mark.parametrize(
    ("name", "address", "broker_url"),
    [
        pytest.param("redis", REDIS, "redis://127.0.0.1:6379/{db}", id="celery-on-redis"),
        pytest.param("rabbitmq", RABBITMQ, "amqp://guest:guest@127.0.0.1:5672//", id="celery-on-rabbitmq"),
    ],
)
def test_decisions_with_celery_on_a_real_broker(
    env, children, door, run_id, name: str, address: tuple[str, int], broker_url: str
) -> None:
    _require(name, address)
    url = broker_url.format(db=random.Random(run_id).randint(8, 15))
    if name == "redis":  # everything on the machine's (passwordless) Redis: broker, results, channels, cache
        children.env = {**env, "REDIS_URL": url}
    else:
        children.env = {**env, "CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": env["REDIS_URL"]}
    children.start_worker()
    children.start_bridge()
    worker_log = (children.logs / "worker-1.log").read_text()
    assert re.search(r"Connected to (redis|amqp)://", worker_log), worker_log[-2000:]
    device = _device(door, f"rs-{run_id}", e2e.mqtt_address())
    try:
        _decided_with_commands(device, e2e.mqtt_address())
    finally:
        device.close()


@pytest.fixture
def on_mosquitto(env, children, run_id) -> Iterator[dict[str, str]]:
    _require("mosquitto", MOSQUITTO)
    client_id = f"accessctl-rs-bridge-{run_id}"
    children.env = {**env, "MQTT_URL": f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}", "MQTT_CLIENT_ID": client_id}
    yield children.env
    children.close()
    for suffix in ("", "-a", "-b"):
        _forget_session(client_id + suffix, MOSQUITTO)


def test_decisions_over_mosquitto(on_mosquitto, children, door, run_id) -> None:
    children.start_worker()
    children.start_bridge()
    device = _device(door, f"rs-{run_id}", MOSQUITTO)
    try:
        _decided_with_commands(device, MOSQUITTO)
    finally:
        device.close()


def test_bridge_killed_mid_burst_on_mosquitto(on_mosquitto, children, door, run_id) -> None:
    """Mosquitto keeps the bridge's persistent session: unacknowledged and queued messages come back."""
    device = _device(door, f"fault-{run_id}", MOSQUITTO)
    try:
        bridge_kill_scenario(children, device)
    finally:
        device.close()


def test_two_bridges_share_one_subscription_on_mosquitto(on_mosquitto, children, door, run_id) -> None:
    """MQTT_SHARED_GROUP: Mosquitto spreads detections over two bridges; each is decided exactly once."""
    group = f"bridges-{run_id}"  # unique: another team's bridges in a group "bridges" would take our messages
    children.env = {**children.env, "MQTT_SHARED_GROUP": group, "ACCESSCTL_LOG_LEVEL": "DEBUG"}
    children.start_worker()
    client_id = children.env["MQTT_CLIENT_ID"]
    children.start_bridge("bridge-a", "--client-id", f"{client_id}-a")
    children.start_bridge("bridge-b", "--client-id", f"{client_id}-b")
    device = _device(door, f"rs-{run_id}", MOSQUITTO)
    try:
        _decided_with_commands(device, MOSQUITTO, count=40)
    finally:
        device.close()
    staged = {name: Path(children.logs / f"{name}-1.log").read_text().count("staged detection")
              for name in ("bridge-a", "bridge-b")}  # fmt: skip
    assert sum(staged.values()) == 40, staged
    assert all(n > 0 for n in staged.values()), f"one bridge got everything: {staged}"


def test_a_dead_bridge_of_a_shared_group_is_drained_by_the_live_one(on_mosquitto, children, door, run_id) -> None:
    """Mosquitto keeps giving a killed bridge's persistent session its share of the group's detections;
    one that does not come back is taken over by the live bridge (devices.bridge_takeover): every
    detection is decided once and answered, none waits for the dead bridge."""
    group = f"bridges-{run_id}"
    children.env = {**children.env, "MQTT_SHARED_GROUP": group, "ACCESSCTL_PROCESS_HEARTBEAT_S": "1",
                    "MQTT_BRIDGE_TAKEOVER_AFTER_S": "3"}  # fmt: skip
    children.start_worker()
    client_id = children.env["MQTT_CLIENT_ID"]
    children.start_bridge("bridge-a", "--client-id", f"{client_id}-a")
    children.start_bridge("bridge-b", "--client-id", f"{client_id}-b")
    time.sleep(2.0)  # bridge-b has written a heartbeat naming its group
    children.kill("bridge-b")  # and never comes back
    device = _device(door, f"rs-{run_id}", MOSQUITTO)
    try:
        _decided_with_commands(device, MOSQUITTO, count=40)
    finally:
        device.close()
    log = children.logs / "bridge-a-1.log"
    assert f"bridge {client_id}-b of group {group} wrote no heartbeat" in log.read_text()
    drained = rf"drain of bridge {re.escape(client_id)}-b: drained; [1-9]\d* message"
    assert rig.wait_until(lambda: re.search(drained, log.read_text()), 20), log.read_text()[-3000:]
    alarm = Alarm.objects.get(kind=Alarm.Kind.BRIDGE_DEAF)
    assert alarm.details["client_id"] == f"{client_id}-b" and alarm.details["drained_by"] == f"{client_id}-a"
