"""Wiegand card readers on GPIO: 26-bit and 34-bit frames, parity checked, into a card number.

A Wiegand reader has two lines, D0 and D1, idle high; each bit is a short low pulse (about 50 us)
on D0 for a 0 or D1 for a 1, about every 2 ms; a frame ends when no bit comes for a while
(``gap_s``, 25 ms by default). :class:`WiegandDecoder` is the logic, fed bits with their time:

- 26 bits: even parity over bits 1-13 (the first bit), odd parity over bits 14-26 (the last), 24
  data bits (8 facility code, 16 card number);
- 34 bits: the same with 17 + 17 bits, 32 data bits (the card's full 32-bit number);
- the card number is the decimal of the data bits (the facility code included: two cards with the
  same number and different sites differ), the value a USB reader types for the same card;
- any other length, or a parity error, is rejected (counted in ``rejected``): never a guess.

:class:`WiegandReader` is the adapter over gpiozero (``DigitalInputDevice`` on each line, pulled
up, active low; tests drive gpiozero's mock pins) and calls ``on_factor("card", number)``. GPIO
edge callbacks in Python keep up with a Wiegand reader's 2 ms bit period; a reader with pulses
shorter than the pin library can see needs a pin factory with hardware timestamps (pigpio).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

FORMATS = (26, 34)

FactorCallback = Callable[[str, str], object]


def wiegand_decode(bits: list[int] | tuple[int, ...]) -> str | None:
    """The card number of one frame (``bits`` of 0/1, first received first), or None (bad length or parity)."""
    n = len(bits)
    if n not in FORMATS:
        return None
    half = n // 2
    if sum(bits[:half]) % 2 != 0:  # even parity over the first half, its parity bit included
        return None
    if sum(bits[half:]) % 2 != 1:  # odd parity over the second half
        return None
    number = 0
    for bit in bits[1:-1]:
        number = (number << 1) | bit
    return str(number)


class WiegandDecoder:
    """Bits in (:meth:`bit`), frames out when the line goes quiet for ``gap_s`` (:meth:`poll`)."""

    def __init__(self, *, gap_s: float = 0.025, max_bits: int = 64) -> None:
        self.gap_s = gap_s
        self.max_bits = max_bits
        self._bits: list[int] = []
        self._last: float | None = None
        self._lock = threading.Lock()
        self.rejected = 0

    def bit(self, value: int, ts: float) -> str | None:
        """One bit at ``ts`` (monotonic seconds); a bit after a gap first ends the frame before it
        (returned, when it decodes)."""
        done = self.poll(ts)
        with self._lock:
            if len(self._bits) <= self.max_bits:  # noise: stops growing past the limit, rejected at the end
                self._bits.append(1 if value else 0)
            self._last = ts
        return done

    def poll(self, now: float) -> str | None:
        """The frame ended by ``now`` (no bit for ``gap_s``), decoded; None when none ended or it was bad."""
        with self._lock:
            if not self._bits or self._last is None or now - self._last < self.gap_s:
                return None
            bits, self._bits = self._bits, []
        number = wiegand_decode(bits)
        if number is None:
            self.rejected += 1
            logger.warning("wiegand frame rejected (%d bits: bad length or parity)", len(bits))
        return number


class WiegandReader:
    """D0 and D1 on GPIO pins through gpiozero; ``on_factor("card", number)`` for each good frame."""

    def __init__(self, d0_pin: int, d1_pin: int, on_factor: FactorCallback, *, gap_s: float = 0.025) -> None:
        try:
            from gpiozero import DigitalInputDevice
        except ImportError:
            raise RuntimeError("the Wiegand reader needs gpiozero (pip install 'edge-agent[gpio]')") from None
        self.decoder = WiegandDecoder(gap_s=gap_s)
        self.on_factor = on_factor
        self.entries = 0
        self._lines: list[Any] = []
        for pin, value in ((d0_pin, 0), (d1_pin, 1)):
            line = DigitalInputDevice(pin, pull_up=True)  # idle high; a bit pulls it low (active)
            line.when_activated = self._on_bit(value)
            self._lines.append(line)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wiegand", daemon=True)

    def _on_bit(self, value: int) -> Callable[..., None]:
        def handler(*_: object) -> None:
            self._deliver(self.decoder.bit(value, time.monotonic()))

        return handler

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.decoder.gap_s / 2):
            self._deliver(self.decoder.poll(time.monotonic()))

    def _deliver(self, number: str | None) -> None:
        if number is None:
            return
        self.entries += 1
        try:
            self.on_factor("card", number)
        except Exception:
            logger.exception("wiegand: card refused")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1)
        for line in self._lines:
            line.close()
