"""End to end, the door's inputs (issue 23): the edge agent with a simulated relay, position sensor
and exit button, over the test run's real broker, the bridge as a process and the real database.

Forced open, an exit request, and a door held open after an operator's remote unlock (the open
command reaches the agent over MQTT and pulses its relay): each makes exactly one record of its
kind and, for the forced and the held door, exactly one alarm, cleared when the door closes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from accessctl.codes import Reason
from accessctl.door_sensors import doors_held_open_sweep
from accessctl.doors import door_unlock
from accessctl.models import AccessEvent, Alarm, Door
from devices.provisioning import agent_config, device_provision, secret_file_write
from edge_agent.agent import EdgeAgent
from edge_agent.config import load_config
from edge_agent.inputs import SimulatedInput
from edge_agent.relay import SimulatedRelay
from tests.accessctl.helpers import user_create
from tests.devices import e2e
from tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

UID = "e2e-door-1"


@pytest.fixture(scope="module")
def bridge(django_db_setup, test_env, tmp_path_factory) -> Iterator[None]:
    logs = tmp_path_factory.mktemp("e2e-door")
    with e2e.child_process(e2e.bridge_argv(), test_env, "bridge connected", logs / "bridge.log"):
        yield


@pytest.fixture
def door_site(bridge, tmp_path: Path, media_root) -> Iterator[dict]:
    door = Door.objects.create(name="Loading bay", relay_pulse_ms=1500, held_open_s=15)
    provisioned = device_provision(uid=UID, door=door)
    key = tmp_path / "device.key"
    secret_file_write(key, provisioned.private_key_pem)
    config_path = tmp_path / "agent.toml"
    spool = tmp_path / "spool"
    text = agent_config(provisioned, key_path=str(key), mqtt_url=settings.MQTT_URL)
    text += f'[spool]\ndir = "{spool}"\n[inputs]\ndriver = "simulated"\nexit_pulse_ms = 1500\n'
    secret_file_write(config_path, text)
    config = load_config(config_path, environ={}).validate()
    relay = SimulatedRelay()
    sensor, button = SimulatedInput("door", active=True), SimulatedInput("exit")
    agent = EdgeAgent(config, camera=None, detector=None, relay=relay, door_sensor=sensor, exit_button=button)
    agent.start()
    assert agent.link.wait_subscribed(15), "the agent did not subscribe to its commands"
    try:
        yield {"door": door, "agent": agent, "relay": relay, "sensor": sensor, "button": button}
    finally:
        agent.stop()


def _recorded(*reasons: str) -> list[AccessEvent]:
    wait_until(lambda: AccessEvent.objects.filter(device_uid=UID).count() >= len(reasons), timeout=20)
    events = list(AccessEvent.objects.filter(device_uid=UID).order_by("id"))
    assert [e.reason for e in events] == list(reasons)
    return events


def test_forced_exit_and_held_open_through_the_agent_and_the_bridge(door_site) -> None:
    sensor, button, relay, door = door_site["sensor"], door_site["button"], door_site["relay"], door_site["door"]
    # forced: the door opens with the relay locked and no grant
    sensor.set(False)
    _recorded(Reason.FORCED_OPEN)
    [forced] = Alarm.objects.filter(kind=Alarm.Kind.FORCED_OPEN)
    sensor.set(True)
    _recorded(Reason.FORCED_OPEN, Reason.DOOR_CLOSED)
    forced.refresh_from_db()
    assert forced.cleared_at is not None

    # exit request: the agent releases the lock itself; the opening is authorised, no alarm
    button.press()
    assert relay.pulses == [1500]
    sensor.set(False)
    sensor.set(True)
    events = _recorded(
        Reason.FORCED_OPEN, Reason.DOOR_CLOSED, Reason.EXIT_REQUEST, Reason.DOOR_OPENED, Reason.DOOR_CLOSED
    )
    assert events[3].details["basis"] == "exit_request" and events[3].details["released"] is True
    assert Alarm.objects.count() == 1

    # held open: an operator unlocks remotely, the command opens the relay, the door stays open
    operator = user_create("operator", "accessctl.operate_doors")
    relay.pulse_event.clear()
    unlock = door_unlock(door=door, actor=operator)
    assert relay.pulse_event.wait(15), "the open command did not reach the agent"
    sensor.set(False)
    opened = _recorded(*[e.reason for e in events], Reason.DOOR_OPENED)[-1]
    assert opened.details["basis"] == "grant"
    assert AccessEvent.objects.filter(pk=unlock.pk, reason=Reason.REMOTE_UNLOCK).exists()
    assert doors_held_open_sweep(now=opened.occurred_at + dt.timedelta(seconds=16)) == 1
    [held] = Alarm.objects.filter(kind=Alarm.Kind.HELD_OPEN)
    sensor.set(True)
    wait_until(lambda: Alarm.objects.filter(pk=held.pk, cleared_at__isnull=False).exists(), timeout=20)
    assert AccessEvent.objects.filter(device_uid=UID, reason=Reason.HELD_OPEN).count() == 1
    assert Alarm.objects.count() == 2  # one forced, one held
