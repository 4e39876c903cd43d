"""The offline allow-list, server side, over the real broker: compile, sign, chunk, push (full and
delta), revoke only where held, acknowledge and resync, refuse an unmeasured model."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from django.utils import timezone

from accessctl.models import AccessGroup, Door, Person
from devices import allowlist as al
from devices import health
from devices.commands import server_public_key_b64
from devices.models import DeviceAllowlist, DeviceRevocation, EdgeDevice
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.calibration import store_threshold
from recognition.metrics import mean_template
from recognition.models import FaceEmbedding
from tests.broker_logins import observer_client
from tests.devices.e2e import mqtt_address

pytestmark = pytest.mark.django_db

MODEL = "sface-2021dec-int8bq"
RNG = np.random.default_rng(7)


class Listener:
    """Every command published to any device, raw (topic, bytes), in arrival order."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = observer_client(f"allowlist-test-{uuid.uuid4().hex[:8]}")
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        host, port = mqtt_address()
        self.client.connect(host, port)
        self.client.subscribe("acs/v1/devices/+/commands", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))  # type: ignore[attr-defined]
            self._cond.notify_all()

    def commands(self, uid: str, kind: p.CommandKind, count: int, timeout: float = 10.0) -> list[p.Command]:
        """Wait for ``count`` verified commands of ``kind`` to device ``uid``."""
        key = server_public_key_b64()

        def found() -> list[p.Command]:
            opened = [p.open_message(t, raw, key) for t, raw in self.messages if t == p.commands_topic(uid)]
            return [c for c in opened if isinstance(c, p.Command) and c.command == kind]

        with self._cond:
            self._cond.wait_for(lambda: len(found()) >= count, timeout)
            return found()

    def raw(self, uid: str) -> list[bytes]:
        with self._cond:
            return [raw for t, raw in self.messages if t == p.commands_topic(uid)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.close()


def _vectors(count: int) -> list[list[float]]:
    out = RNG.normal(size=(count, 128)).astype(np.float32)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).tolist()


def enrol(people: list[Person], per_person: int = 3) -> None:
    vectors = iter(_vectors(len(people) * per_person))
    owners = [person for person in people for _ in range(per_person)]
    rows = [FaceEmbedding(person=owner, model_version=MODEL, embedding=next(vectors)) for owner in owners]
    FaceEmbedding.objects.bulk_create(rows)


@pytest.fixture
def site() -> dict[str, object]:
    door = Door.objects.create(name="Vault", timezone="Europe/Berlin", fail_mode=Door.FailMode.ALLOWLIST)
    other = Door.objects.create(name="Garage", fail_mode=Door.FailMode.ALLOWLIST)
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(door)
    mechanics = AccessGroup.objects.create(name="Mechanics")
    mechanics.doors.add(other)
    people = [Person.objects.create(name=f"P{i}") for i in range(4)]
    staff.people.add(*people[:3])
    mechanics.people.add(people[3])
    enrol(people)
    devices = []
    for uid, at in (("vault-1", door), ("vault-2", door), ("garage-1", other)):
        device = device_provision(uid=uid, door=at).device
        EdgeDevice.objects.filter(pk=device.pk).update(model_version=MODEL, status=EdgeDevice.Status.ONLINE)
        device.refresh_from_db()
        devices.append(device)
    return {"door": door, "other": other, "staff": staff, "people": people, "devices": devices}


def test_a_mean_template_site_sends_the_template(site, listener, settings) -> None:
    """The device scores a person as the server does: the best of what the list holds for them."""
    settings.RECOGNITION_PERSON_SCORE = "mean_template"
    people, device = site["people"], site["devices"][0]
    al.allowlist_push(device)
    (chunk,) = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 1))
    assert all(len(e.templates) == 1 for e in chunk.entries)
    stored = [np.asarray(e.embedding) for e in FaceEmbedding.objects.filter(person=people[0]).order_by("id")]
    entry = next(e for e in chunk.entries if e.ref == str(people[0].uid))
    assert float(np.dot(entry.templates[0].values(128), mean_template(stored))) > 0.995  # an int8 code


