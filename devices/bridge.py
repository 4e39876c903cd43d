"""The MQTT bridge: device messages in, verified and handed to ``devices.ingest``; it never decides.

Persistent session (fixed client id, clean_session False) and QoS1 subscriptions, so detections
published while the bridge is down are delivered when it returns. With ``MQTT_SHARED_GROUP`` set,
subscriptions use ``$share/<group>/...`` so several bridges split the load (Mosquitto, EMQX); a
bridge of the group that dies for good has its session drained by a live one (devices.bridge_takeover).

Detections are verified and staged by a small thread pool (``MQTT_BRIDGE_WORKERS``): each one
waits on the database a few times, so one thread would cap the whole site at what one
connection's round trips allow. Each message is acknowledged when the handler says it is safe
(for a detection: once its decision task is out), in any order. Heartbeats, status and door
events stay on the network thread, in arrival order (a door's exit request before its opening).

Liveness: a connection can stay up while the broker no longer delivers to it (the embedded
amqtt broker shares one session object per client id: when a client that took the bridge's
client id over leaves, the broker marks the *session* disconnected although the bridge is
connected again, and queues everything for it from then on). So the bridge watches what it
hears: when nothing arrived for ``MQTT_BRIDGE_PROBE_INTERVAL_S`` it publishes a tiny probe on
its own topic (``acs/v1/bridge/<client id>/probe``, subscribed with the device topics); when
nothing at all, not even the probe, came back for ``MQTT_BRIDGE_DEAF_AFTER_S`` it raises a
``bridge_deaf`` alarm and reconnects, which subscribes again (and makes the broker deliver what
it queued meanwhile). A reconnect that finds no session present where one was expected is logged:
the broker lost what was queued (devices re-send unanswered detections).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import paho.mqtt.client as mqtt
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from accessctl.alarms import alarm_raise
from accessctl.heartbeats import heartbeat_forget, heartbeat_write
from accessctl.metrics import BRIDGE_LAG
from accessctl.models import Alarm
from devices.mqtt import client_create
from faceengine import protocol as p

logger = logging.getLogger(__name__)

SUBSCRIPTIONS = tuple(
    p.subscription_filter(kind)
    for kind in (p.TopicKind.DETECTIONS, p.TopicKind.HEARTBEAT, p.TopicKind.STATUS, p.TopicKind.DOOR)
)

#: ``handler(topic, payload, ack)``: handles one message and calls ``ack`` once the message may be
#: acknowledged to the broker: before it returns, or later from another thread (the decision
#: batcher acknowledges a detection once its task is out). ``ack`` is idempotent.
Handler = Callable[[str, bytes, Callable[[], None]], None]
#: drains the sessions of the shared group's dead bridges (devices.bridge_takeover.takeover_orphans),
#: given by the process that runs the bridge: this module does not import the takeover, which uses it
Takeover = Callable[..., object]

#: The bridges' heartbeats (accessctl.heartbeats): one per client id.
HEARTBEAT_KIND = "bridge"

#: Topics of the bridges themselves (the server's MQTT identity may publish and subscribe here).
BRIDGE_TOPIC_ROOT = "acs/v1/bridge"


def probe_topic(client_id: str) -> str:
    """The topic a bridge probes itself on: one per client id (never shared between bridges)."""
    return f"{BRIDGE_TOPIC_ROOT}/{re.sub(r'[^A-Za-z0-9._-]', '_', client_id)[:128]}/probe"


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
        probe_interval_s: float | None = None,
        deaf_after_s: float | None = None,
        takeover: Takeover | None = None,
    ) -> None:
        self.handler = handler
        self.takeover = takeover
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
        self.client.on_subscribe = self._on_subscribe
        self.connected = threading.Event()
        self._stop = threading.Event()
        # Liveness (see the module docstring): monotonic times of the last delivery and probe.
        self.probe_interval_s = probe_interval_s or settings.MQTT_BRIDGE_PROBE_INTERVAL_S
        self.deaf_after_s = max(deaf_after_s or settings.MQTT_BRIDGE_DEAF_AFTER_S, self.probe_interval_s)
        self.probe_topic = probe_topic(self.client_id)
        self.recoveries = 0  # deafness detected and recovered from
        self.connects = 0  # successful connections (diagnostics, tests)
        self._heard_at = time.monotonic()
        self._probed_at = 0.0
        self._delivering = 0  # > 0 while the network thread is inside on_message (not the broker's silence)
        self._pending = 0  # detections handed to the staging threads and not yet handled
        self._pending_lock = threading.Lock()
        self._takeover_at = time.monotonic()  # the last look for dead bridges of the group (bridge_takeover)
        self.drains: dict[str, threading.Thread] = {}  # dead bridges' sessions being drained, by client id
        self._had_session = False
        self._reconnect_reason: str | None = None
        self._beat: tuple[float, bool] = (-float("inf"), False)  # last heartbeat written: when, connected

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            logger.error("bridge connect to %s:%s refused: %s", self.address.host, self.address.port, reason)
            return
        session_present = bool(getattr(flags, "session_present", False))
        if self._had_session and not session_present:
            logger.warning(
                "bridge %s: the broker kept no session for it; messages queued while it was away are lost "
                "(devices send unanswered detections again)",
                self.client_id,
            )
        topics = [*subscription_topics(self.shared_group), self.probe_topic]
        self._heard_at = time.monotonic()  # the deafness clock starts with each connection
        client.subscribe([(topic, 1) for topic in topics])
        self._had_session = True
        self.connects += 1
        self.connected.set()
        logger.info(
            "bridge connected to %s:%s as %s (session present: %s), subscribed to %s",
            self.address.host,
            self.address.port,
            self.client_id,
            session_present,
            ", ".join(topics),
        )

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object) -> None:
        refused = [str(code) for code in reasons if getattr(code, "is_failure", False)]  # type: ignore[attr-defined]
        if refused:
            logger.error("bridge %s: the broker refused subscriptions: %s", self.client_id, ", ".join(refused))
            self._reconnect_reason = "subscription refused"

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            logger.warning("bridge disconnected (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self._heard_at = time.monotonic()
        self._delivering += 1
        try:
            self._dispatch(client, message)
        finally:
            self._delivering -= 1
            self._heard_at = time.monotonic()

    def _dispatch(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.probe_topic:
            client.ack(message.mid, message.qos)
            return
        if not message.topic.endswith(f"/{p.TopicKind.DETECTIONS}"):
            self._handle(client, message)
            return
        received = time.perf_counter()
        self._slots.acquire()
        with self._pending_lock:
            self._pending += 1
        try:
            self._pool.submit(self._handle_released, client, message, received)
        except RuntimeError:  # pool shut down: stopping; the broker redelivers it
            self._released()

    def _released(self) -> None:
        with self._pending_lock:
            self._pending -= 1
        self._slots.release()

    def _handle_released(self, client: mqtt.Client, message: mqtt.MQTTMessage, received: float) -> None:
        BRIDGE_LAG.labels("wait").observe(time.perf_counter() - received)  # for a free staging thread
        try:
            self._handle(client, message)
        finally:
            self._released()

    @property
    def pending(self) -> int:
        """Detections received and not yet handled (being verified and staged)."""
        return self._pending

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
                    # Reconnect (from the watching thread): the broker redelivers the unacknowledged message.
                    self._reconnect_reason = "database unavailable"
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
        tick = min(1.0, self.probe_interval_s / 4)
        try:
            while not self._stop.wait(tick):
                try:
                    self.watch()
                except Exception:
                    logger.exception("bridge watch failed")
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self._pool.shutdown(wait=True, cancel_futures=True)
            try:
                heartbeat_forget(kind=HEARTBEAT_KIND, name=self.client_id)
            except Exception:
                logger.warning("could not remove the heartbeat of bridge %s", self.client_id, exc_info=True)

    def watch(self) -> None:
        """One look at the link (``run_forever`` calls it a few times a second): reconnect when asked
        to, probe when nothing arrived for a while, recover when not even the probe came back."""
        self.heartbeat()
        self.takeover_check()
        reason, self._reconnect_reason = self._reconnect_reason, None
        if reason is not None:
            self._reconnect(reason)
            return
        if not self.connected.is_set() or self._delivering:
            return  # paho reconnects by itself; a busy network thread is not a silent broker
        now = time.monotonic()
        silent = now - self._heard_at
        if silent >= self.deaf_after_s:
            self._deaf(silent)
        elif silent >= self.probe_interval_s and now - self._probed_at >= self.probe_interval_s:
            self._probed_at = now
            body = json.dumps({"t": round(time.time(), 3)}, separators=(",", ":")).encode()
            self.client.publish(self.probe_topic, body, qos=1)

    def heartbeat(self) -> None:
        """Every ``PROCESS_HEARTBEAT_S`` and when the connection comes or goes, tell ``/readyz`` and
        the metrics (:mod:`accessctl.heartbeats`, kind ``bridge``) whether this bridge is connected
        and how long it heard nothing. Never raises: the watch goes on without the cache server."""
        now = time.monotonic()
        connected = self.connected.is_set()
        if now - self._beat[0] < settings.PROCESS_HEARTBEAT_S and connected == self._beat[1]:
            return
        self._beat = (now, connected)
        data = {
            "connected": connected,
            "silent_s": round(0.0 if self._delivering else now - self._heard_at, 3),
            "deaf_after_s": self.deaf_after_s,
            "connects": self.connects,
            "recoveries": self.recoveries,
            "group": self.shared_group or "",
        }
        try:
            heartbeat_write(kind=HEARTBEAT_KIND, name=self.client_id, data=data)
        except Exception:
            logger.warning("bridge %s could not write its heartbeat", self.client_id, exc_info=True)

    def takeover_check(self) -> None:
        """Every few seconds, on a shared subscription: drain the sessions of the group's dead bridges
        (``takeover``: devices.bridge_takeover.takeover_orphans in ``manage.py mqtt_bridge``). Never raises."""
        after = settings.MQTT_BRIDGE_TAKEOVER_AFTER_S
        now = time.monotonic()
        if (
            self.takeover is None
            or not self.shared_group
            or after <= 0
            or now - self._takeover_at < min(5.0, after / 2)
        ):
            return
        self._takeover_at = now
        try:
            self.takeover(self, stale_after_s=after)
        except Exception:
            logger.warning("bridge %s could not look for dead bridges of its group", self.client_id, exc_info=True)

    def _deaf(self, silent: float) -> None:
        self.recoveries += 1
        logger.error(
            "bridge %s heard nothing for %.1f s, not even its own probe on %s: the broker no longer delivers "
            "its subscriptions; raising an alarm and reconnecting (recovery %d)",
            self.client_id, silent, self.probe_topic, self.recoveries,
        )  # fmt: skip
        self._reconnect("no delivery")
        try:
            close_old_connections()
            alarm_raise(
                kind=Alarm.Kind.BRIDGE_DEAF,
                details={
                    "client_id": self.client_id,
                    "broker": f"{self.address.host}:{self.address.port}",
                    "silent_s": round(silent, 1),
                },
            )
        except Exception:  # the database may be down too; the reconnect above does not wait for it
            logger.exception("could not raise the bridge_deaf alarm")

    def _reconnect(self, reason: str) -> None:
        """Drop the connection and connect again (subscribing again on connect); never on the network thread."""
        logger.warning("bridge %s reconnecting: %s", self.client_id, reason)
        self.connected.clear()
        self.client.disconnect()
        self.client.loop_stop()
        if self._stop.is_set():
            return
        self._heard_at = time.monotonic()
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self._stop.set()
