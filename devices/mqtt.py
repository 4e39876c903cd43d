"""MQTT connection settings shared by the bridge and the command publisher (paho-mqtt 2.x)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from django.conf import settings


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None


def broker_address(url: str | None = None) -> BrokerAddress:
    """Parse ``mqtt://`` / ``mqtts://`` URLs (credentials allowed) into a BrokerAddress."""
    parsed = urlparse(url or settings.MQTT_URL)
    if parsed.scheme not in {"mqtt", "mqtts", "tcp", "ssl"}:
        raise ValueError(f"MQTT_URL must start with mqtt:// or mqtts://, got {parsed.scheme!r}")
    tls = parsed.scheme in {"mqtts", "ssl"}
    return BrokerAddress(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or (8883 if tls else 1883),
        tls=tls,
        username=parsed.username,
        password=parsed.password,
    )


def client_create(
    client_id: str, *, clean_session: bool = False, url: str | None = None, manual_ack: bool = False
) -> tuple[mqtt.Client, BrokerAddress]:
    """A paho client of the server identity (credentials of ``url``, else ``MQTT_USERNAME``/``MQTT_PASSWORD``;
    TLS applied). Server client ids start with ``accessctl-`` (the broker refuses others)."""
    address = broker_address(url)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if address.username:
        client.username_pw_set(address.username, address.password)
    else:
        client.username_pw_set(settings.MQTT_USERNAME, settings.MQTT_PASSWORD)
    if address.tls:
        client.tls_set(
            ca_certs=settings.MQTT_CA_FILE,
            certfile=settings.MQTT_CERT_FILE,
            keyfile=settings.MQTT_KEY_FILE,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=max(1, settings.MQTT_RECONNECT_MAX_S))
    return client, address