def chunks_of(commands: list[p.Command]) -> list[p.AllowlistChunk]:
    return [p.AllowlistChunk.from_dict(c.data) for c in commands]


def heartbeat(device: EdgeDevice, **fields: object) -> p.Heartbeat:
    return p.Heartbeat(
        device_uid=device.uid, sent_at=time.time(), agent_version="2.0.0", model_version=MODEL, camera_fps=10.0,
        spool_depth=0, spool_dropped=0, uptime_s=5.0, **fields,
    )  # fmt: skip


def test_a_full_list_is_signed_verifies_and_holds_the_allowed_people(site, listener) -> None:
    people, (device, *_) = site["people"], site["devices"]
    result = al.allowlist_push(device)
    assert result.version == 1 and result.full and result.entries == 3
    (chunk,) = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 1))
    header = chunk.header
    assert header.version == 1 and header.base_version is None and header.door == "Vault"
    assert header.model_version == MODEL and header.dim == 128 and header.threshold == pytest.approx(0.476)
    assert header.expires_at - header.issued_at == 86_400 and header.total_entries == 3
    assert {e.ref for e in chunk.entries} == {str(person.uid) for person in people[:3]}
    assert all(len(e.templates) == 3 and e.schedules == (p.ALWAYS,) for e in chunk.entries)
    # the int8 templates are the gallery vectors
    stored = np.asarray(FaceEmbedding.objects.filter(person=people[0]).order_by("id").first().embedding)
    entry = next(e for e in chunk.entries if e.ref == str(people[0].uid))
    assert float(np.dot(entry.templates[0].values(128), stored)) > 0.999
    state = DeviceAllowlist.objects.get(device=device)
    assert (state.version, state.entry_count, state.chunk_count, state.refused) == (1, 3, 1, "")
    assert set(state.digests) == {str(person.uid) for person in people[:3]}
    assert state.bytes > 3 * 3 * 128


def test_a_tampered_chunk_does_not_verify(site, listener) -> None:
    device = site["devices"][0]
    al.allowlist_push(device)
    listener.commands(device.uid, p.CommandKind.ALLOWLIST, 1)
    (raw,) = listener.raw(device.uid)
    p.open_message(p.commands_topic(device.uid), raw, server_public_key_b64())  # the genuine one verifies
    envelope = json.loads(raw)
    envelope["payload"]["data"]["threshold"] = -1.0  # a forger lowers the bar
    forged = json.dumps(envelope).encode()
    with pytest.raises(p.ProtocolError):
        p.open_message(p.commands_topic(device.uid), forged, server_public_key_b64())
    other_key = p.public_key_b64(p.load_private_key(p.generate_keypair()[0]))
    with pytest.raises(p.ProtocolError):
        p.open_message(p.commands_topic(device.uid), raw, other_key)


def test_1000_people_are_chunked_under_the_message_limit(site, listener) -> None:
    door, device = site["door"], site["devices"][0]
    group = AccessGroup.objects.create(name="Crowd")
    group.doors.add(door)
    crowd = Person.objects.bulk_create([Person(name=f"C{i}") for i in range(1000)])
    group.people.add(*crowd)
    enrol(crowd)
    result = al.allowlist_push(device)
    assert result.entries == 1003 and result.chunks > 1
    commands = listener.commands(device.uid, p.CommandKind.ALLOWLIST, result.chunks, timeout=30)
    assert len(commands) == result.chunks
    assert max(len(raw) for raw in listener.raw(device.uid)) <= p.MAX_MESSAGE_BYTES
    chunks = chunks_of(commands)
    assert sorted(c.chunk_index for c in chunks) == list(range(result.chunks))
    assert all(c.header.same_version(chunks[0].header) for c in chunks)
    assert len({e.ref for c in chunks for e in c.entries}) == 1003


