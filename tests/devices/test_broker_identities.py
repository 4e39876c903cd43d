"""The broker admits only known identities, binds client ids to them and limits each to its topics.

The same password/ACL files are enforced by the embedded amqtt broker and by the machine's real
Mosquitto (2.0, two listeners: devices with ``use_username_as_clientid``, the server with its own
files), and every assertion below runs against both.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from accessctl.project import embedded
from accessctl.project import mqtt_identities as mi
from devices.bridge import probe_topic
from tests.broker_logins import SERVER_LOGIN, standalone_identities_write

MOSQUITTO = "/usr/sbin/mosquitto"
DEVICES = {"cam-a": "password-of-a", "cam-b": "password-of-b"}
SERVER_ID = "accessctl-bridge-id-test"
PROBE = probe_topic(SERVER_ID)  # acs/v1/bridge/<client id>/probe: the bridge's liveness probe


@dataclass
class Broker:
    kind: str
    device_port: int
    server_port: int
    auth_dir: Path
    reload: object = None  # callable: make the broker re-read the files (Mosquitto: SIGHUP)


def _mosquitto(tmp_path: Path, auth_dir: Path) -> Iterator[Broker]:
    device_port, server_port = embedded.free_port(), embedded.free_port()
    conf = tmp_path / "mosquitto.conf"
    text = mi.mosquitto_conf(
        auth_dir=auth_dir, device_port=device_port, server_port=server_port, server_host="127.0.0.1"
    )
    # the test runs as whoever runs pytest (root in CI): keep that user so the 0600 files stay readable
    conf.write_text(
        f"user {os.getenv('USER') or 'root'}\npersistence false\nlog_dest file {tmp_path / 'm.log'}\n{text}"
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        embedded.wait_for_port("127.0.0.1", device_port)
        embedded.wait_for_port("127.0.0.1", server_port)
        yield Broker("mosquitto", device_port, server_port, auth_dir, reload=lambda: proc.send_signal(signal.SIGHUP))
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    auth_dir = tmp_path / "auth"
    standalone_identities_write(auth_dir, devices=DEVICES)
    if request.param == "mosquitto":
        if not Path(MOSQUITTO).exists():
            pytest.fail(f"{MOSQUITTO} is required for this test (apt-get install mosquitto)")
        yield from _mosquitto(tmp_path, auth_dir)
        return
    service = embedded.start_mqtt_broker(tmp_path / "amqtt", auth_dir=auth_dir)
    try:
        yield Broker("amqtt", service.port, service.port, auth_dir, reload=lambda: None)
    finally:
        service.stop()


@dataclass
class Client:
    """A paho client that records what it receives and whether it lost its connection."""

    client: mqtt.Client
    refused: object = None
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    disconnects: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    suback: list[int] = field(default_factory=list)

    def wait_for(self, predicate: object, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)  # type: ignore[arg-type]

    def topics(self) -> list[str]:
        with self._cond:
            return [topic for topic, _ in self.messages]

    def subscribe(self, topic: str) -> int:
        before = len(self.suback)
        self.client.subscribe(topic, qos=1)
        assert self.wait_for(lambda: len(self.suback) > before), f"no SUBACK for {topic}"
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes = b"x", retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connect(
    port: int, client_id: str, login: tuple[str, str] | None, *, clean: bool = True, will: str | None = None
) -> Client:
    """Connect and wait for the CONNACK; ``.refused`` holds the reason code of a refusal."""
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    paho.reconnect_delay_set(1, 1)
    if login:
        paho.username_pw_set(*login)
    if will:
        paho.will_set(will, b"offline", qos=1, retain=True)
    box = Client(paho)
    answered = threading.Event()

    def on_connect(c: mqtt.Client, u: object, flags: object, reason: mqtt.ReasonCode, props: object) -> None:
        box.refused = reason if reason.is_failure else None
        answered.set()

    def on_disconnect(c: mqtt.Client, u: object, flags: object, reason: object, props: object) -> None:
        with box._cond:
            box.disconnects += 1
            box._cond.notify_all()

    def on_message(c: mqtt.Client, u: object, message: mqtt.MQTTMessage) -> None:
        with box._cond:
            box.messages.append((message.topic, message.payload))
            box._cond.notify_all()

    def on_subscribe(c: mqtt.Client, u: object, mid: int, codes: list[mqtt.ReasonCode], props: object) -> None:
        with box._cond:
            box.suback.append(codes[0].value)
            box._cond.notify_all()

    paho.on_connect, paho.on_disconnect, paho.on_message, paho.on_subscribe = (
        on_connect,
        on_disconnect,
        on_message,
        on_subscribe,
    )
    paho.connect("127.0.0.1", port, keepalive=30)
    paho.loop_start()
    assert answered.wait(10), "no CONNACK"
    if box.refused is not None:
        box.close()
    return box


def refused(port: int, client_id: str, login: tuple[str, str] | None, **kw: object) -> bool:
    box = connect(port, client_id, login, **kw)  # type: ignore[arg-type]
    ok = box.refused is not None
    if not ok:
        box.close()
    return ok


def device(broker: Broker, uid: str, client_id: str | None = None) -> Client:
    box = connect(broker.device_port, client_id or uid, (uid, DEVICES[uid]))
    assert box.refused is None, box.refused
    return box


def server(broker: Broker, client_id: str = SERVER_ID, clean: bool = True) -> Client:
    box = connect(broker.server_port, client_id, SERVER_LOGIN, clean=clean)
    assert box.refused is None, box.refused
    for kind in ("detections", "heartbeat", "status"):
        assert box.subscribe(f"acs/v1/devices/+/{kind}") == 1
    return box


def topic(uid: str, kind: str) -> str:
    return f"acs/v1/devices/{uid}/{kind}"


def test_nobody_anonymous_and_no_wrong_password(broker: Broker) -> None:
    for port in {broker.device_port, broker.server_port}:
        assert refused(port, "cam-a", None)
        assert refused(port, "cam-a", ("cam-a", "wrong"))
        assert refused(port, "accessctl-x", (SERVER_LOGIN[0], "wrong"))
        assert refused(port, "cam-a", ("nobody", "password-of-a"))


def test_server_identity_reads_devices_writes_commands_and_bridge_topics(broker: Broker) -> None:
    srv, cam = server(broker), device(broker, "cam-a")
    try:
        assert cam.subscribe(topic("cam-a", "commands")) == 1
        for kind in ("detections", "heartbeat", "status"):
            cam.publish(topic("cam-a", kind), kind.encode())
        assert srv.wait_for(lambda: len(srv.messages) >= 3)
        assert sorted(srv.topics()) == sorted(topic("cam-a", k) for k in ("detections", "heartbeat", "status"))
        srv.publish(topic("cam-a", "commands"), b"open")
        assert cam.wait_for(lambda: cam.topics() == [topic("cam-a", "commands")])
        # the bridge's self-probe: it subscribes to its own probe topic and publishes there
        assert srv.subscribe(PROBE) == 1
        srv.publish(PROBE, b"probe")
        assert srv.wait_for(lambda: PROBE in srv.topics())
    finally:
        srv.close()
        cam.close()


def test_a_device_writes_only_its_topics_and_reads_only_its_commands(broker: Broker) -> None:
    srv, a, b = server(broker), device(broker, "cam-a"), device(broker, "cam-b")
    try:
        assert srv.subscribe("acs/v1/bridge/#") == 1  # would hear a forged probe (below)
        assert b.subscribe(topic("cam-b", "commands")) == 1
        # a cannot read b's commands nor every device's detections, nor the bridge's topics: amqtt
        # refuses the subscription, Mosquitto 2.0 grants it but delivers nothing a may not read
        for forbidden in (topic("cam-b", "commands"), "acs/v1/devices/+/detections", "acs/v1/#", "acs/v1/bridge/#"):
            granted = a.subscribe(forbidden)
            assert granted == 0x80 or broker.kind == "mosquitto"
        assert a.subscribe(topic("cam-a", "commands")) == 1
        # a cannot write as b, nor commands, nor on the bridge's topics (a device faking the bridge's
        # probe would keep a deaf bridge believing it hears); its own detection goes through
        for forbidden in (topic("cam-b", "detections"), topic("cam-b", "status"), topic("cam-a", "commands")):
            a.publish(forbidden, b"forged")
        a.publish(PROBE, b"forged")
        a.publish("acs/v1/bridge/probe/1", b"forged")
        a.publish(topic("cam-a", "detections"), b"mine")
        assert srv.wait_for(lambda: topic("cam-a", "detections") in srv.topics())
        # the bridge's own probe still arrives (so the forged one above would have, had it passed)
        srv.publish(PROBE, b"probe")
        assert srv.wait_for(lambda: PROBE in srv.topics())
        assert srv.messages == [(topic("cam-a", "detections"), b"mine"), (PROBE, b"probe")]
        # b's traffic never reaches a: b publishes, then the server answers a (a sees only that)
        b.publish(topic("cam-b", "detections"), b"b")
        srv.publish(topic("cam-b", "commands"), b"for b")
        srv.publish(topic("cam-a", "commands"), b"for a")
        assert a.wait_for(lambda: len(a.messages) >= 1)
        assert b.wait_for(lambda: len(b.messages) >= 1)
        assert a.messages == [(topic("cam-a", "commands"), b"for a")]
        assert b.messages == [(topic("cam-b", "commands"), b"for b")]
    finally:
        for box in (srv, a, b):
            box.close()


def test_a_device_cannot_leave_a_will_on_another_devices_status(broker: Broker) -> None:
    srv = server(broker)
    try:
        box = connect(broker.device_port, "cam-a", ("cam-a", DEVICES["cam-a"]), will=topic("cam-b", "status"))
        if box.refused is None:  # Mosquitto accepts the CONNECT; the will must then never be published
            box.client.socket().close()  # dies without DISCONNECT: the broker would send its will
            box.client.loop_stop()
        b = device(broker, "cam-b")
        b.publish(topic("cam-b", "status"), b"online")
        assert srv.wait_for(lambda: topic("cam-b", "status") in srv.topics())
        assert [m for m in srv.messages if m[0] == topic("cam-b", "status")] == [(topic("cam-b", "status"), b"online")]
        b.close()
    finally:
        srv.close()


def test_client_id_takeover_is_refused(broker: Broker) -> None:
    """Nobody silences the bridge or a device by connecting with its client id."""
    srv = server(broker, clean=False)  # the bridge: persistent session
    b = device(broker, "cam-b")
    try:
        assert b.subscribe(topic("cam-b", "commands")) == 1
        # without the right password, with the server's id (clean session: amqtt used to drop the
        # bridge's session before checking anything) or with a device's id
        for cid in (SERVER_ID, "cam-b"):
            assert refused(broker.device_port, cid, ("cam-a", "wrong"))
            assert refused(broker.server_port, cid, ("cam-a", "wrong"))
        # with a device's valid password: amqtt refuses the foreign client id; Mosquitto's device
        # listener replaces it by the username. Either way the owner keeps its session.
        for cid in (SERVER_ID, "cam-b"):
            attacker = connect(broker.device_port, cid, ("cam-a", DEVICES["cam-a"]))
            if broker.kind == "amqtt":
                assert attacker.refused is not None
            else:
                attacker.close()
        b.publish(topic("cam-b", "detections"), b"after")
        assert srv.wait_for(lambda: topic("cam-b", "detections") in srv.topics())
        srv.publish(topic("cam-b", "commands"), b"answer")
        assert b.wait_for(lambda: len(b.messages) == 1)
        assert srv.disconnects == 0 and b.disconnects == 0
    finally:
        srv.close()
        b.close()


def test_revoked_device_is_cut_off(broker: Broker) -> None:
    a = device(broker, "cam-a")
    try:
        remaining = {uid: pw for uid, pw in DEVICES.items() if uid != "cam-a"}
        standalone_identities_write(broker.auth_dir, devices=remaining)
        broker.reload()  # type: ignore[operator]
        assert refused(broker.device_port, "cam-a", ("cam-a", DEVICES["cam-a"]))
        # and the live connection is dropped (amqtt: its file watcher; Mosquitto: on SIGHUP)
        assert a.wait_for(lambda: a.disconnects >= 1)
        assert refused(broker.device_port, "cam-a", ("cam-a", DEVICES["cam-a"]))
    finally:
        a.close()


def test_generated_hashes_are_mosquitto_compatible(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(tmp_path / "pw"), "someone", "s3cret"], check=True)
    hashed = mi.passwd_parse((tmp_path / "pw").read_text())["someone"]
    assert mi.password_verify("s3cret", hashed) and not mi.password_verify("s3cret!", hashed)
    ours = mi.password_hash("s3cret")
    assert ours.startswith("$7$") and mi.password_verify("s3cret", ours)
