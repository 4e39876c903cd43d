"""The door's inputs at the agent (issue 23): the exit button releases the lock locally and both it
and the position sensor are reported as signed door events over MQTT (spooled, in order)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import ConfigError, load_config
from edge_agent.door import DoorController
from edge_agent.inputs import SimulatedInput, make_input
from edge_agent.relay import SimulatedRelay
from faceengine import protocol as p
from tests.edge_agent.conftest import UID, Keys, ServerClient, make_config


def test_exit_button_pulses_the_relay_and_reports_it_sensor_reports_position_with_the_relay_state() -> None:
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="secure")
    sensor, button = SimulatedInput("door", active=True), SimulatedInput("exit")
    reported: list[tuple[p.DoorEventKind, bool]] = []
    door.attach_inputs(
        report=lambda kind, released: reported.append((kind, released)),
        sensor=sensor,
        exit_button=button,
        exit_pulse_ms=200,
    )
    sensor.set(False)  # contact open: the door opened while locked
    assert reported == [(p.DoorEventKind.OPENED, False)]
    sensor.set(False)  # bounce: nothing changed
    sensor.set(True)
    button.press()
    assert relay.pulses == [200] and relay.is_released
    sensor.set(False)
    assert reported[1:] == [
        (p.DoorEventKind.CLOSED, False),
        (p.DoorEventKind.EXIT_REQUEST, True),
        (p.DoorEventKind.OPENED, True),
    ]
    time.sleep(0.3)
    assert not relay.is_released  # the pulse ended


def test_exit_button_works_in_lockdown_free_egress() -> None:
    relay = SimulatedRelay()
    door = DoorController(relay, fail_mode="secure")
    door.apply(p.Command(device_uid="d", command="lockdown", command_id=p.new_id(), issued_at=time.time(), reason="x"))
    button = SimulatedInput("exit")
    reported: list = []
    door.attach_inputs(report=lambda *a: reported.append(a), exit_button=button, exit_pulse_ms=100)
    button.press()
    assert relay.pulses == [100] and reported == [(p.DoorEventKind.EXIT_REQUEST, True)]


def test_agent_sends_signed_door_events_in_order(tmp_path: Path, keys: Keys, server: ServerClient, broker) -> None:
    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.inputs.driver = "simulated"
    config.inputs.exit_pulse_ms = 300
    relay = SimulatedRelay()
    sensor, button = SimulatedInput("door", active=True), SimulatedInput("exit")
    agent = EdgeAgent(config, camera=None, detector=None, relay=relay, door_sensor=sensor, exit_button=button)
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        button.press()
        sensor.set(False)
        sensor.set(True)
        received = []
        for _ in range(3):
            topic, raw = server.next(p.TopicKind.DOOR)
            message = p.open_message(topic, raw, keys.device_public, window_s=30)
            assert isinstance(message, p.DoorEvent) and message.device_uid == UID
            received.append((message.kind, message.released))
        assert received == [
            (p.DoorEventKind.EXIT_REQUEST, True),
            (p.DoorEventKind.OPENED, True),
            (p.DoorEventKind.CLOSED, True),  # closed within the 300 ms pulse
        ]
        assert relay.pulses == [300] and agent.door_events_sent == 3
    finally:
        agent.stop()


def test_inputs_config(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('[device]\nuid = "d1"\n[inputs]\ndriver = "gpio"\nexit_button_pin = 27\nexit_pulse_ms = 4000\n')
    config = load_config(toml, environ={"ACS_EDGE_INPUTS_DOOR_SENSOR_PIN": "17"})
    assert config.validate(need_keys=False).inputs.door_sensor_pin == 17
    assert config.inputs.exit_button_pin == 27 and config.inputs.exit_pulse_ms == 4000
    config.inputs.door_sensor_pin = config.inputs.exit_button_pin = None
    with pytest.raises(ConfigError, match=r"door_sensor_pin or inputs\.exit_button_pin"):
        config.validate(need_keys=False)
    config.inputs.driver = "telepathy"
    with pytest.raises(ConfigError, match=r"inputs\.driver"):
        config.validate(need_keys=False)
    assert make_input("none", "door", 17) is None
    assert make_input("gpio", "door", None) is None


def test_gpio_inputs_with_gpiozero_mock_pins() -> None:
    gpiozero = pytest.importorskip("gpiozero")
    from gpiozero.pins.mock import MockFactory

    from edge_agent.inputs import GpioInput

    previous = gpiozero.Device.pin_factory
    gpiozero.Device.pin_factory = MockFactory()
    try:
        relay = SimulatedRelay()
        door = DoorController(relay, fail_mode="secure")
        sensor, button = GpioInput("door", 17), GpioInput("exit", 27, bounce_s=0)
        reported: list = []
        door.attach_inputs(report=lambda *a: reported.append(a), sensor=sensor, exit_button=button, exit_pulse_ms=100)
        sensor_pin, button_pin = gpiozero.Device.pin_factory.pin(17), gpiozero.Device.pin_factory.pin(27)
        sensor_pin.drive_low()  # contact closed: door shut
        button_pin.drive_low()  # pressed
        button_pin.drive_high()
        sensor_pin.drive_high()  # contact open: door opened
        deadline = time.monotonic() + 2
        while len(reported) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reported == [
            (p.DoorEventKind.CLOSED, False),
            (p.DoorEventKind.EXIT_REQUEST, True),
            (p.DoorEventKind.OPENED, True),
        ]
        sensor.close()
        button.close()
    finally:
        gpiozero.Device.pin_factory = previous


def test_a_pin_entered_goes_signed_with_the_next_face_once(tmp_path: Path, keys: Keys) -> None:
    from tests.edge_agent.conftest import candidate

    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:9")  # never connected: nothing is sent here
    config.inputs.factor_window_s = 30
    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay())
    try:
        with pytest.raises(p.ProtocolError):
            agent.factor_enter("pin", "12ab")
        agent.factor_enter("pin", "482913")
        first = agent.build_detection(candidate(), captured_at=time.time())
        assert first.second_factor is not None and first.second_factor.value == "482913"
        signed = p.open_envelope(p.seal(first, agent.private_key), keys.device_public)
        assert signed["second_factor"]["kind"] == "pin"
        assert agent.build_detection(candidate(), captured_at=time.time()).second_factor is None  # used once
        factor = agent.factor_enter("card", "C0FFEE")
        object.__setattr__(factor, "entered_at", time.time() - 60)  # entered a minute ago: expired
        assert agent.build_detection(candidate(), captured_at=time.time()).second_factor is None
    finally:
        agent.stop()