def test_a_delta_carries_changed_and_added_entries_and_removed_refs(site, listener) -> None:
    door, staff, people, device = site["door"], site["staff"], site["people"], site["devices"][0]
    al.allowlist_push(device)
    assert al.allowlist_push(device).unchanged  # nothing changed: no new version
    # not acknowledged yet: the next version is full
    Person.objects.filter(pk=people[2].pk).update(valid_until=timezone.now() + dt.timedelta(days=30))
    second = al.allowlist_push(device)
    assert (second.version, second.full) == (2, True)
    al.allowlist_acknowledge(device, heartbeat(device, allowlist_version=2, offline_mode=p.OfflineMode.ALLOWLIST))
    newcomer = Person.objects.create(name="New")
    staff.people.add(newcomer)
    enrol([newcomer])
    Person.objects.filter(pk=people[0].pk).update(status=Person.Status.SUSPENDED)
    Person.objects.filter(pk=people[1].pk).update(valid_from=timezone.now() - dt.timedelta(days=1))
    third = al.allowlist_push(device)
    assert (third.version, third.full, third.entries, third.removed) == (3, False, 2, 1)
    chunk = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 3))[-1]
    assert chunk.header.version == 3 and chunk.header.base_version == 2 and chunk.header.total_entries == 3
    assert {e.ref for e in chunk.entries} == {str(newcomer.uid), str(people[1].uid)}
    assert chunk.removed == (str(people[0].uid),)
    state = DeviceAllowlist.objects.get(device=device)
    assert str(people[0].uid) in state.pending_refs  # until the device acknowledges v3
    assert door.pk in al.doors_needing_lists([door.pk])


def test_revocation_reaches_only_the_devices_holding_the_person(
    site, listener, django_capture_on_commit_callbacks
) -> None:
    people, (vault1, vault2, garage) = site["people"], site["devices"]
    for device in site["devices"]:
        al.allowlist_push(device)
    listener.commands(garage.uid, p.CommandKind.ALLOWLIST, 1)
    person = Person.objects.get(pk=people[0].pk)
    person.status = Person.Status.SUSPENDED
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        person.save()
    for device in (vault1, vault2):
        (command,) = listener.commands(device.uid, p.CommandKind.REVOKE, 1)
        revocation = p.Revocation.from_dict(command.data)
        assert (revocation.seq, revocation.refs, revocation.reason) == (1, (str(person.uid),), "suspended")
    elapsed = time.monotonic() - started
    assert listener.commands(garage.uid, p.CommandKind.REVOKE, 1, timeout=1.0) == []
    records = DeviceRevocation.objects.order_by("device__uid")
    assert [(r.device.uid, r.seq) for r in records] == [("vault-1", 1), ("vault-2", 1)]
    assert all(r.sent_at is not None and r.acknowledged_at is None for r in records)
    assert elapsed < 5.0
    # the next version reflects it: the person is out, and the header says so
    result = al.allowlist_push(vault1, full=True)
    chunk = chunks_of(listener.commands(vault1.uid, p.CommandKind.ALLOWLIST, 2))[-1]
    assert result.version == 2 and chunk.header.revocation_seq == 1
    assert str(person.uid) not in {e.ref for e in chunk.entries}


def test_a_person_reinstated_before_the_recompile_gets_a_new_version_that_lifts_the_revocation(
    site, listener, django_capture_on_commit_callbacks
) -> None:
    """Suspended (revoked on the device) then active again before the list was recompiled: the
    list compiles as the held one did, but only a new version, reflecting the revocation, lets the
    device forget it. Without one the person stayed refused offline until the half-age re-issue."""
    people, device = site["people"], site["devices"][0]
    assert al.allowlist_push(device).version == 1
    person = Person.objects.get(pk=people[0].pk)
    person.status = Person.Status.SUSPENDED
    with django_capture_on_commit_callbacks(execute=True):
        person.save()
    (command,) = listener.commands(device.uid, p.CommandKind.REVOKE, 1)
    person.status = Person.Status.ACTIVE
    with django_capture_on_commit_callbacks(execute=True):
        person.save()
    result = al.allowlist_push(device)
    assert not result.unchanged and result.version == 2
    chunk = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 2))[-1]
    assert chunk.header.revocation_seq == p.Revocation.from_dict(command.data).seq == 1
    assert str(person.uid) in {e.ref for e in chunk.entries}
    assert al.allowlist_push(device).unchanged  # and then nothing more to say


