"""The USB keypad / card reader (issue 23): key events -> one PIN or card per Enter, and the agent
wiring through a fake evdev device (no /dev/uinput here; python-evdev is optional and not needed)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import ConfigError, EdgeConfig, load_config
from edge_agent.factor_input import EvdevFactorReader, KeyEntry, make_factor_readers
from edge_agent.relay import SimulatedRelay
from faceengine import protocol as p
from tests.edge_agent.conftest import Keys, candidate, make_config

KEY = {**{str(d): 1 + d for d in range(1, 10)}, "0": 11, "ENTER": 28, "KPENTER": 96, "BACKSPACE": 14}
KEY |= {"ESC": 1, "SHIFT": 42, "A": 30, "C": 46, "F": 33, "E": 18, "O": 24, "B": 48, "KP5": 76, "KPSTAR": 55}


def typed(text: str, *, start: float = 100.0, step: float = 0.1, release: bool = True) -> list[tuple[int, int, float]]:
    """Key events for ``text`` (characters, or ``<NAME>`` for a named key), one press every ``step`` s."""
    names: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "<":
            end = text.index(">", i)
            names.append(text[i + 1 : end])
            i = end + 1
        else:
            names.append(text[i])
            i += 1
    events = []
    for n, name in enumerate(names):
        ts = start + n * step
        events.append((KEY[name], 1, ts))
        if release:
            events.append((KEY[name], 0, ts + step / 2))
    return events


def test_digits_then_enter_is_one_pin_releases_repeats_and_modifiers_ignored() -> None:
    entry = KeyEntry("pin")
    assert entry.feed_all(typed("482913<ENTER>")) == ["482913"]
    events = typed("1234<KPENTER>")
    events.insert(2, (KEY["1"], 2, 100.05))  # an auto-repeat of a held key: still one press
    events.insert(0, (KEY["SHIFT"], 1, 99.9))
    assert entry.feed_all(events) == ["1234"]
    assert entry.feed_all(typed("<KP5><KP5><KP5><KP5><ENTER>")) == ["5555"]  # keypad digits
    assert entry.feed_all(typed("<ENTER><ENTER>")) == [] and entry.rejected == 0  # lone Enters


def test_a_pause_between_keys_drops_the_half_typed_entry() -> None:
    entry = KeyEntry("pin", key_timeout_s=5.0)
    first = typed("12", start=100.0)
    second = typed("5678<ENTER>", start=110.0)  # 10 s later: the next person
    assert entry.feed_all(first + second) == ["5678"] and entry.timed_out == 1
    slow = typed("9876<ENTER>", start=200.0, step=4.0)  # slow but within the timeout between keys
    assert entry.feed_all(slow) == ["9876"]


def test_length_limits_are_the_protocols_and_garbled_entries_are_rejected_not_shortened() -> None:
    entry = KeyEntry("pin")
    assert entry.feed_all(typed("123<ENTER>")) == [] and entry.rejected == 1  # < PIN_MIN_DIGITS
    assert entry.feed_all(typed("1" * (p.PIN_MAX_DIGITS + 1) + "<ENTER>")) == [] and entry.rejected == 2
    assert entry.feed_all(typed("1" * p.PIN_MAX_DIGITS + "<ENTER>")) == ["1" * p.PIN_MAX_DIGITS]
    assert entry.feed_all(typed("12A34<ENTER>")) == [] and entry.rejected == 3  # a letter in a PIN
    assert entry.feed_all(typed("12A<ESC>4321<ENTER>")) == ["4321"]  # Esc clears, garbling included
    assert entry.feed_all(typed("1239<BACKSPACE>4<ENTER>")) == ["1234"]
    assert entry.feed_all(typed("99<KPSTAR>2468<ENTER>")) == ["2468"]


def test_card_kind_takes_letters_upper_cased_up_to_the_protocols_limit() -> None:
    entry = KeyEntry("card")
    assert entry.feed_all(typed("C0FFEE<ENTER>")) == ["C0FFEE"]
    assert entry.feed_all(typed("7<ENTER>")) == ["7"]
    assert entry.feed_all(typed("1" * (p.CARD_MAX_CHARS + 1) + "<ENTER>")) == [] and entry.rejected == 1
    with pytest.raises(ValueError, match="kind"):
        KeyEntry("iris")


class FakeEvent:
    def __init__(self, type_: int, code: int, value: int, ts: float) -> None:
        self.type, self.code, self.value, self._ts = type_, code, value, ts

    def timestamp(self) -> float:
        return self._ts


class FakeDevice:
    """What EvdevFactorReader uses of evdev.InputDevice: fileno (a real pipe, for select), grab,
    ungrab, read (the events pending; OSError once unplugged), close."""

    def __init__(self, events: list[tuple[int, int, float]]) -> None:
        self._r, self._w = os.pipe()
        self.pending = [FakeEvent(4, 4, 458756, 0.0)] + [FakeEvent(1, *e) for e in events]  # EV_MSC first
        self.grabbed = False
        self.closed = False
        self.unplugged = False
        os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def read(self) -> list[FakeEvent]:
        if self.unplugged:
            raise OSError(19, "No such device")
        os.read(self._r, 64)
        events, self.pending = self.pending, []
        return events

    def unplug(self) -> None:
        self.unplugged = True
        os.write(self._w, b"x")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)


def test_config_keypad_section_validates(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text('[device]\nuid = "d1"\n[inputs]\nkeypad_device = "/dev/input/event3"\nkeypad_kind = "card"\n')
    loaded = load_config(toml, environ={"ACS_EDGE_INPUTS_WIEGAND_D0_PIN": "5", "ACS_EDGE_INPUTS_WIEGAND_D1_PIN": "6"})
    inputs = loaded.validate(need_keys=False).inputs
    assert (inputs.keypad_device, inputs.keypad_kind, inputs.wiegand_d0_pin, inputs.wiegand_d1_pin) == (
        "/dev/input/event3", "card", 5, 6,
    )  # fmt: skip
    config = EdgeConfig()
    config.device.uid = "door-1"
    config.inputs.keypad_kind = "iris"
    with pytest.raises(ConfigError, match="keypad_kind"):
        config.validate(need_keys=False)
    config.inputs.keypad_kind = "card"
    config.inputs.wiegand_d0_pin = 5
    with pytest.raises(ConfigError, match="wiegand"):
        config.validate(need_keys=False)


def test_agent_starts_the_configured_reader_and_a_typed_pin_goes_with_the_next_face(
    tmp_path: Path, keys: Keys, broker
) -> None:
    config = make_config(tmp_path, keys, f"mqtt://{broker.host}:{broker.port}")
    config.inputs.keypad_device = "/dev/input/by-id/usb-keypad-event-kbd"
    config.inputs.keypad_kind = "pin"
    config.validate()
    now = time.time()
    devices: list[FakeDevice] = []

    def open_device(path: str) -> FakeDevice:
        assert path == config.inputs.keypad_device
        devices.append(FakeDevice(typed("12<ENTER>739150<ENTER>", start=now)))  # a short one rejected
        return devices[-1]

    agent = EdgeAgent(config, camera=None, detector=None, relay=SimulatedRelay())
    agent.factor_readers = make_factor_readers(config.inputs, agent.factor_enter, open_device=open_device)
    (reader,) = agent.factor_readers
    assert isinstance(reader, EvdevFactorReader)
    agent.start()
    try:
        deadline = time.monotonic() + 5
        while reader.entries < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reader.entries == 1 and reader.entry.rejected == 1 and devices[0].grabbed
        detection = agent.build_detection(candidate(), captured_at=time.time())
        assert detection.second_factor is not None
        assert (detection.second_factor.kind, detection.second_factor.value) == ("pin", "739150")
    finally:
        agent.stop()
    assert devices[0].closed and not devices[0].grabbed


def test_reader_without_evdev_fails_clearly_and_reopens_an_unplugged_device() -> None:
    try:
        import evdev  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="evdev"):
            EvdevFactorReader("/dev/input/event9", "card", lambda *a: None).start()
    got: list[tuple[str, str]] = []
    opened: list[FakeDevice] = []

    def open_device(path: str) -> FakeDevice:
        opened.append(FakeDevice(typed("C0FFEE<ENTER>" if not opened else "BEEF<ENTER>")))
        if len(opened) == 1:
            threading.Timer(0.2, opened[0].unplug).start()  # unplugged after the first card: read fails
        return opened[-1]

    reader = EvdevFactorReader("/dev/input/event9", "card", lambda k, v: got.append((k, v)), reopen_s=0.05,
                               open_device=open_device)  # fmt: skip
    reader.start()
    try:
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        started = time.monotonic()
        reader.close()
    assert got == [("card", "C0FFEE"), ("card", "BEEF")]
    assert time.monotonic() - started < 1 and all(d.closed for d in opened)  # stopped within poll_s
