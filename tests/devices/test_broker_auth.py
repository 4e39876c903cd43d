"""Broker identities follow the device registry: provisioning, rotation, disabling, deleting."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from django.core.management import call_command

from accessctl.models import Door
from accessctl.project import mqtt_identities as mi
from devices.broker_auth import broker_identities_sync
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from tests.devices import e2e
from tests.devices.test_broker_identities import connect, refused


def _files(settings: object) -> tuple[dict[str, str], str]:
    folder = Path(settings.MQTT_AUTH_DIR)  # type: ignore[attr-defined]
    return mi.passwd_parse((folder / "devices.passwd").read_text()), (folder / "devices.passwd").read_text()


@pytest.mark.django_db
def test_provision_out_writes_secrets_0600_even_over_existing_files(tmp_path: Path, settings) -> None:
    """Issue 15 item 6: an existing device.key (0644) kept its mode; agent.toml now holds a password."""
    settings.MQTT_URL = "mqtt://accessctl-server:server-secret@broker.example:1883"
    for name in ("device.key", "agent.toml"):
        (tmp_path / name).write_text("old")
        (tmp_path / name).chmod(0o644)
    Door.objects.create(name="Garage")
    call_command("provision_device", "garage-1", "--door", "Garage", "--out", str(tmp_path))
    for name in ("device.key", "agent.toml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    config = tomllib.loads((tmp_path / "agent.toml").read_text())
    assert config["mqtt"]["url"] == "mqtt://broker.example:1883"  # never the server's own login
    assert config["mqtt"]["username"] == "garage-1"
    password = config["mqtt"]["password"]
    stored = EdgeDevice.objects.get(uid="garage-1").mqtt_password_hash
    assert stored.startswith("$7$") and password not in stored and mi.password_verify(password, stored)


@pytest.mark.django_db
def test_provisioned_config_names_the_actual_broker_port_and_a_camera_section(tmp_path: Path, settings) -> None:
    """Issue 16 item 5: the agent.toml of ``provision_device`` reaches the server's own broker (the
    embedded one listens on ACCESSCTL_MQTT_PORT, not 1883) and shows where to set the camera."""
    import re

    from edge_agent.config import load_config
    from faceengine.protocol import MIN_FACE_PX

    Door.objects.create(name="Lobby")
    call_command("provision_device", "lobby-1", "--door", "Lobby", "--out", str(tmp_path / "a"))
    text = (tmp_path / "a" / "agent.toml").read_text()
    url = tomllib.loads(text)["mqtt"]["url"]
    assert url == settings.MQTT_URL and not url.endswith(":1883")  # the broker these tests run on
    assert "on another machine, use the server's address" in text  # 127.0.0.1 is only right locally
    assert "camera" not in tomllib.loads(text)  # commented out: the agent's defaults apply as they are
    assert "# [camera]" in text and f"# min_face_px = {MIN_FACE_PX} " in text
    # Uncommented, the section is a valid agent config (the installer's next step).
    folder = tmp_path / "photos"
    uncommented = re.sub(r"^# (\[camera\]|\[detection\]|\w+ = )", r"\1", text, flags=re.MULTILINE)
    uncommented = uncommented.replace('source = "0"', f'source = "{folder}"')
    (tmp_path / "a" / "agent.toml").write_text(uncommented)
    config = load_config(tmp_path / "a" / "agent.toml", environ={})
    assert config.camera.source == str(folder) and config.detection.min_face_px == MIN_FACE_PX
    assert config.mqtt.url == url and config.mqtt.username == "lobby-1"

    # A broker URL without a port gets the scheme's port written out, never left to a guess.
    settings.MQTT_URL = "mqtts://broker.example"
    call_command("provision_device", "lobby-2", "--out", str(tmp_path / "b"))
    assert tomllib.loads((tmp_path / "b" / "agent.toml").read_text())["mqtt"]["url"] == "mqtts://broker.example:8883"


@pytest.mark.django_db
def test_reserved_uids_cannot_be_provisioned() -> None:
    for uid in ("accessctl-bridge", "accessctl-server"):
        with pytest.raises(ValueError, match="reserved"):
            device_provision(uid=uid)


@pytest.mark.django_db(transaction=True)
def test_broker_login_follows_provision_rotate_disable_delete(settings) -> None:
    """Only the hash is kept; the broker files (0600) change on each step, and the broker follows."""
    port = e2e.mqtt_address()[1]
    first = device_provision(uid="gate-7")
    hashes, text = _files(settings)
    assert first.mqtt_password not in text and mi.password_verify(first.mqtt_password, hashes["gate-7"])
    folder = Path(settings.MQTT_AUTH_DIR)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert all((folder / name).stat().st_mode & 0o777 == 0o600 for name in (*mi.SERVER_FILES, *mi.DEVICE_FILES))

    live = connect(port, "gate-7", ("gate-7", first.mqtt_password))
    assert live.refused is None
    rotated = device_provision(uid="gate-7", rotate=True)
    assert live.wait_for(lambda: live.disconnects >= 1), "the old login stays connected after a rotation"
    live.close()
    assert refused(port, "gate-7", ("gate-7", first.mqtt_password))

    live = connect(port, "gate-7", ("gate-7", rotated.mqtt_password))
    assert live.refused is None
    device = EdgeDevice.objects.get(uid="gate-7")
    device.status = EdgeDevice.Status.DISABLED
    device.save()  # as the admin does
    assert live.wait_for(lambda: live.disconnects >= 1), "a disabled device stays connected"
    live.close()
    assert refused(port, "gate-7", ("gate-7", rotated.mqtt_password))

    device.status = EdgeDevice.Status.PROVISIONED
    device.save()
    assert not refused(port, "gate-7", ("gate-7", rotated.mqtt_password))
    device.delete()
    assert "gate-7" not in _files(settings)[0]
    assert refused(port, "gate-7", ("gate-7", rotated.mqtt_password))


@pytest.mark.django_db
def test_heartbeat_saves_do_not_rewrite_the_files(settings) -> None:
    device = device_provision(uid="gate-8").device
    broker_identities_sync()
    before = (Path(settings.MQTT_AUTH_DIR) / "devices.passwd").stat().st_ino
    broker_identities_sync()  # unchanged content: no rewrite, no broker reload
    device.save(update_fields=["last_seen"])
    assert (Path(settings.MQTT_AUTH_DIR) / "devices.passwd").stat().st_ino == before


@pytest.mark.django_db
def test_mqtt_identities_command_writes_a_mosquitto_config(tmp_path: Path, settings) -> None:
    call_command("mqtt_identities", "--mosquitto-conf", str(tmp_path / "mosquitto.conf"), "--device-port", "8884")
    conf = (tmp_path / "mosquitto.conf").read_text()
    folder = Path(settings.MQTT_AUTH_DIR)
    assert f"password_file {folder / 'devices.passwd'}" in conf and "use_username_as_clientid true" in conf
    assert "listener 8884\n" in conf and "allow_anonymous false" in conf
    assert (folder / "server.passwd").read_text().startswith(f"{settings.MQTT_USERNAME}:$7$")
