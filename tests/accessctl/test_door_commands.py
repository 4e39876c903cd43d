"""Door commands go through the domain's interface; the devices app provides it at startup."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from accessctl import door_commands
from accessctl.codes import Reason
from accessctl.decisions import access_decide
from accessctl.models import AccessEvent, Door, Person
from devices.commands import MqttDoorCommands
from devices.provisioning import device_provision
from faceengine import protocol as p

pytestmark = pytest.mark.django_db


class FakeCommands:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def device_command(self, device_uid, kind, *, reason, pulse_ms=0, detection_id=None, wait=True) -> None:
        self.calls.append(("device", device_uid, str(kind), reason, pulse_ms, wait))

    def door_command(self, door_id, kind, *, reason, pulse_ms=0) -> int:
        self.calls.append(("door", door_id, str(kind), reason, pulse_ms))
        return 1

    def flush(self, timeout: float = 5.0) -> int:
        self.calls.append(("flush",))
        return 0


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch):
    """Whatever is registered now, restored afterwards."""
    monkeypatch.setattr(door_commands, "_provider", door_commands.door_commands())
    return door_commands


def _decide(device, person_id: int | None = None) -> AccessEvent:
    event, created = access_decide(
        detection_id=p.new_id(), occurred_at=dt.datetime.now(dt.UTC), device_id=device.pk, device_uid=device.uid,
        door=device.door, person_id=person_id, unknown_reason=Reason.MATCHED if person_id else Reason.UNKNOWN_FACE,
    )  # fmt: skip
    assert created
    return event


def test_the_devices_app_registers_its_provider() -> None:
    assert isinstance(door_commands.door_commands(), MqttDoorCommands)


def test_decision_command_goes_through_the_provider_and_is_flushed_after_commit(
    provider, django_capture_on_commit_callbacks
) -> None:
    fake = FakeCommands()
    provider.door_commands_register(fake)
    device = device_provision(uid="dock-1", door=Door.objects.create(name="Dock", relay_pulse_ms=1500)).device
    person = Person.objects.create(name="Ada")  # in no group: denied
    with django_capture_on_commit_callbacks(execute=True):
        events = [_decide(device, person.pk), _decide(device)]
        assert fake.calls == []  # nothing before commit
    assert [e.reason for e in events] == ["not_in_group", "unknown_face"]
    assert fake.calls == [
        ("device", "dock-1", "deny", "not_in_group", 0, False),
        ("flush",),
        ("device", "dock-1", "deny", "unknown_face", 0, False),
        ("flush",),
    ]


def test_without_a_provider_deciding_still_records_and_warns(
    provider, caplog: pytest.LogCaptureFixture, django_capture_on_commit_callbacks
) -> None:
    provider.door_commands_register(None)
    device = device_provision(uid="dock-2", door=Door.objects.create(name="Dock")).device
    with caplog.at_level(logging.WARNING, logger="accessctl.door_commands"):
        with django_capture_on_commit_callbacks(execute=True):
            event = _decide(device)
    assert AccessEvent.objects.filter(pk=event.pk, reason=Reason.UNKNOWN_FACE).exists()
    assert any("no door command provider" in r.getMessage() for r in caplog.records)
    assert provider.door_command_send(device.door_id, p.CommandKind.LOCKDOWN, reason="lockdown") == 0
