"""End to end, the offline allow-list (issue 19) on the whole stack: the test database, a dedicated
embedded broker that the tests stop and start again on the same port (the link cut), the bridge and a
real Celery worker as processes, and the edge agent as a process (``python -m edge_agent run``, its
config as provisioning writes it, crop mode, fail mode ``allowlist``) whose camera is a folder that
the tests drop visitors into: other LFW photos of enrolled people, pasted into a 640x480 frame.

The server compiles, signs, pushes and revokes the lists (devices.allowlist), the agent stores,
verifies and decides alone while the broker is down, and when it returns the server records the
offline decisions (accessctl.offline_decisions) and raises ``offline_disagreement`` where it would
have denied. A list signed by another key, or one already expired, is refused by the agent process,
which then stays ``secure``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import cache
from django.test import override_settings
from PIL import Image

from accessctl.audit import chain_verify
from accessctl.models import AccessEvent, AccessGroup, Alarm, Door, Person
from devices import commands
from devices.allowlist_triggers import _PENDING_KEY
from devices.models import DeviceAllowlist, DeviceRevocation
from devices.provisioning import agent_config, device_provision, secret_file_write
from faceengine import protocol as p
from faceengine.pipeline import embed_image
from faceengine.protocol.allowlist import ALWAYS, AllowlistEntry, AllowlistHeader, Template, allowlist_chunks
from recognition.engine import active_embedder
from recognition.models import FaceEmbedding
from tests import faces
from tests.broker_logins import standalone_broker_start, suite_broker_start
from tests.devices import e2e
from tests.edge_agent.conftest import DEVICE_PASSWORD, OBSERVER, UID, ServerClient
from tests.reliability import rig
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.dataset("lfw"),
]

A, B, C = "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"
PULSE_MS = 1234
GRACE_S = 1.5


# --- The stack -----------------------------------------------------------------------------


class Stack:
    """A dedicated broker (stopped and started again on its port), the bridge and a worker on it."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work
        self.broker = suite_broker_start(work / "mqtt")
        self.port = self.broker.port
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.env = {
            **env,
            "MQTT_URL": self.url,
            "MQTT_CLIENT_ID": f"accessctl-e2e-allowlist-{os.getpid()}",
            "ACCESSCTL_ALLOWLIST_DEBOUNCE_S": "0.5",
            "ACCESSCTL_ALLOWLIST_RESYNC_S": "3",
        }
        self.children = rig.Children(self.env, work)

    def cut(self) -> None:
        self.broker.stop()

    def restore(self) -> None:
        self.broker = suite_broker_start(self.work / "mqtt", port=self.port)

    def close(self) -> None:
        self.children.close()
        self.broker.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup, test_env, tmp_path_factory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("e2e-allowlist"), test_env)
    try:
        built.children.start_worker()
        built.children.start_bridge()
        yield built
    finally:
        built.close()


@pytest.fixture
def server_on_stack(stack: Stack, settings) -> Iterator[Stack]:
    """This process publishes revocations (on commit of a suspension): on the dedicated broker too."""
    commands.publisher.close()
    settings.MQTT_URL = stack.url
    settings.MQTT_CLIENT_ID = f"accessctl-e2e-allowlist-test-{os.getpid()}"
    if not stack.children.alive("bridge") or not stack.children.alive("worker"):
        pytest.fail("the bridge or the worker died")
    if not rig.port_open("127.0.0.1", stack.port):
        stack.restore()
    yield stack
    commands.publisher.close()


# --- The agent as a process ----------------------------------------------------------------