def test_removal_from_a_group_revokes_only_where_access_is_lost(
    site, listener, django_capture_on_commit_callbacks
) -> None:
    door, staff, people, (vault1, _, garage) = site["door"], site["staff"], site["people"], site["devices"]
    for device in site["devices"]:
        al.allowlist_push(device)
    backup = AccessGroup.objects.create(name="Backup")
    backup.doors.add(door)
    backup.people.add(people[1])
    with django_capture_on_commit_callbacks(execute=True):
        staff.people.remove(people[1], people[2])  # people[1] still opens the vault through Backup
    (command,) = listener.commands(vault1.uid, p.CommandKind.REVOKE, 1)
    assert p.Revocation.from_dict(command.data).refs == (str(people[2].uid),)
    assert p.Revocation.from_dict(command.data).reason == "removed_from_group"
    assert not DeviceRevocation.objects.filter(device=garage).exists()


def test_erasure_revokes_everywhere_it_was_held(site, listener, django_capture_on_commit_callbacks) -> None:
    from accessctl.privacy.erasure import person_erase

    people, (vault1, vault2, garage) = site["people"], site["devices"]
    for device in site["devices"]:
        al.allowlist_push(device)
    uid = str(people[3].uid)  # a mechanic: only the garage holds them
    with django_capture_on_commit_callbacks(execute=True):
        person_erase(person=people[3])
    (command,) = listener.commands(garage.uid, p.CommandKind.REVOKE, 1)
    assert p.Revocation.from_dict(command.data).refs == (uid,)
    assert p.Revocation.from_dict(command.data).reason == "erased"
    assert not DeviceRevocation.objects.filter(device__in=[vault1, vault2]).exists()


def test_heartbeat_acknowledges_revocations_and_a_version_mismatch_resyncs(
    site, listener, django_capture_on_commit_callbacks, monkeypatch, settings
) -> None:
    people, device = site["people"], site["devices"][0]
    key = p.load_private_key(device_provision(uid=device.uid, rotate=True).private_key_pem)
    device.refresh_from_db()
    al.allowlist_push(device)
    al.revoke([str(people[0].uid)], reason="suspended")
    al.revoke([str(people[1].uid)], reason="suspended")
    assert list(DeviceRevocation.objects.filter(device=device).values_list("seq", flat=True)) == [1, 2]
    pushes: list[tuple[int, bool]] = []
    from devices import tasks

    monkeypatch.setattr(tasks.allowlist_device_push, "delay", lambda *args: pushes.append(args))
    # acknowledges revocation 1 (not 2), holds the latest version: no resync
    expires = time.time() + 3600
    beat = heartbeat(device, allowlist_version=1, allowlist_expires_at=expires, allowlist_entries=3, revocation_seq=1,
                     offline_mode=p.OfflineMode.ALLOWLIST)  # fmt: skip
    with django_capture_on_commit_callbacks(execute=True):
        health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(beat, key))
    acked = dict(DeviceRevocation.objects.filter(device=device).values_list("seq", "acknowledged_at"))
    assert acked[1] is not None and acked[2] is None
    state = DeviceAllowlist.objects.get(device=device)
    assert (state.acked_version, state.acked_revocation_seq, state.acked_offline_mode) == (1, 1, "allowlist")
    assert state.acked_entries == 3 and pushes == []
    # a device claiming a revocation never issued acknowledges nothing
    liar = heartbeat(device, allowlist_version=1, revocation_seq=99)
    with django_capture_on_commit_callbacks(execute=True):
        health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(liar, key))
    assert DeviceRevocation.objects.get(device=device, seq=2).acknowledged_at is None
    # another version, right after a push: not yet (at most once per ALLOWLIST_RESYNC_S) ...
    older_agent = heartbeat(device)  # no allow-list fields: an agent that cannot hold one is not sent any
    DeviceAllowlist.objects.filter(device=device).update(pushed_at=timezone.now() - dt.timedelta(seconds=61))
    with django_capture_on_commit_callbacks(execute=True):
        health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(older_agent, key))
    assert pushes == []
    DeviceAllowlist.objects.filter(device=device).update(pushed_at=timezone.now())
    stale = heartbeat(device, allowlist_version=None, revocation_seq=2, offline_mode=p.OfflineMode.SECURE)
    with django_capture_on_commit_callbacks(execute=True):
        health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(stale, key))
    assert pushes == [] and DeviceRevocation.objects.get(device=device, seq=2).acknowledged_at is not None
    # ... later: a full resync
    DeviceAllowlist.objects.filter(device=device).update(pushed_at=timezone.now() - dt.timedelta(seconds=61))
    with django_capture_on_commit_callbacks(execute=True):
        health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(stale, key))
    assert pushes == [(device.pk, True)]
    # after a restart (signed "online"), a mismatch resyncs at once, whatever the pace
    pushes.clear()
    DeviceAllowlist.objects.filter(device=device).update(pushed_at=timezone.now())
    online = p.Status(device_uid=device.uid, state=p.DeviceState.ONLINE, sent_at=time.time())
    health.status_ingest(device_uid=device.uid, raw=p.seal(online, key))
    with django_capture_on_commit_callbacks(execute=True):
        health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(stale, key))
    assert pushes == [(device.pk, True)]
    # the task pushes the full list as a new version
    assert tasks.allowlist_device_push.run(device.pk, True) == 2
    chunk = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 2))[-1]
    assert chunk.header.base_version is None and chunk.header.revocation_seq == 2


