"""Server -> device commands: signed with the server key and published on the device's commands topic.

The server's Ed25519 key lives in ``SERVER_SIGNING_KEY_FILE`` (created on first use); devices get
its public half at provisioning and ignore commands that do not verify.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Any

from django.conf import settings

from accessctl.server_key import server_signing_key
from devices.models import EdgeDevice
from devices.mqtt import client_create
from faceengine import protocol as p

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def server_private_key() -> Any:
    """Load (or create on first use) the server's command-signing key (``accessctl.server_key``)."""
    return server_signing_key()


def server_public_key_b64() -> str:
    return p.public_key_b64(server_private_key())


class CommandPublisher:
    """One long-lived MQTT connection per process for publishing commands (QoS1)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client = None
        self._pending: list[tuple[str, Any]] = []

    def _connected_client(self) -> Any:
        with self._lock:
            if self._client is None:
                client, address = client_create(
                    f"{settings.MQTT_CLIENT_ID}-cmd-{threading.get_native_id()}", clean_session=True
                )
                client.connect(address.host, address.port, keepalive=30)
                client.loop_start()
                self._client = client
            return self._client

    def publish(self, topic: str, body: bytes, *, wait: bool = True, timeout: float = 5.0) -> None:
        """Publish at QoS1. ``wait``: block until the broker acknowledged it; otherwise the
        acknowledgement is awaited by the next :meth:`flush` (several commands then wait together)."""
        info = self._connected_client().publish(topic, body, qos=1)
        if wait:
            info.wait_for_publish(timeout)
        else:
            with self._lock:
                self._pending.append((topic, info))

    def flush(self, timeout: float = 5.0) -> int:
        """Wait for the broker's acknowledgement of every command published with ``wait=False``;
        returns how many were not acknowledged within ``timeout`` (each is logged)."""
        with self._lock:
            pending, self._pending = self._pending, []
        deadline = time.monotonic() + timeout
        missing = 0
        for topic, info in pending:
            try:
                info.wait_for_publish(max(deadline - time.monotonic(), 0.0))
            except (RuntimeError, ValueError) as exc:  # not queued, or the connection went away
                logger.warning("command to %s not acknowledged by the broker: %s", topic, exc)
            if not info.is_published():
                missing += 1
        if missing:
            logger.warning("%d of %d commands not acknowledged within %.1f s", missing, len(pending), timeout)
        return missing

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.loop_stop()
                self._client.disconnect()
                self._client = None


publisher = CommandPublisher()


def command_send(
    device: EdgeDevice | str,
    kind: p.CommandKind,
    *,
    reason: str,
    pulse_ms: int = 0,
    detection_id: str | None = None,
    data: dict[str, Any] | None = None,
    wait: bool = True,
) -> p.Command:
    """Sign and publish one command to ``device`` (a device or its uid); returns what was sent.

    ``wait=False``: do not block on the broker's acknowledgement; the caller calls
    :func:`commands_flush` once it has sent everything (decisions of a batch wait together).
    """
    command = p.Command(
        device_uid=device if isinstance(device, str) else device.uid,
        command=kind,
        command_id=p.new_id(),
        issued_at=time.time(),
        reason=reason,
        pulse_ms=pulse_ms,
        detection_id=detection_id,
        data=data or {},
    )
    publisher.publish(p.commands_topic(command.device_uid), p.seal(command, server_private_key()), wait=wait)
    logger.info(
        "command %s %s to device %s (detection %s)", command.command_id, kind, command.device_uid, detection_id or "-"
    )
    return command


def commands_flush(timeout: float = 5.0) -> int:
    """Wait for the broker to acknowledge the commands sent with ``wait=False``; returns how many it did not."""
    return publisher.flush(timeout)


def door_command_send(door_id: int, kind: p.CommandKind, *, reason: str, pulse_ms: int = 0) -> int:
    """Send ``kind`` to every enabled device at a door; returns how many devices got it."""
    devices = EdgeDevice.objects.filter(door_id=door_id).exclude(status=EdgeDevice.Status.DISABLED)
    sent = 0
    for device in devices:
        command_send(device, kind, reason=reason, pulse_ms=pulse_ms)
        sent += 1
    return sent


class MqttDoorCommands:
    """The devices app's :class:`accessctl.door_commands.DoorCommands`: signed commands over MQTT."""

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
        command_send(device_uid, kind, reason=reason, pulse_ms=pulse_ms, detection_id=detection_id, wait=wait)

    def door_command(self, door_id: int, kind: p.CommandKind, *, reason: str, pulse_ms: int = 0) -> int:
        return door_command_send(door_id, kind, reason=reason, pulse_ms=pulse_ms)

    def flush(self, timeout: float = 5.0) -> int:
        return commands_flush(timeout)
