"""MQTT broker logins for tests and benches (no Django): the broker admits nobody anonymous.

* The *observer* is a test-only identity (``extra.passwd``/``extra.acl``, read by a broker started
  with ``extra_identities_dir``; ``up`` never enables it): it may read and write every
  ``acs/v1/...`` topic, so a test can listen to all commands or play devices that do not exist.
  Its client ids may be anything but a device's uid or a server id (``accessctl-...``).
* :func:`standalone_identities_write` fills the auth folder of a broker that has no server behind
  it (edge agent tests, benches): a server login and the given devices.
"""

from __future__ import annotations

import os
from pathlib import Path

import paho.mqtt.client as mqtt

from accessctl.project import mqtt_identities as mi
from accessctl.project.embedded import ChildService, start_mqtt_broker

OBSERVER_ENV = "ACCESSCTL_TEST_MQTT_OBSERVER"  # "<username>:<password>", set by tests/conftest.py
OBSERVER_USERNAME = "test-observer"
SERVER_LOGIN = ("accessctl-server", "test-server-password")


def observer_identity_write(
    folder: Path, *, username: str = OBSERVER_USERNAME, password: str | None = None
) -> tuple[str, str]:
    """Create the observer identity in ``folder`` (a broker's ``extra_identities_dir``)."""
    password = password or mi.password_generate()
    mi.secret_write(folder / "extra.passwd", mi.passwd_render({username: mi.password_hash(password)}))
    mi.secret_write(folder / "extra.acl", f"user {username}\ntopic readwrite acs/v1/#\n")
    return username, password


def observer_login() -> tuple[str, str]:
    username, _, password = os.environ[OBSERVER_ENV].partition(":")
    return username, password


def observer_client(client_id: str, *, login: tuple[str, str] | None = None, **kwargs: object) -> mqtt.Client:
    """A paho client logged in as the observer (``clean_session`` etc. in ``kwargs``)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, **kwargs)  # type: ignore[arg-type]
    client.username_pw_set(*(login or observer_login()))
    return client


def device_client(uid: str, password: str, **kwargs: object) -> mqtt.Client:
    """A paho client logged in as device ``uid`` (its client id is its uid)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uid, **kwargs)  # type: ignore[arg-type]
    client.username_pw_set(uid, password)
    return client


def suite_broker_start(work: Path, *, port: int | None = None) -> ChildService:
    """Another embedded broker for this test session: same identity files as the session's broker
    (the server, provisioned devices, the observer), see tests/conftest.py."""
    var = Path(os.environ["ACCESSCTL_VAR_DIR"])
    return start_mqtt_broker(work, port=port, auth_dir=var / "mqtt-auth", extra_identities_dir=var / "mqtt-observer")


def device_login_issue(device: object) -> str:
    """Give a test's ``EdgeDevice`` a broker password and admit it now; returns the password.

    The broker re-reads its files on each login, so the device may connect right away (also from
    inside a test transaction: the files are written from this connection's view of the table).
    """
    from devices.broker_auth import broker_identities_sync, device_password_issue

    password = device_password_issue(device)  # type: ignore[arg-type]
    device.save(update_fields=["mqtt_password_hash"])  # type: ignore[attr-defined]
    broker_identities_sync()
    return password


def standalone_broker_start(
    work: Path, *, devices: dict[str, str], observer: tuple[str, str], port: int | None = None
) -> ChildService:
    """An embedded broker with no server behind it: ``devices``, the server login and the observer."""
    standalone_identities_write(work / "auth", devices=devices)
    observer_identity_write(work / "observer", username=observer[0], password=observer[1])
    return start_mqtt_broker(work / "broker", port=port, auth_dir=work / "auth", extra_identities_dir=work / "observer")


def standalone_identities_write(
    folder: Path, *, devices: dict[str, str], server: tuple[str, str] = SERVER_LOGIN
) -> None:
    """Password/ACL files for a broker without a server: ``server`` and ``devices`` (uid -> password)."""
    username, password = server
    mi.secret_write(folder / mi.SERVER_FILES[0], mi.passwd_render({username: mi.password_hash(password)}))
    mi.secret_write(folder / mi.SERVER_FILES[1], mi.server_acl(username))
    hashed = {uid: mi.password_hash(secret) for uid, secret in devices.items()}
    mi.secret_write(folder / mi.DEVICE_FILES[0], mi.passwd_render(hashed))
    mi.secret_write(folder / mi.DEVICE_FILES[1], mi.device_acl())
