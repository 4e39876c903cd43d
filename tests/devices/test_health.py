"""Heartbeats, last will, the offline sweep, lost-task recovery and provisioning."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django.core.management import call_command
from django.utils import timezone

from accessctl.models import Alarm, Door
from devices import health
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from faceengine import protocol as p

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def device():
    provisioned = device_provision(uid="hall-1", door=Door.objects.create(name="Hall"))
    return provisioned.device, p.load_private_key(provisioned.private_key_pem)


def heartbeat(uid: str = "hall-1", **fields: object) -> p.Heartbeat:
    return p.Heartbeat(
        device_uid=uid,
        sent_at=time.time(),
        agent_version="1.2.0",
        model_version="sface-2021dec-int8bq",
        camera_fps=9.5,
        spool_depth=3,
        spool_dropped=0,
        uptime_s=100.0,
        temperature_c=51.0,
        **fields,
    )


def test_signed_heartbeat_updates_the_device(device) -> None:
    dev, key = device
    health.heartbeat_ingest(device_uid="hall-1", raw=p.seal(heartbeat(), key))
    dev.refresh_from_db()
    assert dev.status == EdgeDevice.Status.ONLINE
    assert dev.agent_version == "1.2.0"
    assert dev.last_heartbeat["spool_depth"] == 3


def test_forged_heartbeat_is_ignored_and_alarmed(device) -> None:
    forger = p.load_private_key(p.generate_keypair()[0])
    health.heartbeat_ingest(device_uid="hall-1", raw=p.seal(heartbeat(), forger))
    assert EdgeDevice.objects.get(uid="hall-1").status == EdgeDevice.Status.PROVISIONED
    assert Alarm.objects.get().kind == Alarm.Kind.FORGED_SIGNATURE


def test_last_will_marks_offline_and_raises_an_alarm(device) -> None:
    dev, key = device
    health.heartbeat_ingest(device_uid="hall-1", raw=p.seal(heartbeat(), key))
    health.status_ingest(device_uid="hall-1", raw=p.OFFLINE_WILL)
    dev.refresh_from_db()
    assert dev.status == EdgeDevice.Status.OFFLINE
    assert Alarm.objects.filter(kind=Alarm.Kind.DEVICE_OFFLINE, device_id=dev.pk).exists()


def test_silent_device_is_swept_offline(device) -> None:
    dev, _ = device
    EdgeDevice.objects.filter(pk=dev.pk).update(
        status=EdgeDevice.Status.ONLINE, last_seen=timezone.now() - dt.timedelta(minutes=10)
    )
    assert health.devices_offline_sweep() == 1
    assert EdgeDevice.objects.get(pk=dev.pk).status == EdgeDevice.Status.OFFLINE
    assert health.devices_offline_sweep() == 0


def test_provision_command_writes_key_and_config(tmp_path, capsys) -> None:
    Door.objects.create(name="Garage")
    call_command("provision_device", "garage-1", "--door", "Garage", "--out", str(tmp_path))
    key_file = tmp_path / "device.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    config = (tmp_path / "agent.toml").read_text()
    assert 'uid = "garage-1"' in config
    device = EdgeDevice.objects.get(uid="garage-1")
    assert p.public_key_b64(p.load_private_key(key_file.read_bytes())) == device.public_key
    assert "PRIVATE KEY" not in device.public_key


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Realtime messages as the dashboards would get them (sent after commit; autocommit here)."""
    from accessctl import realtime

    messages: list[tuple[str, dict]] = []
    monkeypatch.setattr(realtime, "_send", lambda kind, payload: messages.append((str(kind), payload)))
    return messages


def test_device_without_answers_is_degraded_until_answers_flow(device, sent) -> None:
    """Heartbeats arrive, but the answers to its detections do not: degraded (broadcast, alarm);
    detections and a signed ``online`` keep it degraded; a heartbeat with no overdue answers: online."""
    dev, key = device
    health.heartbeat_ingest(device_uid="hall-1", raw=p.seal(heartbeat(answers_overdue=0), key))
    assert EdgeDevice.objects.get(pk=dev.pk).status == EdgeDevice.Status.ONLINE

    raw = p.seal(heartbeat(answers_overdue=3, oldest_overdue_s=12.5), key)
    health.heartbeat_ingest(device_uid="hall-1", raw=raw)
    dev.refresh_from_db()
    assert dev.status == EdgeDevice.Status.DEGRADED
    assert dev.last_heartbeat["answers_overdue"] == 3
    assert ("device.status", {"id": dev.pk, "uid": "hall-1", "door_id": dev.door_id, "status": "degraded",
                              "last_seen": dev.last_seen.isoformat()}) in sent  # fmt: skip
    alarm = Alarm.objects.get(kind=Alarm.Kind.DEVICE_DEGRADED, device_id=dev.pk)
    assert alarm.details == {"uid": "hall-1", "answers_overdue": 3, "oldest_overdue_s": 12.5}
    assert ("alarm.raised", alarm.pk) in [(kind, payload.get("id")) for kind, payload in sent]

    # Still reaching the server is no proof that answers reach the device.
    EdgeDevice.objects.filter(pk=dev.pk).update(last_seen=timezone.now() - dt.timedelta(minutes=1))
    health.device_seen(device=EdgeDevice.objects.get(pk=dev.pk))
    online = p.Status(device_uid="hall-1", state=p.DeviceState.ONLINE, sent_at=time.time())
    health.status_ingest(device_uid="hall-1", raw=p.seal(online, key))
    health.heartbeat_ingest(device_uid="hall-1", raw=raw)
    assert EdgeDevice.objects.get(pk=dev.pk).status == EdgeDevice.Status.DEGRADED
    assert Alarm.objects.get(kind=Alarm.Kind.DEVICE_DEGRADED).count == 1  # raised when it became degraded

    sent.clear()
    health.heartbeat_ingest(device_uid="hall-1", raw=p.seal(heartbeat(answers_overdue=0), key))
    assert EdgeDevice.objects.get(pk=dev.pk).status == EdgeDevice.Status.ONLINE
    assert [payload["status"] for kind, payload in sent if kind == "device.status"] == ["online"]


def test_heartbeat_of_an_older_agent_is_not_measured(device) -> None:
    """No ``answers_overdue`` in the heartbeat (an agent before this field): online, as before."""
    dev, key = device
    old = heartbeat()
    assert "answers_overdue" not in old.to_dict()
    health.heartbeat_ingest(device_uid="hall-1", raw=p.seal(old, key))
    assert EdgeDevice.objects.get(pk=dev.pk).status == EdgeDevice.Status.ONLINE
    assert not Alarm.objects.filter(kind=Alarm.Kind.DEVICE_DEGRADED).exists()


def test_degraded_device_that_falls_silent_is_swept_offline(device) -> None:
    dev, _ = device
    EdgeDevice.objects.filter(pk=dev.pk).update(
        status=EdgeDevice.Status.DEGRADED, last_seen=timezone.now() - dt.timedelta(minutes=10)
    )
    assert health.devices_offline_sweep() == 1
    assert EdgeDevice.objects.get(pk=dev.pk).status == EdgeDevice.Status.OFFLINE
