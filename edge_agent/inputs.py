"""Door inputs: the door position sensor (reed contact) and the request-to-exit button.

An input is two-state (``active`` or not) and calls its listeners on every change, from whatever
thread noticed it. :class:`SimulatedInput` is set by hand (tests, simulation, bench setups);
:class:`GpioInput` reads a GPIO pin through ``gpiozero`` (optional: ``pip install
edge-agent[gpio]``; tests use gpiozero's mock pin factory). What a change means for the door (an
opening, a closing, an exit request) is :mod:`edge_agent.door`'s business.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

Listener = Callable[[bool], None]


class DigitalInput:
    """A two-state input; :meth:`listen` registers ``listener(active)`` for every change."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._active = False
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._active

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _changed(self, active: bool) -> None:
        with self._lock:
            if active == self._active:
                return  # contact bounce, or a repeated edge: nothing changed
            self._active = active
        logger.debug("input %s %s", self.name, "active" if active else "inactive")
        for listener in self._listeners:
            try:
                listener(active)
            except Exception:
                logger.exception("input %s: listener failed", self.name)

    def close(self) -> None:
        """Release the input's hardware, if any."""


class SimulatedInput(DigitalInput):
    """An input set by the caller: :meth:`set` (a door contact), :meth:`press` (a button);
    ``active``: its state at start (a shut door's contact is closed)."""

    def __init__(self, name: str, *, active: bool = False) -> None:
        super().__init__(name)
        self._active = active

    def set(self, active: bool) -> None:
        self._changed(active)

    def press(self) -> None:
        """Press and release (a button)."""
        self._changed(True)
        self._changed(False)


class GpioInput(DigitalInput):
    """A GPIO pin through ``gpiozero.Button``: ``pull_up`` (the contact pulls the pin to ground when
    closed, the usual wiring) and a debounce of ``bounce_s``. Active = the contact is closed."""

    def __init__(self, name: str, pin: int, *, pull_up: bool = True, bounce_s: float = 0.05) -> None:
        super().__init__(name)
        try:
            from gpiozero import Button
        except ImportError:
            raise RuntimeError(f"input {name} on GPIO {pin} needs gpiozero (pip install 'edge-agent[gpio]')") from None
        self.pin = pin
        self._button: Any = Button(pin, pull_up=pull_up, bounce_time=bounce_s or None)
        self._button.when_pressed = lambda *_: self._changed(True)
        self._button.when_released = lambda *_: self._changed(False)
        self._active = bool(self._button.is_pressed)

    def close(self) -> None:
        self._button.close()


def make_input(
    driver: str, name: str, pin: int | None, *, pull_up: bool = True, active: bool = False
) -> DigitalInput | None:
    """The input ``name`` for ``driver`` (``none``: no input, ``simulated`` starting ``active``,
    ``gpio`` on ``pin``; a gpio input without a pin is not wired: None)."""
    if driver == "none":
        return None
    if driver == "simulated":
        return SimulatedInput(name, active=active)
    if pin is None:
        return None
    return GpioInput(name, pin, pull_up=pull_up)