def test_an_unmeasured_model_gets_no_list(site, listener) -> None:
    device = site["devices"][0]
    EdgeDevice.objects.filter(pk=device.pk).update(model_version="facenet-vggface2")
    device.refresh_from_db()
    result = al.allowlist_push(device)
    assert result.version is None and "not measured" in result.refused
    state = DeviceAllowlist.objects.get(device=device)
    assert state.version == 0 and "not measured" in state.refused
    assert listener.commands(device.uid, p.CommandKind.ALLOWLIST, 1, timeout=1.0) == []
    # measured: now it may decide (no embeddings in that model: an empty list)
    store_threshold(model_version="facenet-vggface2", threshold=0.6, target_fmr=0.001)
    result = al.allowlist_push(device)
    assert result.version == 1 and result.entries == 0 and not DeviceAllowlist.objects.get(device=device).refused


def test_leaving_allowlist_mode_replaces_the_list_with_an_empty_one(site, listener) -> None:
    door, device = site["door"], site["devices"][0]
    al.allowlist_push(device)
    Door.objects.filter(pk=door.pk).update(fail_mode=Door.FailMode.SECURE)
    device.refresh_from_db()
    result = al.allowlist_push(device)
    assert result.version == 2 and "fail mode secure" in result.refused
    chunk = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 2))[-1]
    assert chunk.header.total_entries == 0 and chunk.entries == () and chunk.header.base_version is None
    assert al.allowlist_push(device).version is None  # once is enough
    assert door.pk in al.doors_needing_lists([door.pk])  # its device holds a (empty) list


def test_changes_schedule_one_debounced_recompile_per_door(
    site, monkeypatch, django_capture_on_commit_callbacks
) -> None:
    from django.core.cache import cache

    from devices import tasks

    door, staff, people = site["door"], site["staff"], site["people"]
    cache.delete(f"devices:allowlist-recompile:{door.pk}")
    scheduled: list[tuple] = []
    monkeypatch.setattr(tasks.allowlist_door_recompile, "apply_async", lambda args, countdown: scheduled.append(args))
    with django_capture_on_commit_callbacks(execute=True):
        people[1].valid_until = timezone.now() + dt.timedelta(days=3)
        people[1].save()
        staff.people.add(Person.objects.create(name="Late"))
        door.liveness_required = True
        door.save()
    assert scheduled == [(door.pk,)]
    from devices.allowlist_triggers import recompile_started

    recompile_started(door.pk)  # the task clears the mark when it starts
    with django_capture_on_commit_callbacks(execute=True):
        FaceEmbedding.objects.filter(person=people[2]).first().delete()
    assert scheduled == [(door.pk,), (door.pk,)]
    cache.delete(f"devices:allowlist-recompile:{door.pk}")


