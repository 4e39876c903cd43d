"""Provisioning: create a device with a fresh Ed25519 key pair and broker password; render its agent config.

The private key and the broker password are generated here, handed to the installer once (write
them with :func:`secret_file_write`, 0600), and never stored on the server (the password only as a
hash, see ``devices.broker_auth``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import transaction

from accessctl.models import Door
from accessctl.project.mqtt_identities import secret_write
from devices.broker_auth import broker_identities_sync_on_commit, device_password_issue, device_uid_check
from devices.commands import server_public_key_b64
from devices.models import EdgeDevice
from faceengine import protocol as p

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Provisioned:
    device: EdgeDevice
    private_key_pem: str
    server_public_key: str
    mqtt_password: str


def device_provision(*, uid: str, door: Door | None = None, name: str = "", rotate: bool = False) -> Provisioned:
    """Create device ``uid`` (or, with ``rotate``, give an existing one a new key and broker password)."""
    p.validate_device_uid(uid)
    device_uid_check(uid)
    private_pem, public_b64 = p.generate_keypair()
    with transaction.atomic():
        device = EdgeDevice.objects.select_for_update().filter(uid=uid).first()
        if device is not None and not rotate:
            raise ValueError(f"device {uid!r} exists; use rotate to issue a new key")
        if device is None:
            device = EdgeDevice(uid=uid)
        device.public_key = public_b64
        mqtt_password = device_password_issue(device)
        device.name = name or device.name
        device.door = door if door is not None else device.door
        device.save()
        broker_identities_sync_on_commit()
    logger.info(
        "provisioned device %s (door %s)%s", uid, device.door_id or "-", " with a rotated key" if rotate else ""
    )
    return Provisioned(
        device=device,
        private_key_pem=private_pem,
        server_public_key=server_public_key_b64(),
        mqtt_password=mqtt_password,
    )


def secret_file_write(path: Path, text: str) -> None:
    """Write a device secret (key, agent config with its broker password): mode 0600, also over an
    existing file of another mode."""
    secret_write(path, text)


def _without_credentials(url: str) -> str:
    """The broker URL for a device: never the server's own credentials; always with its port
    (the embedded broker's is not MQTT's usual 1883, see ``ACCESSCTL_MQTT_PORT``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port or (8883 if parts.scheme == 'mqtts' else 1883)}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: Appended to every generated agent config: where the frames come from, and the face filters.
_CAMERA_SECTION = f"""
# Where the frames come from (the default is the first local camera, "0"). Uncomment and edit:
# [camera]
# source = "0"          # 0, /dev/video0, rtsp://..., http(s)://... (MJPEG), a video file or a folder of images
# max_fps = 10.0
# folder_repeat = 1     # a folder of images: frames each image is shown (a visitor standing there)
# folder_loop = false   # a folder of images: start again at the end instead of stopping
#
# [detection]
# min_face_px = {p.MIN_FACE_PX}      # smaller faces are not sent (the server denies them as low_quality)
# min_detector_score = 0.9
"""


def agent_config(provisioned: Provisioned, *, key_path: str, mqtt_url: str | None = None) -> str:
    """The agent's TOML config for this device (see edge_agent/config.example.toml): it holds the
    device's broker password, so write it with :func:`secret_file_write`."""
    device = provisioned.device
    door = device.door
    fail_mode = door.fail_mode if door else "secure"  # secure, safe or allowlist (devices.allowlist)
    pulse_ms = min(max(door.relay_pulse_ms, 1), 60_000) if door else 3000  # the agent's accepted range
    url = _without_credentials(mqtt_url or settings.MQTT_URL)
    loopback = urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
    return (
        f"# accessctl edge agent config for device {device.uid}\n"
        "[device]\n"
        f'uid = "{device.uid}"\n'
        f'private_key_path = "{key_path}"\n'
        f'server_public_key = "{provisioned.server_public_key}"\n\n'
        "[mqtt]\n"
        + (
            "# the server's broker as seen from this machine: on another machine, use the server's address\n"
            if loopback
            else ""
        )
        + f'url = "{url}"\n'
        f'username = "{device.uid}"\n'
        f'password = "{provisioned.mqtt_password}"\n\n'
        "[door]\n"
        f'fail_mode = "{fail_mode}"\n'
        f"pulse_ms = {pulse_ms}  # the relay pulse when the door opens alone\n"
        f"{_CAMERA_SECTION}"
    )
