"""The MQTT bridge: device messages in, verified and handed to ``devices.ingest``; it never decides.

Persistent session (fixed client id, clean_session False) and QoS1 subscriptions, so detections
published while the bridge is down are delivered when it returns. With ``MQTT_SHARED_GROUP`` set,
subscriptions use ``$share/<group>/...`` so several bridges split the load (Mosquitto, EMQX).

Detections are verified and staged by a small thread pool (``MQTT_BRIDGE_WORKERS``): each one
waits on the database a few times, so one thread would cap the whole site at what one
connection's round trips allow. Each message is acknowledged when the handler says it is safe
(for a detection: once its decision task is out), in any order. Heartbeats and status
messages stay on the network thread, in arrival order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from devices.mqtt import client_create

logger = logging.getLogger(__name__)

SUBSCRIPTIONS = ("acs/v1/devices/+/detections", "acs/v1/devices/+/heartbeat", "acs/v1/devices/+/status")

#: ``handler(topic, payload, ack)``: handles one message and calls ``ack`` once the message may be
#: acknowledged to the broker: before it returns, or later from another thread (the decision
#: batcher acknowledges a detection once its task is out). ``ack`` is idempotent.
Handler = Callable[[str, bytes, Callable[[], None]], None]


class _Once:
    """A callable that runs ``action`` the first time it is called, from any thread."""

    def __init__(self, action: Callable[[], None]) -> None:
        self._action: Callable[[], None] | None = action
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            action, self._action = self._action, None
        if action is not None:
            action()


def subscription_topics(shared_group: str | None) -> list[str]:
    if shared_group:
        return [f"$share/{shared_group}/{topic}" for topic in SUBSCRIPTIONS]
    return list(SUBSCRIPTIONS)


class Bridge:
    """Owns one paho client; ``run_forever`` blocks until ``stop`` is called."""

    def __init__(
        self,
        handler: Handler,
        *,
        client_id: str | None = None,
        shared_group: str | None = None,
        retry_for_s: float = 20.0,
        workers: int | None = None,
    ) -> None:
        self.handler = handler
        self.workers = max(1, workers if workers is not None else settings.MQTT_BRIDGE_WORKERS)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bridge-ingest")
        self._slots = threading.BoundedSemaphore(self.workers * 4)  # backpressure on the network thread
        self.client_id = client_id or settings.MQTT_CLIENT_ID
        self.shared_group = shared_group if shared_group is not None else settings.MQTT_SHARED_GROUP
        self.retry_for_s = retry_for_s
        self.client, self.address = client_create(self.client_id, clean_session=False, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self._stop = threading.Event()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("bridge connect to %s:%s refused: %s", self.address.host, self.address.port, reason)
            return
        topics = subscription_topics(self.shared_group)
        client.subscribe([(topic, 1) for topic in topics])
        self.connected.set()
        logger.info(
            "bridge connected to %s:%s as %s, subscribed to %s",
            self.address.host,
            self.address.port,
            self.client_id,
            ", ".join(topics),
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            logger.warning("bridge disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if not message.topic.endswith("/detections"):
            self._handle(client, message)
            return
        self._slots.acquire()
        try:
            self._pool.submit(self._handle_released, client, message)
        except RuntimeError:  # pool shut down: stopping; the broker redelivers it
            self._slots.release()

    def _handle_released(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        try:
            self._handle(client, message)
        finally:
            self._slots.release()

    def _handle(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        """Handle; the handler acknowledges (see :data:`Handler`). While the database is unreachable
        the message is retried here and, if that fails for too long, left unacknowledged: the
        broker redelivers it after we reconnect (persistent session), so nothing is lost."""
        delay = 0.5
        deadline = time.monotonic() + self.retry_for_s
        ack = _Once(lambda: client.ack(message.mid, message.qos))
        while True:
            close_old_connections()
            try:
                self.handler(message.topic, message.payload, ack)
            except (OperationalError, InterfaceError) as exc:
                if self._stop.is_set() or time.monotonic() > deadline:
                    logger.error("database unavailable (%s); leaving message on %s for redelivery", exc, message.topic)
                    client.disconnect()  # reconnects; the broker redelivers the unacknowledged message
                    return
                logger.warning("database unavailable (%s); retrying message on %s in %.1fs", exc, message.topic, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception:
                # The handler records its own rejections; anything reaching here is a bug we log and survive.
                logger.exception("bridge handler failed for topic %s", message.topic)
                ack()
            return

    def run_forever(self) -> None:
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        try:
            self._stop.wait()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def stop(self) -> None:
        self._stop.set()
