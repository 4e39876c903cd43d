"""The offline allow-list end to end with the agent as a real process: real broker, camera folder,
MTCNN and the sface model, a list signed by the test "server"; the link is cut and the broker
stopped, and the door decides alone; when the broker returns the spooled detections carry the
evidence. The agent reaches the broker through a gate the test holds shut until its "server" has
subscribed again: otherwise, on a slow machine, the agent can reconnect and hand over its spool
before anyone listens, the broker drops it, and only live detections follow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from accessctl.project.embedded import free_port
from edge_agent.allowlist import STORE_FILE
from faceengine import protocol as p
from faceengine.protocol.allowlist import ALWAYS, AllowlistEntry, AllowlistHeader, Template, allowlist_chunks
from tests.edge_agent.allowlists import signed
from tests.edge_agent.conftest import (
    DEVICE_PASSWORD,
    UID,
    GatedProxy,
    Keys,
    ServerClient,
    broker_start,
    face_image,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
PULSE_MS = 777


def write_config(tmp_path: Path, keys: Keys, port: int, frames: Path) -> Path:
    key = tmp_path / "device.key"
    key.write_text(keys.device_private)
    os.chmod(key, 0o600)
    config = tmp_path / "edge.toml"
    config.write_text(
        f"""
[device]
uid = "{UID}"
private_key_path = "{key}"
server_public_key = "{keys.server_public}"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
username = "{UID}"
password = "{DEVICE_PASSWORD}"
reconnect_min_s = 1
reconnect_max_s = 1
decision_timeout_s = 3600
[camera]
source = "{frames}"
folder_repeat = 3
folder_loop = true
max_fps = 4
[detection]
mode = "embedding"
min_face_px = 40
[liveness]
enabled = false
[spool]
dir = "{tmp_path / "spool"}"
[door]
fail_mode = "allowlist"
offline_grace_s = 1.0
pulse_ms = {PULSE_MS}
[agent]
heartbeat_interval_s = 3600
"""
    )
    return config


def journal(tmp_path: Path) -> list[dict]:
    path = tmp_path / "spool" / "offline-decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_agent_process_decides_alone_with_its_signed_list(tmp_path: Path, keys: Keys) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(face_image()).save(frames / "0001.jpg")  # a visitor ...
    Image.new("RGB", face_image().shape[1::-1], (90, 90, 90)).save(frames / "0002.jpg")  # ... who leaves
    port = free_port()
    broker = broker_start(tmp_path, port=port)
    server = ServerClient(broker.host, port)
    proxy = GatedProxy(port)  # the agent's link to the broker
    log = tmp_path / "agent.log"
    handle = log.open("wb")
    config = write_config(tmp_path, keys, proxy.port, frames)
    argv = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACS_EDGE_")}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # online: the first detection carries the visitor's embedding; "enrol" it in a signed list
        first = server.wait_for(
            p.TopicKind.DETECTIONS, lambda raw: p.open_message(p.detections_topic(UID), raw, keys.device_public), 120
        )
        assert first.offline_decision is None and first.mode is p.Mode.EMBEDDING
        own = np.asarray(first.embedding_values(), dtype=np.float32)
        rng = np.random.default_rng(0)
        entries = [AllowlistEntry(ref="visitor", schedules=(ALWAYS,), templates=(Template.from_values(own.tolist()),))]
        entries += [
            AllowlistEntry(
                ref=f"other-{i}",
                schedules=(ALWAYS,),
                templates=(Template.from_values(rng.standard_normal(own.size).tolist()),),
            )
            for i in range(50)
        ]
        now = time.time()
        header = AllowlistHeader(
            version=1,
            base_version=None,
            issued_at=now,
            expires_at=now + 3600,
            model_version=first.model_version,
            dim=own.size,
            threshold=0.5,
            margin=0.05,
            liveness_required=False,
            liveness_threshold=None,
            windows={},
            total_entries=len(entries),
        )
        for chunk in allowlist_chunks(header, entries, max_bytes=4000):
            server.publish(p.commands_topic(UID), signed(keys, chunk.to_dict())[1])

        def list_applied(raw: bytes) -> p.Heartbeat | None:
            hb = p.open_message(p.heartbeat_topic(UID), raw, keys.device_public)
            return hb if hb.allowlist_version == 1 else None

        hb = server.wait_for(p.TopicKind.HEARTBEAT, list_applied, 60)
        assert hb.offline_mode is p.OfflineMode.ALLOWLIST and hb.allowlist_entries == 51
        assert b"visitor" not in (tmp_path / "spool" / STORE_FILE).read_bytes()

        # link cut: the door decides alone
        proxy.close_gate()
        server.close()
        broker.stop()
        assert wait_until(lambda: any(line.get("basis") == "allowlist" for line in journal(tmp_path)), 90), (
            log.read_text(errors="replace")[-3000:]
        )
        decision = next(line for line in journal(tmp_path) if line.get("basis") == "allowlist")
        assert (decision["action"], decision["reason"], decision["person_ref"]) == ("open", "matched", "visitor")
        assert decision["allowlist_version"] == 1 and decision["similarity"] > 0.9
        text = log.read_text(errors="replace")
        assert f"relay pulse {PULSE_MS} ms" in text and "offline allow-list v1: open matched" in text

        # the link returns: the detections decided offline arrive signed, with their evidence
        broker = broker_start(tmp_path, port=port)
        server = ServerClient(broker.host, port, client_id="test-server-2")
        proxy.open_gate()  # only now: the server listens before the agent can hand over its spool

        def decided_offline(raw: bytes) -> p.Detection | None:
            detection = p.open_message(p.detections_topic(UID), raw, keys.device_public)
            return detection if detection.offline_decision is not None else None

        try:
            detection = server.wait_for(p.TopicKind.DETECTIONS, decided_offline, 90)
        except TimeoutError:
            raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
        od = detection.offline_decision
        assert (od.basis, od.reason, od.person_ref, od.allowlist_version) == ("allowlist", "matched", "visitor", 1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        handle.close()
        proxy.stop()
        server.close()
        broker.stop()  # idempotent, like closing the client twice
