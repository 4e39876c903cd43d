"""The door deciding alone with the allow-list while offline; heartbeat acknowledgement."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from accessctl.project.embedded import ChildService, free_port
from edge_agent.agent import EdgeAgent
from edge_agent.allowlist import STORE_FILE, AllowlistStore
from edge_agent.door import DoorController
from edge_agent.relay import SimulatedRelay
from faceengine import protocol as p
from tests.edge_agent.allowlists import (
    MODEL,
    FakeEmbedder,
    entry,
    face_vector,
    header,
    mqtt_message,
    revocation,
    version_commands,
)
from tests.edge_agent.conftest import UID, Keys, ServerClient, candidate, make_config, wait_until

PULSE_MS = 1234


def offline_agent(
    tmp_path: Path, keys: Keys, *, mode: str = "embedding", embedder: FakeEmbedder | None = None, **door: object
) -> tuple[EdgeAgent, SimulatedRelay, FakeEmbedder]:
    """An agent whose broker is unreachable, fail mode allowlist, a fake face model."""
    relay = SimulatedRelay()
    door = {"fail_mode": "allowlist", "offline_grace_s": 0.2, "pulse_ms": PULSE_MS, **door}
    config = make_config(tmp_path, keys, f"mqtt://127.0.0.1:{free_port()}", **door)
    config.detection.mode = mode
    fake = embedder or FakeEmbedder()
    if mode == "embedding":
        agent = EdgeAgent(config, camera=None, detector=None, relay=relay, embedder=fake)
    else:
        agent = EdgeAgent(config, camera=None, detector=None, relay=relay, allowlist_embedder=fake)
    return agent, relay, fake


def give(agent: EdgeAgent, commands) -> None:
    """Deliver signed commands as the broker would (through the link's verification)."""
    for _command, raw in commands:
        agent.link._on_message(agent.link.client, None, mqtt_message(raw))
    assert agent.wait_allowlist_applied(10)


def office_list(keys: Keys, *, version: int = 1, **kw) -> list:
    now = time.time()
    windows = {"office": ((now - 60, now + 3600),), "night": ((now + 7200, now + 9000),)}
    entries = [
        entry("alice", face_vector(0)),
        entry("bob", face_vector(1), schedules=("night",)),
        entry("carol", face_vector(2), schedules=("office",)),
    ]
    return version_commands(keys, header(version, windows=windows, total_entries=3, **kw), entries)


def decide(agent: EdgeAgent, vector: np.ndarray, fake: FakeEmbedder) -> p.Detection:
    fake.vector = vector
    sent, _ = agent.send_candidate(candidate(), captured_at=time.time())
    return sent


def test_offline_allowed_person_opens_with_evidence_others_are_denied(tmp_path: Path, keys: Keys) -> None:
    agent, relay, fake = offline_agent(tmp_path, keys)
    agent.start()
    try:
        give(agent, office_list(keys))
        assert agent.allowlist.valid() is not None
        assert wait_until(lambda: agent.link.offline_for() > 0.3, 5)

        sent = decide(agent, face_vector(0), fake)
        decision = sent.offline_decision
        assert decision.action is p.OfflineAction.OPEN and decision.basis == "allowlist"
        assert (decision.reason, decision.person_ref, decision.allowlist_version) == ("matched", "alice", 1)
        assert decision.similarity > 0.99
        assert relay.pulses == [PULSE_MS]
        assert fake.calls == 1  # embedded once, for the detection and the decision
        # the decision travels with the signed detection in the spool, and in the journal
        entry_ = agent.spool.peek(limit=5)[0]
        spooled = p.open_message(entry_.topic, entry_.payload, keys.device_public)
        assert spooled.offline_decision == decision
        assert p.offline_reason(action=decision.action, basis=decision.basis, reason=decision.reason) == (
            p.Reason.OFFLINE_MATCHED
        )
        line = json.loads((tmp_path / "spool" / "offline-decisions.jsonl").read_text().splitlines()[-1])
        assert line["person_ref"] == "alice" and line["detection_id"] == sent.detection_id

        stranger = decide(agent, face_vector(9), fake).offline_decision
        assert (stranger.action, stranger.reason, stranger.person_ref) == (p.OfflineAction.DENY, "unknown_face", None)
        night = decide(agent, face_vector(1), fake).offline_decision
        assert (night.action, night.reason, night.person_ref) == (p.OfflineAction.DENY, "outside_schedule", "bob")
        assert decide(agent, face_vector(2), fake).offline_decision.action is p.OfflineAction.OPEN  # office hours

        give(agent, [revocation(keys, 1, "alice")])
        revoked = decide(agent, face_vector(0), fake).offline_decision
        assert (revoked.action, revoked.reason) == (p.OfflineAction.DENY, "revoked")
        assert relay.pulses == [PULSE_MS, PULSE_MS]  # alice, carol: nobody else
        hb = agent.heartbeat()
        assert hb.offline_decisions == 5 and hb.revocation_seq == 1 and hb.offline_mode is p.OfflineMode.ALLOWLIST
        assert len(agent.door.latencies_ms()) == 5
    finally:
        agent.stop()


def test_online_the_server_decides_even_with_a_list(tmp_path: Path, keys: Keys) -> None:
    relay = SimulatedRelay()
    store = make_door_store(tmp_path, keys)
    door = DoorController(relay, fail_mode="allowlist", allowlist=store, pulse_ms=PULSE_MS)
    called = []
    assert door.decide_offline("d", embed=lambda: called.append(1) or face_vector(0)) is None
    assert called == [] and relay.pulses == []


def make_door_store(tmp_path: Path, keys: Keys, clock=time.time) -> AllowlistStore:
    store = AllowlistStore(
        tmp_path / "spool",
        device_uid=UID,
        server_public_key=keys.server_public,
        private_key=p.load_private_key(keys.device_private),
        model_version=MODEL,
        clock=clock,
    )
    for command, raw in office_list(keys, expires_in=60):
        store.receive(command, raw)
    return store


def test_expired_list_falls_back_to_secure(tmp_path: Path, keys: Keys) -> None:
    clock = [time.time()]
    store = make_door_store(tmp_path, keys, clock=lambda: clock[0])
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="allowlist", allowlist=store, pulse_ms=PULSE_MS)
    door.set_online(False)
    assert door.offline_mode is p.OfflineMode.ALLOWLIST
    clock[0] += 120
    assert door.offline_mode is p.OfflineMode.SECURE
    decision = door.decide_offline("d", embed=lambda: face_vector(0))
    assert (decision.action, decision.basis) == (p.OfflineAction.DENY, "fail_secure")
    assert relay.pulses == []


