"""Offline behaviour: fail-secure stays locked, fail-safe releases; every decision recorded."""

from __future__ import annotations

import json
import time
from pathlib import Path

from accessctl.project.embedded import free_port
from edge_agent.agent import EdgeAgent
from edge_agent.door import DoorController
from edge_agent.relay import SimulatedRelay
from faceengine import protocol as p
from tests.edge_agent.conftest import Keys, candidate, make_config, wait_until


def lockdown() -> p.Command:
    return p.Command(
        device_uid="d", command="lockdown", command_id=p.new_id(), issued_at=time.time(), reason="lockdown"
    )


def test_fail_secure_stays_locked_and_denies(tmp_path: Path) -> None:
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="secure", journal=tmp_path / "journal.jsonl")
    assert door.decide_offline("x") is None  # online: the server decides
    door.set_online(False)
    assert not relay.released
    decision = door.decide_offline("det-1")
    assert decision.action is p.OfflineAction.DENY and decision.basis == "fail_secure"
    assert not relay.released and relay.pulses == []
    line = json.loads((tmp_path / "journal.jsonl").read_text().splitlines()[-1])
    assert line["detection_id"] == "det-1" and line["action"] == "deny"
    assert door.offline_decisions == 1


def test_fail_safe_releases_until_online(tmp_path: Path) -> None:
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="safe", journal=tmp_path / "journal.jsonl")
    door.set_online(False)
    assert relay.released and relay.held_open
    decision = door.decide_offline("det-1")
    assert decision.action is p.OfflineAction.OPEN and decision.basis == "fail_safe"
    door.set_online(True)
    assert not relay.released
    assert door.offline_decisions == 2  # the release itself and the detection
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 2


def test_lockdown_overrides_fail_safe() -> None:
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="safe")
    door.apply(lockdown())
    door.set_online(False)
    assert not relay.released
    assert door.decide_offline("det").basis == "lockdown"


def agent_offline(tmp_path: Path, keys: Keys, fail_mode: str) -> tuple[EdgeAgent, SimulatedRelay]:
    relay = SimulatedRelay()
    # nothing listens on this port: the broker is unreachable from the start
    config = make_config(tmp_path, keys, f"mqtt://127.0.0.1:{free_port()}", fail_mode=fail_mode, offline_grace_s=0.2)
    return EdgeAgent(config, camera=None, detector=None, relay=relay), relay


def test_agent_offline_fail_secure_spools_signed_deny(tmp_path: Path, keys: Keys) -> None:
    agent, relay = agent_offline(tmp_path, keys, "secure")
    agent.start()
    try:
        assert wait_until(lambda: not agent.door.online, 5)
        assert not relay.released
        sent, _ = agent.send_candidate(candidate(), captured_at=time.time())
        (entry,) = agent.spool.peek(limit=5)
        spooled = p.open_message(entry.topic, entry.payload, keys.device_public)
        assert spooled == sent
        assert spooled.offline_decision.action is p.OfflineAction.DENY
        assert agent.heartbeat().offline_decisions == 1
    finally:
        agent.stop()


def test_agent_offline_fail_safe_releases(tmp_path: Path, keys: Keys) -> None:
    agent, relay = agent_offline(tmp_path, keys, "safe")
    agent.start()
    try:
        assert wait_until(lambda: relay.released, 5)
        sent, _ = agent.send_candidate(candidate(), captured_at=time.time())
        assert sent.offline_decision.action is p.OfflineAction.OPEN
        assert sent.offline_decision.basis == "fail_safe"
    finally:
        agent.stop()
    assert not relay.released  # stopping locks the door