class Agent:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.inbox = folder / "inbox"
        self.spool = folder / "spool"
        self.log = folder / "agent.log"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._shown = 0

    def journal(self) -> list[dict]:
        path = self.spool / "offline-decisions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def pulses(self) -> int:
        return self.text().count(f"relay pulse {PULSE_MS} ms")

    def show(self, photo: Path, timeout: float = 90) -> dict:
        """A visitor in front of the camera while the link is down; returns the door's decision."""
        before = len(self.journal())
        self._shown += 1
        frame = Image.new("RGB", (640, 480), (96, 96, 96))
        with Image.open(photo) as face:
            face = face.convert("RGB")
            frame.paste(face, ((640 - face.width) // 2, (480 - face.height) // 2))
        staged = self.folder / f"{self._shown:04d}.jpg"
        frame.save(staged, quality=95)
        staged.replace(self.inbox / staged.name)  # never read half-written
        assert wait_until(lambda: len(self.journal()) > before, timeout), self.text()[-4000:]
        decisions = self.journal()[before:]
        assert len(decisions) == 1, decisions  # one visitor, one track, one decision
        return decisions[0]


@contextmanager
def agent_process(folder: Path, config_text: str) -> Iterator[Agent]:
    agent = Agent(folder)
    config = folder / "agent.toml"
    secret_file_write(config, config_text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACS_EDGE_")}
    argv = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    with e2e.child_process(argv, env, "", agent.log):
        yield agent


def _agent_sections(agent_dir: Path) -> str:
    return f"""
[camera]
source = "inbox:{agent_dir / "inbox"}"
max_fps = 5
folder_repeat = 4
[detection]
mode = "crop"
min_face_px = 40
[liveness]
enabled = false
[spool]
dir = "{agent_dir / "spool"}"
[agent]
heartbeat_interval_s = 2.0
"""


def _provisioned_agent_config(uid: str, door: Door, url: str, agent_dir: Path) -> str:
    """The config ``provision_device --out`` writes for the device, with the test's camera and pace."""
    provisioned = device_provision(uid=uid, door=door)
    key = agent_dir / "device.key"
    secret_file_write(key, provisioned.private_key_pem)
    text = agent_config(provisioned, key_path=str(key), mqtt_url=url)
    assert 'fail_mode = "allowlist"' in text and f"pulse_ms = {PULSE_MS}" in text
    text = text.replace("[door]\n", f"[door]\noffline_grace_s = {GRACE_S}\n", 1)
    text = text.replace("[mqtt]\n", "[mqtt]\nreconnect_min_s = 0.5\nreconnect_max_s = 1.0\n", 1)
    return text + _agent_sections(agent_dir)


# --- The site ------------------------------------------------------------------------------


def _enrol(person: Person, name: str) -> None:
    embedder = active_embedder()
    for path in faces.face_paths(name, 3):
        with Image.open(path) as image:
            face = embed_image(image.convert("RGB"), embedder=embedder, max_faces=1)[0]
        FaceEmbedding.objects.create(
            person=person, model_version=face.model_version, embedding=face.embedding.tolist(), quality=1.0
        )


def _visitor(name: str, index: int) -> Path:
    """Another photo of ``name`` than the three enrolled ones."""
    return faces.face_paths(name, 1, offset=3 + index)[0]


@pytest.fixture
def site(server_on_stack: Stack, tmp_path: Path) -> dict:
    door = Door.objects.create(name="Server room", fail_mode=Door.FailMode.ALLOWLIST, relay_pulse_ms=PULSE_MS)
    other = Door.objects.create(name="Garage")
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(door)
    mechanics = AccessGroup.objects.create(name="Mechanics")
    mechanics.doors.add(other)
    people = {}
    for name, group in ((A, staff), (B, mechanics), (C, staff)):
        person = Person.objects.create(name=name.replace("_", " "))
        group.people.add(person)
        _enrol(person, name)
        people[name] = person
    uid = f"e2e-al-{tmp_path.name[-12:].replace('_', '-').strip('-')}"
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    config = _provisioned_agent_config(uid, door, server_on_stack.url, agent_dir)
    with agent_process(agent_dir, config) as agent:
        yield {"door": door, "people": people, "uid": uid, "agent": agent, "stack": server_on_stack}


def _state(uid: str) -> DeviceAllowlist | None:
    return DeviceAllowlist.objects.filter(device__uid=uid).first()


def _list_held(uid: str, entries: int) -> Callable[[], bool]:
    def held() -> bool:
        state = _state(uid)
        return bool(
            state is not None
            and state.version > 0
            and state.entry_count == entries
            and state.acked_version == state.version
            and state.acked_offline_mode == "allowlist"
        )

    return held


def _cut_and_wait(site: dict) -> None:
    site["stack"].cut()
    agent: Agent = site["agent"]
    assert wait_until(lambda: "offline: deciding alone" in agent.text(), 30), agent.text()[-3000:]
    time.sleep(GRACE_S + 0.5)


def _events(*detection_ids: str) -> list[AccessEvent]:
    return list(AccessEvent.objects.filter(detection_id__in=detection_ids).order_by("id"))


# --- Tests ---------------------------------------------------------------------------------


def test_link_cut_the_door_decides_alone_and_the_events_arrive_once_in_order(site) -> None:
    uid, agent, people = site["uid"], site["agent"], site["people"]
    assert wait_until(_list_held(uid, entries=2), 120), (_state(uid) and _state(uid).__dict__, agent.text()[-3000:])
    version = _state(uid).version

    _cut_and_wait(site)
    a = agent.show(_visitor(A, 0))
    assert (a["action"], a["basis"], a["reason"], a["allowlist_version"]) == ("open", "allowlist", "matched", version)
    assert a["person_ref"] == str(people[A].uid) and agent.pulses() == 1  # granted by the device alone
    b = agent.show(_visitor(B, 0))
    assert (b["action"], b["basis"], b["reason"]) == ("deny", "allowlist", "unknown_face")  # not on the list
    assert agent.pulses() == 1
    assert not _events(a["detection_id"], b["detection_id"])  # nothing reached the server

    site["stack"].restore()
    assert wait_until(lambda: len(_events(a["detection_id"], b["detection_id"])) == 2, 90), agent.text()[-3000:]
    time.sleep(3)  # re-sends after the link returns must not record anything twice
    granted, denied = (AccessEvent.objects.get(detection_id=d) for d in (a["detection_id"], b["detection_id"]))
    assert (granted.decision, granted.reason, granted.source) == ("grant", "offline_matched", "device_offline")
    assert (denied.decision, denied.reason, denied.source) == ("deny", "offline_unknown_face", "device_offline")
    assert granted.person_id == people[A].pk
    assert granted.allowlist_version == denied.allowlist_version == version
    assert granted.occurred_at < denied.occurred_at  # the times the door saw them, in that order
    assert granted.occurred_at.timestamp() <= a["decided_at"] + 1 and denied.occurred_at.timestamp() <= b["decided_at"]
    assert AccessEvent.objects.filter(detection_id__in=[a["detection_id"], b["detection_id"]]).count() == 2
    assert not Alarm.objects.filter(kind=Alarm.Kind.OFFLINE_DISAGREEMENT).exists()
    assert chain_verify().ok


def test_revocations_online_refused_offline_and_a_suspension_while_cut_off_raises_the_alarm(site) -> None:
    uid, agent, people = site["uid"], site["agent"], site["people"]
    c = people[C]
    assert wait_until(_list_held(uid, entries=2), 120), agent.text()[-3000:]
    # The site's own recompile (debounced) has run: the suspension's recompile is the next one.
    assert wait_until(lambda: cache.get(_PENDING_KEY.format(site["door"].pk)) is None, 60)
    time.sleep(1.0)

    # Suspended while the door is online: the revocation goes out at once. The recompile that
    # follows is held back here, so that the door still holds C's entry, revoked.
    with override_settings(ALLOWLIST_DEBOUNCE_S=25.0):
        c.status = Person.Status.SUSPENDED
        c.save()
    assert wait_until(
        lambda: DeviceRevocation.objects.filter(device__uid=uid, acknowledged_at__isnull=False).exists(), 30
    ), agent.text()[-3000:]
    assert _state(uid).entry_count == 2  # the list without C is not issued yet
    _cut_and_wait(site)
    refused = agent.show(_visitor(C, 0))
    assert (refused["action"], refused["basis"], refused["reason"]) == ("deny", "allowlist", "revoked")
    assert agent.pulses() == 0
    site["stack"].restore()
    assert wait_until(lambda: len(_events(refused["detection_id"])) == 1, 90), agent.text()[-3000:]
    event = _events(refused["detection_id"])[0]
    assert (event.decision, event.reason, event.source) == ("deny", "offline_revoked", "device_offline")
    assert event.person_id == c.pk and event.details["server"]["reason"] == "suspended"
    assert not Alarm.objects.exists()  # refused by both: nothing to raise

    # Active again: the list is recompiled with C and acknowledged.
    c.refresh_from_db()
    c.status = Person.Status.ACTIVE
    c.save()
    assert wait_until(lambda: _list_held(uid, entries=2)() and _state(uid).version > event.allowlist_version, 90), (
        agent.text()[-3000:]
    )
    version = _state(uid).version

    # Suspended while the door is cut off: it cannot know, and grants; the late event raises the alarm.
    _cut_and_wait(site)
    c.refresh_from_db()
    c.status = Person.Status.SUSPENDED
    c.save()
    granted = agent.show(_visitor(C, 1))
    assert (granted["action"], granted["basis"], granted["reason"]) == ("open", "allowlist", "matched")
    assert granted["allowlist_version"] == version and agent.pulses() == 1
    site["stack"].restore()
    assert wait_until(lambda: len(_events(granted["detection_id"])) == 1, 90), agent.text()[-3000:]
    late = _events(granted["detection_id"])[0]
    assert (late.decision, late.reason, late.allowlist_version) == ("grant", "offline_matched", version)
    assert wait_until(lambda: Alarm.objects.filter(kind=Alarm.Kind.OFFLINE_DISAGREEMENT).exists(), 30)
    alarm = Alarm.objects.get(kind=Alarm.Kind.OFFLINE_DISAGREEMENT)
    assert (alarm.event_id, alarm.door_id, alarm.device_uid) == (late.pk, site["door"].pk, uid)
    assert alarm.details["server"]["reason"] == "suspended"
    assert alarm.details["device"] == {"decision": "grant", "reason": "offline_matched", "person": str(c.uid)}
    assert chain_verify().ok


# --- Forged and expired lists: the agent process against a broker without a server ----------


def _list_commands(private_key: str, model_version: str, vector: np.ndarray, *, expires_in: float) -> list[bytes]:
    now = time.time()
    entries = [AllowlistEntry(ref="visitor", schedules=(ALWAYS,), templates=(Template.from_values(vector.tolist()),))]
    header = AllowlistHeader(
        version=1,
        base_version=None,
        issued_at=now - 7200,
        expires_at=now + expires_in,
        model_version=model_version,
        dim=int(vector.size),
        threshold=0.3,
        margin=0.0,
        liveness_required=False,
        liveness_threshold=None,
        windows={},
        total_entries=len(entries),
    )
    raws = []
    for chunk in allowlist_chunks(header, entries, max_bytes=4000):
        command = p.Command(
            device_uid=UID,
            command=p.CommandKind.ALLOWLIST,
            command_id=p.new_id(),
            issued_at=time.time(),
            reason="allowlist",
            data=chunk.to_dict(),
        )
        raws.append(p.seal(command, private_key))
    return raws


@pytest.mark.slow  # refusals unit-tested in tests/edge_agent/test_allowlist_store.py; this is the process
def test_forged_and_expired_lists_are_refused_and_the_door_stays_secure(tmp_path: Path) -> None:
    device_private, device_public = p.generate_keypair()
    server_private, server_public = p.generate_keypair()
    intruder_private, _ = p.generate_keypair()
    visitor = _visitor(A, 2)
    with Image.open(visitor) as image:  # what would let the visitor in, were either list taken
        face = embed_image(image.convert("RGB"), embedder=active_embedder(), max_faces=1)[0]
    vector = np.asarray(face.embedding, dtype=np.float32)

    broker = standalone_broker_start(tmp_path / "mqtt", devices={UID: DEVICE_PASSWORD}, observer=OBSERVER)
    agent_dir = tmp_path / "agent"
    agent_dir.mkdir()
    secret_file_write(agent_dir / "device.key", device_private)
    config = f"""
[device]
uid = "{UID}"
private_key_path = "{agent_dir / "device.key"}"
server_public_key = "{server_public}"
[mqtt]
url = "mqtt://127.0.0.1:{broker.port}"
username = "{UID}"
password = "{DEVICE_PASSWORD}"
reconnect_min_s = 0.5
reconnect_max_s = 1.0
[door]
fail_mode = "allowlist"
offline_grace_s = {GRACE_S}
pulse_ms = {PULSE_MS}
""" + _agent_sections(agent_dir)
    server = ServerClient(broker.host, broker.port)
    try:
        with agent_process(agent_dir, config) as agent:
            server.next(p.TopicKind.HEARTBEAT, timeout=120)  # connected and subscribed

            def heartbeat() -> p.Heartbeat:
                _, raw = server.next(p.TopicKind.HEARTBEAT, timeout=30)
                return p.open_message(p.heartbeat_topic(UID), raw, device_public)

            forged = _list_commands(intruder_private, face.model_version, vector, expires_in=3600)
            for raw in forged:
                server.publish(p.commands_topic(UID), raw)
            assert wait_until(lambda: agent.text().count("bad_signature") == len(forged), 30), agent.text()[-3000:]
            for raw in _list_commands(server_private, face.model_version, vector, expires_in=-60):
                server.publish(p.commands_topic(UID), raw)
            assert wait_until(lambda: "refused: version 1 expired at" in agent.text(), 30), agent.text()[-3000:]
            for _ in range(2):  # past the commands: what the device holds now
                hb = heartbeat()
            assert hb.offline_mode is p.OfflineMode.SECURE and hb.allowlist_version is None, hb
            assert not hb.allowlist_entries

            server.close()
            broker.stop()  # the link cut: the door is secure, the visitor denied
            assert wait_until(lambda: "link down" in agent.text() or "offline" in agent.text(), 30)
            time.sleep(GRACE_S + 0.5)
            decision = agent.show(visitor)
            assert (decision["action"], decision["basis"]) == ("deny", "fail_secure")
            assert agent.pulses() == 0
    finally:
        server.close()
        broker.stop()