def test_lockdown_wins_and_liveness_rules_apply_offline(tmp_path: Path, keys: Keys) -> None:
    store = AllowlistStore(
        tmp_path / "spool",
        device_uid=UID,
        server_public_key=keys.server_public,
        private_key=p.load_private_key(keys.device_private),
        model_version=MODEL,
    )
    for command, raw in version_commands(
        keys, header(1, liveness_required=True, liveness_threshold=0.6), [entry("alice", face_vector(0))]
    ):
        store.receive(command, raw)
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="allowlist", allowlist=store, pulse_ms=PULSE_MS)
    door.set_online(False)
    embed = lambda: face_vector(0)  # noqa: E731
    assert door.decide_offline("a", embed=embed, liveness=None).reason == "liveness_not_measured"
    attack = door.decide_offline("b", embed=embed, liveness=0.1)
    assert (attack.reason, attack.person_ref, attack.action) == ("presentation_attack", "alice", p.OfflineAction.DENY)
    assert relay.pulses == []
    assert door.decide_offline("c", embed=embed, liveness=0.9).action is p.OfflineAction.OPEN
    door.apply(p.Command(device_uid=UID, command="lockdown", command_id=p.new_id(), issued_at=time.time(), reason="x"))
    called = []
    locked = door.decide_offline("d", embed=lambda: called.append(1) or face_vector(0), liveness=0.9)
    assert (locked.action, locked.basis) == (p.OfflineAction.DENY, "lockdown") and called == []
    assert relay.pulses == [PULSE_MS]


