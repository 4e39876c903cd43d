"""Door relay drivers: :class:`GpioRelay` (gpiozero or sysfs) and :class:`SimulatedRelay`.

A driver knows three things: lock (de-energise the strike), release (energise: door opens and
stays open) and pulse (release for ``ms`` then lock again, without blocking the caller). The
offline policy that decides *when* to release lives in :mod:`edge_agent.door`.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class RelayDriver(abc.ABC):
    """Base class: subclasses implement :meth:`_set` (True = strike energised, door openable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held = False
        self._pulse_until = 0.0
        self._timer: threading.Timer | None = None
        self._released = False

    @abc.abstractmethod
    def _set(self, released: bool) -> None: ...

    def _drive(self, released: bool) -> None:
        self._released = released
        self._set(released)

    @property
    def is_released(self) -> bool:
        """The strike is energised now (door openable): a pulse or a hold is on."""
        return self._released

    def pulse(self, ms: int) -> None:
        """Release for ``ms`` milliseconds, then lock (unless held open meanwhile)."""
        with self._lock:
            self._pulse_until = max(self._pulse_until, time.monotonic() + ms / 1000.0)
            self._drive(True)
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(ms / 1000.0, self._end_pulse)
            self._timer.daemon = True
            self._timer.start()
        self._record_pulse(ms)

    def _end_pulse(self) -> None:
        with self._lock:
            if not self._held and time.monotonic() >= self._pulse_until - 0.005:
                self._drive(False)

    def hold_open(self) -> None:
        """Release until :meth:`lock` (fail-safe while offline)."""
        with self._lock:
            self._held = True
            self._drive(True)

    def lock(self) -> None:
        """Lock now, ending any pulse or hold."""
        with self._lock:
            self._held = False
            self._pulse_until = 0.0
            if self._timer is not None:
                self._timer.cancel()
            self._drive(False)

    @property
    def held_open(self) -> bool:
        return self._held

    def _record_pulse(self, ms: int) -> None:
        logger.info("relay pulse %d ms", ms)

    def close(self) -> None:
        self.lock()


@dataclass(frozen=True)
class RelayEvent:
    ts: float
    action: str  # pulse | release | lock
    ms: int = 0


class SimulatedRelay(RelayDriver):
    """Records what a real relay would have done (tests, simulation, bench setups)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = False
        self.events: list[RelayEvent] = []
        self.pulse_event = threading.Event()

    def _set(self, released: bool) -> None:
        if released != self.released:
            self.events.append(RelayEvent(time.time(), "release" if released else "lock"))
        self.released = released

    def _record_pulse(self, ms: int) -> None:
        self.events.append(RelayEvent(time.time(), "pulse", ms))
        self.pulse_event.set()
        super()._record_pulse(ms)

    @property
    def pulses(self) -> list[int]:
        return [e.ms for e in self.events if e.action == "pulse"]


class GpioRelay(RelayDriver):
    """A relay on a GPIO pin: ``gpiozero.OutputDevice`` when installed, else the sysfs interface."""

    def __init__(self, pin: int, *, active_high: bool = True) -> None:
        super().__init__()
        self.pin = pin
        self.active_high = active_high
        self._device: Any = None
        self._sysfs: Path | None = None
        try:
            from gpiozero import OutputDevice

            self._device = OutputDevice(pin, active_high=active_high, initial_value=False)
        except ImportError:
            self._sysfs = self._export_sysfs(pin)
            logger.info("gpiozero not installed; driving GPIO %d through sysfs", pin)
        self._set(False)

    @staticmethod
    def _export_sysfs(pin: int) -> Path:
        base = Path("/sys/class/gpio")
        gpio = base / f"gpio{pin}"
        if not gpio.exists():
            (base / "export").write_text(str(pin))
        (gpio / "direction").write_text("out")
        return gpio / "value"

    def _set(self, released: bool) -> None:
        if self._device is not None:
            self._device.value = released
        elif self._sysfs is not None:
            self._sysfs.write_text("1" if released == self.active_high else "0")

    def close(self) -> None:
        super().close()
        if self._device is not None:
            self._device.close()


def make_relay(driver: str, *, gpio_pin: int | None = None, active_high: bool = True) -> RelayDriver:
    if driver == "gpio":
        if gpio_pin is None:
            raise ValueError("gpio relay needs a pin")
        return GpioRelay(gpio_pin, active_high=active_high)
    return SimulatedRelay()
