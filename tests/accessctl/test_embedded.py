"""The embedded services behave like the real ones where durability depends on it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from accessctl import embedded


def _client(port: int, client_id: str, clean: bool, received: list[bytes] | None = None) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    if received is not None:
        client.on_message = lambda c, u, message: received.append(message.payload)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_broker_keeps_a_persistent_session_across_disconnects(tmp_path: Path) -> None:
    """What the bridge relies on: QoS1 messages published while it was away are delivered on return."""
    broker = embedded.start_mqtt_broker(tmp_path)
    try:
        subscriber = _client(broker.port, "bridge-under-test", clean=False)
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *args: subscribed.set()
        subscriber.subscribe("acs/v1/devices/+/detections", qos=1)
        assert subscribed.wait(5)
        subscriber.disconnect()
        subscriber.loop_stop()

        device = _client(broker.port, "device-1", clean=True)
        for i in range(3):
            device.publish("acs/v1/devices/d1/detections", f"m{i}".encode(), qos=1).wait_for_publish(5)
        device.disconnect()

        received: list[bytes] = []
        returning = _client(broker.port, "bridge-under-test", clean=False, received=received)
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        returning.disconnect()
        assert received == [b"m0", b"m1", b"m2"]
    finally:
        broker.stop()
