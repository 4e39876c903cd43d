"""What the domain asks of the doors' devices, and who answers: an interface the devices app provides.

Decisions and operator actions need to tell a door's devices to open, deny, lock down or lift a
lockdown; how that reaches a device (MQTT, signing) is not the domain's business. The devices app
implements :class:`DoorCommands` and registers it at startup (``DevicesConfig.ready``) with
:func:`door_commands_register`. With nothing registered (a process without the devices app) the
domain still decides and records; it logs that no command went out.
"""

from __future__ import annotations

import logging
from typing import Protocol

from faceengine import protocol as p

logger = logging.getLogger(__name__)


class DoorCommands(Protocol):
    """Sends commands to door devices. Implementations raise on a transport failure; callers log it."""

    def device_command(
        self,
        device_uid: str,
        kind: p.CommandKind,
        *,
        reason: str,
        pulse_ms: int = 0,
        detection_id: str | None = None,
        wait: bool = True,
    ) -> None:
        """Send ``kind`` to one device. ``wait=False``: do not wait for the transport's
        acknowledgement now; :meth:`flush` waits for all of them together."""

    def door_command(self, door_id: int, kind: p.CommandKind, *, reason: str, pulse_ms: int = 0) -> int:
        """Send ``kind`` to every enabled device at a door; returns how many devices got it."""

    def flush(self, timeout: float = 5.0) -> int:
        """Wait for the commands sent with ``wait=False``; returns how many were not acknowledged."""


_provider: DoorCommands | None = None


def door_commands_register(provider: DoorCommands | None) -> None:
    """Install the implementation (the devices app does, at startup); ``None`` removes it."""
    global _provider
    _provider = provider


def door_commands() -> DoorCommands | None:
    """The registered implementation, or None (then a warning is logged by the caller's helpers)."""
    return _provider


def device_command_send(
    device_uid: str,
    kind: p.CommandKind,
    *,
    reason: str,
    pulse_ms: int = 0,
    detection_id: str | None = None,
    wait: bool = True,
) -> bool:
    """Send one device command through the provider; False (logged) when there is none."""
    provider = _provider
    if provider is None:
        logger.warning(
            "no door command provider: %s for device %s (detection %s) not sent", kind, device_uid, detection_id or "-"
        )
        return False
    provider.device_command(device_uid, kind, reason=reason, pulse_ms=pulse_ms, detection_id=detection_id, wait=wait)
    return True


def door_command_send(door_id: int, kind: p.CommandKind, *, reason: str, pulse_ms: int = 0) -> int:
    """Send ``kind`` to a door's devices through the provider; 0 (logged) when there is none."""
    provider = _provider
    if provider is None:
        logger.warning("no door command provider: %s for door %s not sent", kind, door_id)
        return 0
    return provider.door_command(door_id, kind, reason=reason, pulse_ms=pulse_ms)


def door_commands_flush(timeout: float = 5.0) -> int:
    """Wait for the commands sent with ``wait=False``; never raises (a failure is logged)."""
    provider = _provider
    if provider is None:
        return 0
    try:
        return provider.flush(timeout)
    except Exception:
        logger.exception("waiting for door commands failed")
        return 0