def test_offline_mode_shown_per_device(site) -> None:
    device = site["devices"][0]
    assert al.offline_mode(device, None) == "online"
    device.status = EdgeDevice.Status.OFFLINE
    assert al.offline_mode(device, None) == "offline-secure"
    state = DeviceAllowlist(device=device, acked_offline_mode="allowlist", acked_version=3)
    state.acked_expires_at = timezone.now() + dt.timedelta(hours=1)
    assert al.offline_mode(device, state) == "offline-allowlist"
    state.acked_expires_at = timezone.now() - dt.timedelta(seconds=1)
    assert al.offline_mode(device, state) == "offline-secure"  # expired: the device fell back
    state.acked_offline_mode = "safe"
    assert al.offline_mode(device, state) == "offline-safe"


def test_a_crop_mode_device_gets_templates_of_the_servers_model(site, listener) -> None:
    from recognition.engine import server_model_version

    device = site["devices"][0]
    EdgeDevice.objects.filter(pk=device.pk).update(model_version="")  # crop mode: no model of its own
    device.refresh_from_db()
    assert al.device_model_version(device) == server_model_version()
    result = al.allowlist_push(device)
    chunk = chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 1))[0]
    assert result.entries == 3 and chunk.header.model_version == server_model_version()


def test_api_admin_and_dashboard_show_the_state(site, listener, client) -> None:
    from django.urls import reverse

    from tests.accessctl.helpers import user_create
    from tests.api_support import token_client

    people, (vault1, vault2, _) = site["people"], site["devices"]
    for device in (vault1, vault2):
        al.allowlist_push(device)
    al.revoke([str(people[0].uid)], reason="suspended")
    expires = time.time() + 3600
    al.allowlist_acknowledge(vault2, heartbeat(vault2, allowlist_version=1, allowlist_expires_at=expires,
                                                revocation_seq=1, offline_mode=p.OfflineMode.ALLOWLIST))  # fmt: skip
    EdgeDevice.objects.filter(pk=vault2.pk).update(status=EdgeDevice.Status.OFFLINE)

    api = token_client(["devices:read"])
    body = {d["uid"]: d for d in api.get("/api/v1/devices/").json()["results"]}
    assert body["vault-1"]["offline_mode"] == "online" and body["vault-1"]["allowlist"]["version"] == 1
    assert [r["seq"] for r in body["vault-1"]["unacknowledged_revocations"]] == [1]
    assert body["vault-2"]["offline_mode"] == "offline-allowlist"
    assert body["vault-2"]["unacknowledged_revocations"] == []
    assert body["vault-2"]["allowlist"]["acked_version"] == 1
    single = api.get(f"/api/v1/devices/{vault1.pk}/").json()
    assert single["unacknowledged_revocations"][0]["refs"] == [str(people[0].uid)]

    client.force_login(user_create("wanda", "accessctl.view_dashboard"))
    page = client.get(reverse("dashboard")).content.decode()
    assert "Offline: offline allow-list" in page
    assert "list v1 not acknowledged" in page  # vault-1 never acknowledged its list
    assert "1 revocation not acknowledged" in page and page.count("revocation not acknowledged</span>") == 1

    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    change = client.get(reverse("admin:devices_edgedevice_change", args=[vault1.pk])).content.decode()
    assert "Offline allow-list" in change and "revocations not acknowledged" in change
    listing = client.get(reverse("admin:devices_deviceallowlist_changelist"))
    assert listing.status_code == 200 and "vault-1" in listing.content.decode()
    state = DeviceAllowlist.objects.get(device=vault1)
    assert client.post(reverse("admin:devices_deviceallowlist_change", args=[state.pk]), {}).status_code == 403
    assert client.get(reverse("admin:devices_devicerevocation_changelist")).status_code == 200