def test_crop_mode_embeds_only_for_an_offline_decision(tmp_path: Path, keys: Keys) -> None:
    agent, relay, fake = offline_agent(tmp_path, keys, mode="crop", offline_grace_s=3600)
    try:
        assert agent.heartbeat().model_version == MODEL  # what the server compiles templates for
        give(agent, office_list(keys))
        sent = decide(agent, face_vector(0), fake)  # online (within the grace period): the server decides
        assert sent.offline_decision is None and fake.calls == 0 and sent.mode is p.Mode.CROP
        agent.config.door.offline_grace_s = 0.0
        sent = decide(agent, face_vector(0), fake)
        assert sent.offline_decision.reason == "matched" and fake.calls == 1 and relay.pulses == [PULSE_MS]
    finally:
        agent.stop()


def test_no_list_or_a_tampered_one_at_start_is_secure(tmp_path: Path, keys: Keys) -> None:
    agent, relay, fake = offline_agent(tmp_path, keys)
    try:
        assert agent.heartbeat().offline_mode is p.OfflineMode.SECURE
        assert agent.heartbeat().allowlist_version is None
        assert wait_until(lambda agent=agent: agent.link.offline_for() > 0.3, 5)
        assert decide(agent, face_vector(0), fake).offline_decision.basis == "fail_secure"
        give(agent, office_list(keys))
        hb = agent.heartbeat()
        assert (hb.allowlist_version, hb.allowlist_entries, hb.offline_mode) == (1, 3, p.OfflineMode.ALLOWLIST)
        assert hb.allowlist_expires_at > time.time()
    finally:
        agent.stop()
    # restart: the list comes back from disk, verified again
    agent, relay, fake = offline_agent(tmp_path, keys)
    try:
        assert agent.heartbeat().allowlist_version == 1
        assert wait_until(lambda agent=agent: agent.link.offline_for() > 0.3, 5)
        assert decide(agent, face_vector(0), fake).offline_decision.reason == "matched"
    finally:
        agent.stop()
    path = tmp_path / "spool" / STORE_FILE
    path.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 0xFF]))
    agent, relay, fake = offline_agent(tmp_path, keys)
    try:
        assert agent.heartbeat().offline_mode is p.OfflineMode.SECURE
        assert wait_until(lambda agent=agent: agent.link.offline_for() > 0.3, 5)
        assert decide(agent, face_vector(0), fake).offline_decision.basis == "fail_secure"
        assert relay.pulses == []
    finally:
        agent.stop()


def test_other_fail_modes_report_themselves_and_ignore_lists(tmp_path: Path, keys: Keys) -> None:
    agent, _, _ = offline_agent(tmp_path, keys, fail_mode="safe")
    try:
        give(agent, office_list(keys))
        hb = agent.heartbeat()
        assert hb.offline_mode is p.OfflineMode.SAFE and hb.allowlist_version is None
        assert not (tmp_path / "spool" / STORE_FILE).exists()
    finally:
        agent.stop()


def test_version_and_revocation_are_acknowledged_at_once(
    tmp_path: Path, keys: Keys, broker: ChildService, server: ServerClient
) -> None:
    relay = SimulatedRelay()
    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}", fail_mode="allowlist")
    config.detection.mode = "embedding"
    agent = EdgeAgent(config, camera=None, detector=None, relay=relay, embedder=FakeEmbedder())
    agent.start()
    try:
        assert agent.link.wait_subscribed(10)
        topic = p.commands_topic(UID)

        def next_heartbeat(predicate) -> tuple[p.Heartbeat, float]:
            def matching(raw: bytes) -> p.Heartbeat | None:
                hb = p.open_message(p.heartbeat_topic(UID), raw, keys.device_public)
                return hb if predicate(hb) else None

            return server.wait_for(p.TopicKind.HEARTBEAT, matching, 10), time.monotonic()

        start = time.monotonic()
        for _command, raw in office_list(keys):
            server.publish(topic, raw)
        hb, at = next_heartbeat(lambda hb: hb.allowlist_version == 1)
        assert hb.offline_mode is p.OfflineMode.ALLOWLIST and hb.allowlist_entries == 3
        assert at - start < 3.0  # the heartbeat interval is an hour: this is the acknowledgement
        latencies = []
        for seq in range(1, 11):  # revocation -> its acknowledgement, the device's share of the 5 s target
            start = time.monotonic()
            server.publish(topic, revocation(keys, seq, f"person-{seq}")[1])
            hb, at = next_heartbeat(lambda hb, seq=seq: hb.revocation_seq == seq)
            latencies.append(at - start)
        assert max(latencies) < 3.0, latencies
        print(
            f"revocation acknowledged in {1000 * sorted(latencies)[5]:.0f} ms p50, {1000 * max(latencies):.0f} ms max"
        )
    finally:
        agent.stop()


