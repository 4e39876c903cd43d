"""The server's MQTT client (devices.mqtt): how it comes back after the broker went away."""

from __future__ import annotations

import pytest

from devices.mqtt import client_create
from edge_agent.config import MqttSection


def test_reconnect_wait_stays_well_inside_a_devices_resend_window() -> None:
    client, _ = client_create("accessctl-test-reconnect")
    # A broker restart must not keep the bridge away longer than a device keeps re-sending a
    # detection: those sent while it waited would be given up or denied as stale.
    assert client._reconnect_max_delay <= MqttSection().resend_window_s / 3


@pytest.mark.parametrize(("configured", "used"), [(10, 10), (0, 1)])
def test_reconnect_wait_follows_the_setting(settings: pytest.FixtureRequest, configured: int, used: int) -> None:
    settings.MQTT_RECONNECT_MAX_S = configured
    client, _ = client_create("accessctl-test-reconnect")
    assert client._reconnect_max_delay == used