def test_a_forged_heartbeat_acknowledges_nothing(site) -> None:
    people, device = site["people"], site["devices"][0]
    al.allowlist_push(device)
    al.revoke([str(people[0].uid)], reason="suspended")
    forger = p.load_private_key(p.generate_keypair()[0])
    beat = heartbeat(device, allowlist_version=1, revocation_seq=1, offline_mode=p.OfflineMode.ALLOWLIST)
    health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(beat, forger))
    assert DeviceRevocation.objects.get(device=device).acknowledged_at is None
    assert DeviceAllowlist.objects.get(device=device).acked_at is None


def test_a_broker_failure_keeps_versions_monotonic_and_revocations_are_resent(site, listener, monkeypatch) -> None:
    people, device = site["people"], site["devices"][0]
    real_send = al.command_send

    def broker_down(*args: object, **kwargs: object) -> None:
        raise ConnectionRefusedError("broker unreachable")

    monkeypatch.setattr(al, "command_send", broker_down)
    first = al.allowlist_push(device)
    state = DeviceAllowlist.objects.get(device=device)
    assert first.version == 1 and state.version == 1 and "not sent" in state.push_error
    (record,) = al.revoke([str(people[0].uid)], reason="suspended")
    record.refresh_from_db()
    assert record.sent_at is None and "not sent" in record.send_error
    monkeypatch.setattr(al, "command_send", real_send)
    second = al.allowlist_push(device, force=True)
    assert second.version == 2 and DeviceAllowlist.objects.get(device=device).push_error == ""
    assert al.revocations_resend() == 1
    (command,) = listener.commands(device.uid, p.CommandKind.REVOKE, 1)
    assert p.Revocation.from_dict(command.data).seq == 1
    record.refresh_from_db()
    assert record.sent_at is not None and record.send_error == ""
    assert [c.header.version for c in chunks_of(listener.commands(device.uid, p.CommandKind.ALLOWLIST, 1))] == [2]


def test_the_reissue_sweep_recompiles_aging_and_missing_lists(site, monkeypatch) -> None:
    from django.core.cache import cache

    from devices import tasks

    door, other, (vault1, vault2, garage) = site["door"], site["other"], site["devices"]
    for device in (vault1, vault2):
        al.allowlist_push(device)
    for door_id in (door.pk, other.pk):
        cache.delete(f"devices:allowlist-recompile:{door_id}")
    scheduled: list[tuple] = []
    monkeypatch.setattr(tasks.allowlist_door_recompile, "apply_async", lambda args, countdown: scheduled.append(args))
    assert tasks.allowlist_reissue.run() == 1 and scheduled == [(other.pk,)]  # the garage device has none
    DeviceAllowlist.objects.filter(device=vault1).update(expires_at=timezone.now() + dt.timedelta(hours=11))
    cache.delete(f"devices:allowlist-recompile:{other.pk}")
    scheduled.clear()
    tasks.allowlist_reissue.run()
    assert sorted(scheduled) == sorted([(door.pk,), (other.pk,)])
    for door_id in (door.pk, other.pk):
        cache.delete(f"devices:allowlist-recompile:{door_id}")
    # the task itself: a door's devices get their lists (a fresh one past half its age)
    assert tasks.allowlist_door_recompile.run(door.pk) == 1
    assert DeviceAllowlist.objects.get(device=vault1).version == 2
    assert DeviceAllowlist.objects.get(device=vault2).version == 1
    assert tasks.allowlist_door_recompile.run(other.pk) == 1
    assert DeviceAllowlist.objects.get(device=garage).version == 1


def test_gallery_templates_are_the_stored_vectors(site) -> None:
    from recognition.gallery import gallery_templates

    people = site["people"]
    FaceEmbedding.objects.create(person=people[1], model_version="facenet-vggface2", embedding=[0.1] * 512)
    found = gallery_templates([people[0].pk, people[1].pk], MODEL)
    assert sorted(found) == [people[0].pk, people[1].pk] and all(len(v) == 3 for v in found.values())
    stored = [
        np.asarray(e.embedding, dtype=np.float32)
        for e in FaceEmbedding.objects.filter(person=people[0], model_version=MODEL)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(found[people[0].pk], stored, strict=True))
    assert gallery_templates([people[1].pk], "facenet-vggface2")[people[1].pk][0].shape == (512,)
    assert gallery_templates([], MODEL) == {}