def test_crop_mode_loads_the_list_model_at_start(tmp_path: Path, keys: Keys) -> None:
    """``build_agent`` in crop mode with fail mode allowlist loads the face model at start (not at
    the first offline face) and the store accepts lists for that model only."""
    from PIL import Image

    from edge_agent.agent import build_agent
    from faceengine.backends.sface import SFACE_MODEL_VERSION

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (64, 64)).save(frames / "0001.jpg")
    config = make_config(tmp_path, keys, f"mqtt://127.0.0.1:{free_port()}", fail_mode="allowlist")
    config.camera.source = str(frames)
    config.liveness.enabled = False
    agent = build_agent(config)
    try:
        assert agent.embedder is None and agent.list_embedder is not None
        assert agent.list_embedder.model_version == SFACE_MODEL_VERSION == agent.allowlist.model_version
    finally:
        agent.stop()
    config.door.fail_mode = "secure"
    plain = build_agent(config)
    try:
        assert plain.list_embedder is None and plain.allowlist is None
    finally:
        plain.stop()


def test_a_list_being_applied_does_not_hold_up_door_commands(tmp_path: Path, keys: Keys) -> None:
    """Allow-list commands are applied on their own thread, in order: a big full list (seconds
    to verify and compile) never delays an ``open`` arriving behind it on the link."""
    import threading

    agent, relay, _ = offline_agent(tmp_path, keys)
    release = threading.Event()
    real_receive = agent.allowlist.receive

    def slow_receive(command: p.Command, raw: bytes) -> bool:
        release.wait(10)
        return real_receive(command, raw)

    agent.allowlist.receive = slow_receive
    try:
        for _command, raw in office_list(keys):
            agent.link._on_message(agent.link.client, None, mqtt_message(raw))
        agent.link._on_message(agent.link.client, None, mqtt_message(revocation(keys, 1, "alice")[1]))
        opening = p.Command(
            device_uid=UID,
            command="open",
            command_id=p.new_id(),
            issued_at=time.time(),
            reason="granted",
            pulse_ms=300,
            detection_id=p.new_id(),
        )
        agent.link._on_message(agent.link.client, None, mqtt_message(p.seal(opening, keys.server_private)))
        assert relay.pulses == [300] and agent.allowlist.valid() is None  # the door acted, the list waits
        assert not agent.wait_allowlist_applied(0.1)
        release.set()
        assert agent.wait_allowlist_applied(10)
        assert agent.allowlist.valid().header.version == 1 and agent.allowlist.status().revocation_seq == 1
    finally:
        release.set()
        agent.stop()


def test_journal_records_the_latency_of_each_list_decision(tmp_path: Path, keys: Keys) -> None:
    """Each decision the list made carries its face emitted -> relay latency (the one
    ``latencies_ms`` keeps); a decision no list made (no valid list) carries none."""
    agent, _relay, fake = offline_agent(tmp_path, keys)
    agent.start()
    try:
        assert wait_until(lambda: agent.link.offline_for() > 0.3, 5)
        decide(agent, face_vector(0), fake)  # no list yet: secure, no latency
        give(agent, office_list(keys))
        decide(agent, face_vector(0), fake)
        decide(agent, face_vector(9), fake)
        lines = [json.loads(x) for x in (tmp_path / "spool" / "offline-decisions.jsonl").read_text().splitlines()]
        assert [line["basis"] for line in lines] == ["fail_secure", "allowlist", "allowlist"]
        assert "latency_ms" not in lines[0]
        assert [line["latency_ms"] for line in lines[1:]] == [round(ms, 3) for ms in agent.door.latencies_ms()]
        assert all(line["latency_ms"] > 0 for line in lines[1:])
    finally:
        agent.stop()
