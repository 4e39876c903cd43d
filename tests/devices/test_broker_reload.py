"""ACCESSCTL_MQTT_BROKER_PIDFILE: a Mosquitto on this host is told (SIGHUP) when the identity files change."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from accessctl.project import embedded
from accessctl.project import mqtt_identities as mi
from devices.broker_auth import broker_identities_sync, broker_reload
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from tests.devices.test_broker_identities import MOSQUITTO, connect


def _login_outcome(port: int, uid: str, password: str, *, admitted: bool, timeout: float = 10.0) -> bool:
    """Whether the broker comes to admit (or refuse) ``uid`` within ``timeout`` (it reloads asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        client = connect(port, uid, (uid, password))
        ok = (client.refused is None) == admitted
        client.close()
        if ok or time.monotonic() > deadline:
            return ok
        time.sleep(0.2)


@pytest.mark.django_db
def test_mosquitto_follows_provisioning_and_disabling_through_its_pid_file(tmp_path: Path, settings) -> None:
    if not Path(MOSQUITTO).exists():
        pytest.fail(f"{MOSQUITTO} is required for this test (apt-get install mosquitto)")
    settings.MQTT_AUTH_DIR = str(tmp_path / "auth")
    settings.MQTT_BROKER_PIDFILE = str(tmp_path / "mosquitto.pid")
    folder = broker_identities_sync()  # the server's files, no device yet (no broker to signal yet)
    device_port, server_port = embedded.free_port(), embedded.free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"user {os.getenv('USER') or 'root'}\npid_file {tmp_path / 'mosquitto.pid'}\npersistence false\n"
        f"log_dest file {tmp_path / 'm.log'}\n"
        + mi.mosquitto_conf(auth_dir=folder, device_port=device_port, server_port=server_port, server_host="127.0.0.1")
    )
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        embedded.wait_for_port("127.0.0.1", device_port)
        embedded.wait_for_port("127.0.0.1", server_port)
        provisioned = device_provision(uid="reload-1")
        broker_identities_sync()  # what the commit of the provisioning does in the running server
        assert _login_outcome(device_port, "reload-1", provisioned.mqtt_password, admitted=True), (
            "Mosquitto did not re-read the files after the provisioning"
        )
        device = EdgeDevice.objects.get(uid="reload-1")
        device.status = EdgeDevice.Status.DISABLED
        device.save()
        broker_identities_sync()
        assert _login_outcome(device_port, "reload-1", provisioned.mqtt_password, admitted=False), (
            "a disabled device still logs in"
        )
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_reload_never_raises(tmp_path: Path, settings) -> None:
    settings.MQTT_BROKER_PIDFILE = None
    assert broker_reload() is False  # not configured: nothing to do
    pidfile = tmp_path / "broker.pid"
    settings.MQTT_BROKER_PIDFILE = str(pidfile)
    assert broker_reload() is False  # no file (broker not started): it reads the files when it starts
    for junk in ("not a pid", "1", "-5", ""):
        pidfile.write_text(junk)
        assert broker_reload() is False  # never init, never a process group
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile.write_text(f"{dead.pid}\n")
    assert broker_reload() is False
