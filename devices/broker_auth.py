"""The MQTT broker's identities, kept by the server as Mosquitto password and ACL files.

Who may connect and what they may do (formats and the broker side: ``accessctl.project.mqtt_identities``):

* the server (bridge, command publisher): ``settings.MQTT_USERNAME`` / ``MQTT_PASSWORD``, client ids
  starting with ``accessctl-``; reads ``+/detections``, ``+/heartbeat``, ``+/status``, writes
  ``+/commands``, reads and writes ``acs/v1/bridge/#``;
* each enabled device: username = uid, password issued by ``provision_device`` (and on rotation),
  only its hash kept here; client id = uid; writes its own detections/heartbeat/status, reads its own
  commands.

:func:`broker_identities_sync` writes the files (0600, atomically, only when their content
changes) into ``settings.MQTT_AUTH_DIR``; the embedded broker reloads them within a second and
disconnects revoked devices; a Mosquitto broker reloads them on SIGHUP, which :func:`broker_reload`
sends after each change when ``ACCESSCTL_MQTT_BROKER_PIDFILE`` names its pid file (a broker on this
host; deploy/topology.py sets it). It runs at ``up``, after a device is provisioned or rotated, and
when a device is disabled, re-enabled or deleted.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from django.conf import settings
from django.db import transaction

from accessctl.project import mqtt_identities as mi
from devices.models import EdgeDevice

logger = logging.getLogger(__name__)


def device_uid_check(uid: str) -> None:
    """Device uids are MQTT usernames and client ids: none may look like the server's."""
    if uid.startswith(mi.SERVER_CLIENT_ID_PREFIX) or uid == settings.MQTT_USERNAME:
        raise ValueError(f"device uid {uid!r} is reserved (uids must not start with {mi.SERVER_CLIENT_ID_PREFIX!r})")


def device_password_issue(device: EdgeDevice) -> str:
    """A new broker password for ``device`` (returned once; only its hash is kept). Caller saves."""
    password = mi.password_generate()
    device.mqtt_password_hash = mi.password_hash(password)
    return password


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    mi.secret_write(path, text)
    return True


def _server_hash(path: Path, username: str, password: str) -> str:
    """Keep the existing hash while it still matches (no needless rewrite and broker reload)."""
    try:
        current = mi.passwd_parse(path.read_text()).get(username)
    except OSError:
        current = None
    if current and mi.password_verify(password, current):
        return current
    return mi.password_hash(password)


def server_identity_write(*, auth_dir: Path | None = None) -> Path:
    """Write the server identity's password/ACL files (no database needed); returns the folder."""
    folder = _auth_dir(auth_dir)
    server_passwd = folder / mi.SERVER_FILES[0]
    server = {settings.MQTT_USERNAME: _server_hash(server_passwd, settings.MQTT_USERNAME, settings.MQTT_PASSWORD)}
    _write_if_changed(server_passwd, mi.passwd_render(server))
    _write_if_changed(folder / mi.SERVER_FILES[1], mi.server_acl(settings.MQTT_USERNAME))
    return folder


def broker_identities_sync(*, auth_dir: Path | None = None) -> Path:
    """Write the server's and every enabled device's password/ACL files; returns the folder."""
    folder = server_identity_write(auth_dir=auth_dir)
    devices = dict(
        EdgeDevice.objects.exclude(status=EdgeDevice.Status.DISABLED)
        .exclude(mqtt_password_hash="")
        .values_list("uid", "mqtt_password_hash")
    )
    changed = _write_if_changed(folder / mi.DEVICE_FILES[0], mi.passwd_render(devices))
    changed |= _write_if_changed(folder / mi.DEVICE_FILES[1], mi.device_acl())
    if changed:
        logger.info("broker identities in %s: %d device(s) may connect", folder, len(devices))
        broker_reload()
    return folder


def broker_reload() -> bool:
    """SIGHUP the Mosquitto of ``settings.MQTT_BROKER_PIDFILE`` (if set) so it re-reads the files.

    Never raises: a broker that is down reads the files when it starts. True when signalled."""
    pidfile = settings.MQTT_BROKER_PIDFILE
    if not pidfile:
        return False
    try:
        pid = int(Path(pidfile).read_text().strip())
        if pid <= 1:  # 0 and -1 would signal whole groups; 1 is init
            raise ValueError(f"pid {pid}")
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        logger.info("the MQTT broker is not running (no %s); it reads the identity files when it starts", pidfile)
        return False
    except (OSError, ValueError) as exc:
        logger.warning("could not ask the MQTT broker (pid file %s) to reload its identities: %s", pidfile, exc)
        return False
    logger.info("asked the MQTT broker (pid %d) to reload its identities", pid)
    return True


def _auth_dir(auth_dir: Path | None) -> Path:
    folder = auth_dir or Path(settings.MQTT_AUTH_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def broker_identities_sync_on_commit() -> None:
    transaction.on_commit(broker_identities_sync)


def device_changed(
    sender: type, instance: EdgeDevice, *, update_fields: frozenset[str] | None = None, **_: object
) -> None:
    """post_save / post_delete of a device: refresh the broker's files once the change is committed
    (admin disable/enable/delete included); health updates (last_seen, status online) do not."""
    if update_fields is not None and not {"uid", "status", "mqtt_password_hash"} & set(update_fields):
        return
    broker_identities_sync_on_commit()
