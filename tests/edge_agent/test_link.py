"""The agent against a real MQTT broker: signed detections, spool replay, verified commands."""

from __future__ import annotations

import io
import time
from pathlib import Path

import paho.mqtt.client as paho
from PIL import Image

from accessctl.project.embedded import ChildService, free_port
from edge_agent.agent import EdgeAgent
from edge_agent.relay import SimulatedRelay
from faceengine import protocol as p
from tests.broker_logins import device_client
from tests.edge_agent.conftest import (
    UID,
    GatedProxy,
    Keys,
    ServerClient,
    broker_start,
    candidate,
    make_config,
    wait_until,
)


def make_agent(tmp_path: Path, keys: Keys, url: str, **door: object) -> tuple[EdgeAgent, SimulatedRelay]:
    relay = SimulatedRelay()
    agent = EdgeAgent(make_config(tmp_path, keys, url, **door), camera=None, detector=None, relay=relay)
    return agent, relay


def test_signed_detection_and_status_reach_the_server(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    agent, _ = make_agent(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        topic, raw = server.next(p.TopicKind.STATUS)
        status = p.open_message(topic, raw, keys.device_public)
        assert status.state is p.DeviceState.ONLINE and status.signed

        sent, size = agent.send_candidate(candidate(), captured_at=time.time())
        topic, raw = server.next(p.TopicKind.DETECTIONS)
        assert len(raw) == size
        got = p.open_message(topic, raw, keys.device_public, window_s=p.DETECTION_WINDOW_S)
        assert got == sent and got.mode is p.Mode.CROP and got.offline_decision is None
        assert Image.open(io.BytesIO(got.crop_jpeg)).size == (112, 112)
        assert {"face_px", "sharpness", "frontal", "yaw"} <= got.quality.keys()
        assert agent.link.wait_drained(5)

        assert agent.send_heartbeat()
        topic, raw = server.next(p.TopicKind.HEARTBEAT)
        hb = p.open_message(topic, raw, keys.device_public)
        assert hb.detections_sent == 1 and hb.bytes_per_detection == size and hb.spool_depth == 0
    finally:
        agent.stop()
    topic, raw = server.next(p.TopicKind.STATUS)
    assert p.open_message(topic, raw, keys.device_public).state is p.DeviceState.OFFLINE


def test_broker_restart_replays_spool_in_order(tmp_path: Path, keys: Keys) -> None:
    port = free_port()
    broker = broker_start(tmp_path, port=port)
    proxy = GatedProxy(port)
    server = ServerClient(broker.host, port)
    agent, _ = make_agent(tmp_path, keys, f"mqtt://127.0.0.1:{proxy.port}", offline_grace_s=600)
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        before = [agent.send_candidate(candidate(), captured_at=time.time())[0].detection_id for _ in range(3)]
        got = [p.open_message(*server.next(p.TopicKind.DETECTIONS), keys.device_public) for _ in range(3)]
        assert [d.detection_id for d in got] == before
        assert agent.link.wait_drained(5)

        server.close()
        broker.stop()
        proxy.close_gate()  # keep the agent out until the "server" is subscribed again
        assert wait_until(lambda: not agent.link.connected, 10)
        during = [agent.send_candidate(candidate(), captured_at=time.time())[0].detection_id for _ in range(5)]
        passes = agent.link.passes
        assert wait_until(lambda: agent.link.passes >= passes + 2, 5)  # a whole sender pass saw them
        assert len(agent.spool) == 5 and agent.link.inflight == 0

        broker = broker_start(tmp_path, port=port)
        server = ServerClient(broker.host, port, client_id="test-server-2")
        proxy.open_gate()
        assert agent.link.wait_connected(15)
        got = []
        while len(got) < 5:
            got.append(p.open_message(*server.next(p.TopicKind.DETECTIONS, 15), keys.device_public))
        assert [d.detection_id for d in got] == during
        assert agent.link.wait_drained(5)
        assert agent.spool.dropped == 0
    finally:
        agent.stop()
        server.close()
        proxy.stop()
        broker.stop()


def command(
    keys: Keys, kind: str = "open", *, uid: str = UID, issued_at: float | None = None, **kw: object
) -> p.Command:
    return p.Command(
        device_uid=uid,
        command=kind,
        command_id=p.new_id(),
        issued_at=issued_at or time.time(),
        reason="granted" if kind == "open" else "unknown_face",
        pulse_ms=300 if kind == "open" else 0,
        **kw,
    )


def test_only_valid_server_commands_open_the_door(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    agent, relay = make_agent(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    accepted: list[p.Command] = []
    agent.command_listeners.append(accepted.append)
    agent.start()
    try:
        assert agent.link.wait_subscribed(10)  # else the forged commands below would prove nothing
        topic = p.commands_topic(UID)
        # signed by the device key (e.g. a broker user replaying device keys): not the server's
        server.publish(topic, p.seal(command(keys), keys.device_private))
        # tampered: valid signature over a different payload
        forged = p.seal(command(keys), keys.server_private).replace(b'"pulse_ms":300', b'"pulse_ms":900')
        server.publish(topic, forged)
        # for another door, too old, unsigned garbage
        server.publish(topic, p.seal(command(keys, uid="door-other"), keys.server_private))
        server.publish(topic, p.seal(command(keys, issued_at=time.time() - 3600), keys.server_private))
        server.publish(topic, b'{"payload":{"command":"open"}}')
        assert wait_until(lambda: agent.link.commands_rejected == 5)
        assert relay.pulses == [] and accepted == []

        good = p.seal(command(keys, detection_id=p.new_id()), keys.server_private)
        server.publish(topic, good)
        assert relay.pulse_event.wait(5)
        assert relay.pulses == [300]
        server.publish(topic, good)  # replay of a valid command
        assert wait_until(lambda: agent.link.commands_rejected == 6)
        assert relay.pulses == [300] and len(accepted) == 1
        assert wait_until(lambda: not relay.released, 2)  # the pulse ended: locked again

        server.publish(topic, p.seal(command(keys, "lockdown"), keys.server_private))
        assert wait_until(lambda: agent.door.lockdown)
    finally:
        agent.stop()


def test_privacy_mode_sends_only_the_embedding(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    from edge_agent.vision import LocalEmbedder

    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.detection.mode = "embedding"
    config.detection.embedding_encoding = "int8"
    embedder = LocalEmbedder("sface")
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay(), embedder=embedder)
    agent.start()
    try:
        sent, size = agent.send_candidate(candidate(), captured_at=time.time())
        got = p.open_message(*server.next(p.TopicKind.DETECTIONS), keys.device_public)
        assert got == sent and got.mode is p.Mode.EMBEDDING and got.crop_jpeg is None
        assert got.model_version == embedder.model_version and got.dim == 128
        values = got.embedding_values()
        assert abs(sum(v * v for v in values) - 1.0) < 0.05  # unit vector, int8-quantised
        assert size < 1500
    finally:
        agent.stop()


def test_unanswered_detection_is_signed_again_until_its_answer_arrives(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    """The broker accepted it but the server never answered (a broker restart or a bridge crash
    can lose an accepted message): the agent sends it again, re-signed, and acts on one answer."""
    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.mqtt.decision_timeout_s = 0.4
    config.mqtt.resend_window_s = 30
    relay = SimulatedRelay()
    agent = EdgeAgent(config, camera=None, detector=None, relay=relay)
    agent.start()
    try:
        assert agent.link.wait_subscribed(10)
        sent, _ = agent.send_candidate(candidate(), captured_at=time.time())
        first = p.open_message(*server.next(p.TopicKind.DETECTIONS), keys.device_public)
        again = p.open_message(*server.next(p.TopicKind.DETECTIONS), keys.device_public)  # no answer: re-sent
        assert first.detection_id == again.detection_id == sent.detection_id
        assert (first.attempt, again.attempt) == (0, 1)
        assert again.sent_at > first.sent_at and again.captured_at == first.captured_at
        assert again.crop_jpeg == first.crop_jpeg

        answer = p.seal(command(keys, detection_id=sent.detection_id), keys.server_private)
        server.publish(p.commands_topic(UID), answer)
        assert relay.pulse_event.wait(5) and relay.pulses == [300]
        assert wait_until(lambda: agent.spool.awaiting == 0, 2)
        # The answer to the re-send (a new command for the same detection) does not open twice.
        second = p.seal(command(keys, detection_id=sent.detection_id), keys.server_private)
        server.publish(p.commands_topic(UID), second)
        marker = p.seal(command(keys, "deny", detection_id=p.new_id()), keys.server_private)
        seen: list[p.Command] = []
        agent.command_listeners.append(seen.append)
        server.publish(p.commands_topic(UID), marker)  # handled after the second answer
        assert wait_until(lambda: seen, 5) and seen[0].command is p.CommandKind.DENY
        assert relay.pulses == [300]
        # Nothing is re-sent once answered: every acknowledgement is handled (nothing queued or in
        # flight) and nothing awaits an answer, and only an awaited detection is ever sent again.
        # (On a slow machine it may have gone out once more before the answer: that is allowed.)
        assert agent.link.wait_drained(5)
        assert agent.spool.awaiting == 0
        resent = agent.link.resent
        agent.link._resend_unanswered(now=time.time() + 5)  # past any backoff: still nothing due
        assert agent.link.resent == resent and len(agent.spool) == 0
        assert agent.heartbeat().awaiting_answer == 0
    finally:
        agent.stop()


def test_late_acknowledgement_of_a_resent_detection_does_not_send_it_again(tmp_path: Path, keys: Keys) -> None:
    """Issue 16 item 3, the interleaving that made the test above flaky, driven step by step: the
    broker acknowledged a re-sent detection, the answer is handled (network thread) before the
    sender thread handles that acknowledgement; the detection must not await (and go) again."""
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")  # never started: no threads
    config.mqtt.decision_timeout_s = 1.0
    relay = SimulatedRelay()
    agent = EdgeAgent(config, camera=None, detector=None, relay=relay)
    link = agent.link
    try:
        sent, _ = agent.send_candidate(candidate(), captured_at=time.time())
        link._hand_over()  # paho keeps a QoS1 message while disconnected
        (first,) = link._inflight
        link._on_publish(link.client, None, first, None, None)  # PUBACK
        link._reap_acks()
        assert agent.spool.awaiting == 1 and len(agent.spool) == 0
        link._resend_unanswered(now=time.time() + 5)  # no answer in time: signed again
        link._hand_over()
        (again,) = link._inflight
        link._on_publish(link.client, None, again, None, None)  # its PUBACK, not handled yet

        answer = paho.MQTTMessage(topic=p.commands_topic(UID).encode())
        answer.payload = p.seal(command(keys, detection_id=sent.detection_id), keys.server_private)
        link._on_message(link.client, None, answer)  # the answer first ...
        assert relay.pulses == [300] and agent.spool.awaiting == 0
        link._reap_acks()  # ... then the late acknowledgement
        assert link.inflight == 0 and len(agent.spool) == 0
        assert agent.spool.awaiting == 0  # on main: 1, so it went out a third time

        link._resend_unanswered(now=time.time() + 60)
        assert link.resent == 1 and len(agent.spool) == 0
        assert agent.heartbeat().awaiting_answer == 0 and relay.pulses == [300]
    finally:
        agent.stop()


def test_agent_gives_up_after_the_resend_window(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.mqtt.decision_timeout_s = 0.2
    config.mqtt.resend_window_s = 1.0
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay())
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        agent.send_candidate(candidate(), captured_at=time.time())
        assert wait_until(lambda: agent.spool.unanswered == 1, 5)
        assert agent.spool.awaiting == 0
        attempts = []
        while not server.messages.empty():
            topic, raw, _ = server.messages.get()
            if p.parse_topic(topic)[1] is p.TopicKind.DETECTIONS:
                attempts.append(p.open_message(topic, raw, keys.device_public).attempt)
        assert len(attempts) >= 2 and attempts == list(range(len(attempts)))  # re-sent, backing off, then not
        assert agent.heartbeat().unanswered == 1
    finally:
        agent.stop()


def test_applied_open_is_not_applied_again_after_a_restart(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    """A genuine ``open`` (seconds old, inside the window) replayed after the agent restarted over
    the same spool directory: the door does not open again, nor for a second answer to its detection."""
    url = f"mqtt://{broker.host}:{broker.port}"
    topic = p.commands_topic(UID)
    detection_id = p.new_id()
    genuine = p.seal(command(keys, detection_id=detection_id), keys.server_private)
    agent, relay = make_agent(tmp_path, keys, url)
    agent.start()
    try:
        assert agent.link.wait_subscribed(10)
        server.publish(topic, genuine)
        assert relay.pulse_event.wait(5) and relay.pulses == [300]
    finally:
        agent.stop()

    again, relay = make_agent(tmp_path, keys, url)  # the same spool directory
    again.start()
    try:
        assert again.link.wait_subscribed(10)
        server.publish(topic, genuine)
        server.publish(topic, p.seal(command(keys, detection_id=detection_id), keys.server_private))
        fresh = p.Command(
            device_uid=UID, command="open", command_id=p.new_id(), issued_at=time.time(), reason="granted",
            pulse_ms=450, detection_id=p.new_id(),
        )  # fmt: skip
        server.publish(topic, p.seal(fresh, keys.server_private))  # handled after the two above
        assert relay.pulse_event.wait(5)
        assert relay.pulses == [450]  # only the fresh command opened the door
    finally:
        again.stop()


def test_agent_gets_no_retained_status_of_other_devices(tmp_path: Path, keys: Keys) -> None:
    """Issue 15 item 2: amqtt sent a connecting client the retained messages matching *anyone's*
    subscriptions, so with the bridge subscribed to ``+/status`` every agent start received the
    other devices' retained status on its commands subscription (logged as ``bad_signature``)."""
    broker = broker_start(tmp_path, devices={"door-other": "other-password"})
    server = ServerClient(broker.host, broker.port)  # subscribed to acs/v1/devices/+/# (persistent)
    other = device_client("door-other", "other-password")
    other.connect(broker.host, broker.port)
    other.loop_start()
    other.publish(p.status_topic("door-other"), b"online (retained)", qos=1, retain=True).wait_for_publish(5)
    assert server.next(p.TopicKind.STATUS)[0] == p.status_topic("door-other")
    agent, relay = make_agent(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        server.next(p.TopicKind.STATUS)  # the agent's own signed "online": it has subscribed by now
        server.publish(p.commands_topic(UID), p.seal(command(keys), keys.server_private))
        assert wait_until(lambda: relay.pulses, 10)
        assert agent.link.foreign_ignored == 0 and agent.link.commands_rejected == 0
    finally:
        agent.stop()
        other.loop_stop()
        other.disconnect()
        server.close()
        broker.stop()


def test_link_ignores_messages_off_its_commands_topic(tmp_path: Path, keys: Keys) -> None:
    """Whatever a broker delivers, only the agent's own commands topic can carry commands."""
    agent, relay = make_agent(tmp_path, keys, "mqtt://127.0.0.1:1")
    link = agent.link
    genuine = p.seal(command(keys, uid="door-other"), keys.server_private)
    for topic in (p.status_topic("door-other"), p.commands_topic("door-other"), "acs/v1/bridge/probe"):
        message = paho.MQTTMessage(topic=topic.encode())
        message.payload = genuine
        link._on_message(link.client, None, message)
    assert link.foreign_ignored == 3 and link.commands_rejected == 0 and not relay.pulses


def test_offline_decided_detection_is_sent_again_past_the_resend_window(tmp_path: Path, keys: Keys) -> None:
    """Issue 19 (bench/offline_door.py): a broker restart loses the bridge's session; the bridge
    comes back up to 30 s after the broker, the device within seconds. A detection the door
    decided alone is a record the access log must get (the server takes it at any age and ignores
    copies), so it is re-sent until ``offline_resend_window_s``; an online one still gives up at
    ``resend_window_s`` (its answer would come too late to open)."""
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")  # never started: driven step by step
    config.mqtt.decision_timeout_s = 1.0
    config.mqtt.resend_window_s = 5.0
    config.mqtt.offline_resend_window_s = 60.0
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay())
    link = agent.link
    try:
        config.door.offline_grace_s = 3600.0  # not connected yet, but within the grace period: online
        online, _ = agent.send_candidate(candidate(), captured_at=time.time())
        config.door.offline_grace_s = 0.0  # the link is down: the door decides alone (fail secure)
        offline, _ = agent.send_candidate(candidate(), captured_at=time.time())
        assert offline.offline_decision is not None and online.offline_decision is None
        link._hand_over()
        for mid in list(link._inflight):
            link._on_publish(link.client, None, mid, None, None)  # PUBACKs: both await their answer
        link._reap_acks()
        start = time.time()
        assert agent.spool.awaiting == 2

        link._resend_unanswered(now=start + 10)  # past resend_window_s: only the online one gives up
        assert agent.spool.awaiting == 1 and agent.spool.unanswered == 1 and link.resent == 1
        (entry,) = agent.spool.peek(limit=5)
        again = p.open_message(entry.topic, entry.payload, keys.device_public)
        assert again.detection_id == offline.detection_id and again.attempt == 1
        assert again.offline_decision == offline.offline_decision  # the same record, signed anew
        link._resend_unanswered(now=start + 40)
        assert agent.spool.awaiting == 1 and link.resent == 2
        link._resend_unanswered(now=start + 61)  # past offline_resend_window_s: given up at last
        assert agent.spool.awaiting == 0 and agent.spool.unanswered == 2 and link.resent == 2
    finally:
        agent.stop()
