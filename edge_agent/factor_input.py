"""Second-factor input: a USB keypad or card reader that types a PIN or a card number then Enter.

Such readers are keyboards to Linux (HID). :class:`KeyEntry` is the logic, fed ``(keycode, value)``
key events (Linux input keycodes; value 1 pressed, 0 released, 2 auto-repeat) with their time:

- digits (top row and keypad; letters too for ``card``, upper-cased) make up the entry, Enter (or
  keypad Enter) ends it and returns it once; an empty Enter does nothing;
- a pause longer than ``key_timeout_s`` between two keys drops the half-typed entry (someone walked
  away mid-PIN: the next person does not inherit their digits);
- Backspace removes the last character, Esc and keypad ``*`` clear the entry; modifiers (Shift,
  Num Lock...) are ignored; any other key (a letter in a PIN) spoils the entry, which Enter then
  rejects: a garbled read is never shortened into a valid-looking one;
- the length limits are the protocol's (:data:`faceengine.protocol.PIN_MIN_DIGITS` ...): a PIN
  shorter or longer, a card longer, is rejected at Enter (counted in ``rejected``).

:class:`EvdevFactorReader` is the thin adapter over python-evdev: it opens the device, grabs it (the
digits typed do not also reach a console or a login prompt), feeds :class:`KeyEntry` and hands each
entry to ``on_factor(kind, value)`` (the agent's :meth:`~edge_agent.agent.EdgeAgent.factor_enter`),
reopening the device after an unplug. ``evdev`` is optional (``pip install evdev``, Linux only) and
imported only when a reader is configured.
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable, Iterable
from typing import Any

from faceengine import protocol as p

logger = logging.getLogger(__name__)

EV_KEY = 1  # linux/input-event-codes.h
KEY_ESC, KEY_BACKSPACE, KEY_ENTER, KEY_KPENTER, KEY_KPASTERISK = 1, 14, 28, 96, 55
_DIGITS = {2: "1", 3: "2", 4: "3", 5: "4", 6: "5", 7: "6", 8: "7", 9: "8", 10: "9", 11: "0"}
_DIGITS |= {79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9", 82: "0"}
_LETTERS = dict(zip((16, 17, 18, 19, 20, 21, 22, 23, 24, 25), "QWERTYUIOP", strict=True))
_LETTERS |= dict(zip((30, 31, 32, 33, 34, 35, 36, 37, 38), "ASDFGHJKL", strict=True))
_LETTERS |= dict(zip((44, 45, 46, 47, 48, 49, 50), "ZXCVBNM", strict=True))
#: Ctrl, Shift, Alt, Caps Lock, Num Lock, Scroll Lock, Meta: ignored
_MODIFIERS = frozenset({29, 42, 54, 56, 58, 69, 70, 97, 100, 125, 126})
KINDS = ("pin", "card")

FactorCallback = Callable[[str, str], object]


class KeyEntry:
    """Key events in, one PIN or card number out per Enter (see the module doc)."""

    def __init__(self, kind: str, *, key_timeout_s: float = 5.0) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.key_timeout_s = key_timeout_s
        self.max_len = p.PIN_MAX_DIGITS if kind == "pin" else p.CARD_MAX_CHARS
        self.min_len = p.PIN_MIN_DIGITS if kind == "pin" else 1
        self._chars: list[str] = []
        self._spoiled = False
        self._last_key: float | None = None
        self.rejected = 0
        self.timed_out = 0

    def _clear(self) -> None:
        self._chars.clear()
        self._spoiled = False

    @property
    def pending(self) -> int:
        """How many characters are typed and not yet ended by Enter."""
        return len(self._chars)

    def feed(self, code: int, value: int, ts: float) -> str | None:
        """One key event at ``ts`` (seconds, monotonic or wall, one clock): the entry it completes, or None."""
        if value != 1 or code in _MODIFIERS:  # releases and auto-repeats (a held key is one press)
            return None
        if self._last_key is not None and ts - self._last_key > self.key_timeout_s and (self._chars or self._spoiled):
            logger.info("%s entry dropped: more than %.1f s between keys", self.kind, self.key_timeout_s)
            self.timed_out += 1
            self._clear()
        self._last_key = ts
        if code in (KEY_ENTER, KEY_KPENTER):
            return self._end()
        if code in (KEY_ESC, KEY_KPASTERISK):
            self._clear()
        elif code == KEY_BACKSPACE:
            if self._chars:
                self._chars.pop()
        elif code in _DIGITS or (self.kind == "card" and code in _LETTERS):
            self._chars.append(_DIGITS.get(code) or _LETTERS[code])
            if len(self._chars) > self.max_len:
                self._spoiled = True
                self._chars.clear()  # keep nothing of an over-long entry; rejected at Enter
        else:
            self._spoiled = True
        return None

    def _end(self) -> str | None:
        value, spoiled = "".join(self._chars), self._spoiled
        self._clear()
        if not value and not spoiled:
            return None  # a lone Enter
        if spoiled or not self.min_len <= len(value) <= self.max_len:
            self.rejected += 1
            logger.warning("%s entry rejected (%d characters%s)", self.kind, len(value), ", garbled" if spoiled else "")
            return None
        return value

    def feed_all(self, events: Iterable[tuple[int, int, float]]) -> list[str]:
        """Every entry completed by ``events`` (``(code, value, ts)``), in order."""
        return [v for code, value, ts in events if (v := self.feed(code, value, ts)) is not None]


def _evdev_module(path: str) -> Any:
    try:
        import evdev
    except ImportError:
        raise RuntimeError(
            f"the keypad/card reader {path} needs python-evdev (pip install 'edge-agent[keypad]', Linux)"
        ) from None
    return evdev


def _evdev_open(path: str) -> Any:
    return _evdev_module(path).InputDevice(path)


class EvdevFactorReader:
    """Reads ``path`` (e.g. ``/dev/input/by-id/usb-...-event-kbd``) on its own thread and calls
    ``on_factor(kind, value)`` for each entry. ``open_device``: what opens the path (default:
    ``evdev.InputDevice``; a test passes a fake with ``fileno``, ``grab``, ``ungrab``, ``read``,
    ``close``). The device is polled with a timeout of ``poll_s``: :meth:`close` stops it within that."""

    def __init__(
        self,
        path: str,
        kind: str,
        on_factor: FactorCallback,
        *,
        key_timeout_s: float = 5.0,
        reopen_s: float = 2.0,
        poll_s: float = 0.25,
        open_device: Callable[[str], Any] = _evdev_open,
    ) -> None:
        self.path = path
        self.entry = KeyEntry(kind, key_timeout_s=key_timeout_s)
        self.on_factor = on_factor
        self.reopen_s = reopen_s
        self.poll_s = poll_s
        self._open = open_device
        self._device: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"factor-{kind}", daemon=True)
        self.entries = 0

    def start(self) -> None:
        """Start reading; fails now, not on the thread, when python-evdev is missing."""
        if self._open is _evdev_open:
            _evdev_module(self.path)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._device = self._open(self.path)
                self._device.grab()  # the typed digits go to us only, not to a console
                logger.info("second-factor reader %s opened (%s)", self.path, self.entry.kind)
                self._read(self._device)
            except OSError as exc:
                if not self._stop.is_set():
                    logger.warning("second-factor reader %s: %s; reopening in %.0f s", self.path, exc, self.reopen_s)
            except Exception:
                logger.exception("second-factor reader %s failed", self.path)
            finally:
                self._release()
            self._stop.wait(self.reopen_s)

    def _read(self, device: Any) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([device], [], [], self.poll_s)
            if not ready:
                continue
            try:
                events = list(device.read())
            except BlockingIOError:  # woken with nothing to read
                continue
            for event in events:
                if event.type == EV_KEY:
                    self._deliver(self.entry.feed(event.code, event.value, event.timestamp()))

    def _deliver(self, value: str | None) -> None:
        if value is None:
            return
        self.entries += 1
        try:
            self.on_factor(self.entry.kind, value)
        except Exception:  # a value the protocol refuses: logged by the caller's rules, never a crash
            logger.exception("second-factor reader %s: entry refused", self.path)

    def _release(self) -> None:
        device, self._device = self._device, None
        if device is None:
            return
        for step in (device.ungrab, device.close):
            try:
                step()
            except OSError:
                pass

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading; the reader thread releases (ungrabs and closes) the device."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)


def make_factor_readers(
    inputs: Any, on_factor: FactorCallback, *, open_device: Callable[[str], Any] = _evdev_open
) -> list[Any]:
    """The second-factor readers the ``[inputs]`` section configures (keypad device, Wiegand pins),
    not started; each has ``start()`` and ``close()``."""
    readers: list[Any] = []
    if inputs.keypad_device:
        readers.append(
            EvdevFactorReader(
                inputs.keypad_device,
                inputs.keypad_kind,
                on_factor,
                key_timeout_s=inputs.keypad_key_timeout_s,
                open_device=open_device,
            )
        )
    if inputs.wiegand_d0_pin is not None and inputs.wiegand_d1_pin is not None:
        from edge_agent.wiegand import WiegandReader

        readers.append(
            WiegandReader(inputs.wiegand_d0_pin, inputs.wiegand_d1_pin, on_factor, gap_s=inputs.wiegand_gap_ms / 1000)
        )
    return readers
