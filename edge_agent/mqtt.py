"""The device's MQTT link (paho-mqtt 2.x): spooled QoS1 publishing, signed status, verified commands.

* Persistent session: ``clean_session=False`` and the device uid as client id (AWS IoT Core
  requires client id == thing name), MQTT 3.1.1, TLS for ``mqtts://`` (CA + client certificate).
* Last will: plain ``offline``, retained, on the status topic; on connect a signed ``online``
  (retained) replaces it; a clean stop publishes a signed ``offline`` first.
* Reconnects with exponential backoff (``reconnect_min_s`` .. ``reconnect_max_s``), also when the
  broker is down at start.
* Detections go through the :class:`~edge_agent.spool.Spool`: a sender thread hands the oldest
  entries to paho (at most ``max_inflight`` unacknowledged) and takes each one out of the queue
  only on its PUBACK. While disconnected nothing is handed over; messages in flight at a
  disconnect are retransmitted by paho on reconnect, before anything newer, so order is kept
  (a crash between PUBACK and delete may send one twice: the server is idempotent on
  ``detection_id``).
* A PUBACK only means the broker took the message; a broker restart or a bridge crash can
  still lose it. So an acknowledged detection awaits its door command; unanswered after
  ``decision_timeout_s`` it is signed again with ``attempt`` + 1 and a new ``sent_at`` and
  re-queued (backing off, until ``resend_window_s``; ``offline_resend_window_s`` for one the
  door decided alone: it must reach the access log; the server answers it with a ``deny`` naming
  the recorded reason once it is recorded, never an ``open``). The server decides
  it once whatever happens: a re-send of a decided detection gets the same decision sent back,
  nothing recorded (a copy of an offline decision is ignored).
* Commands are verified with the server public key, checked against the device uid and the
  timestamp window, de-duplicated by ``command_id`` and, for answers to detections, by
  ``detection_id`` (a door acts on the first answer only), then handed to ``on_command`` with
  their signed bytes (the allow-list keeps those at rest and verifies them again at start). An
  answered detection never awaits again, also when the broker's acknowledgement of a re-sent
  copy is handled (by the sender thread) after the answer (:meth:`Spool.resolve`). The
  ids of applied commands are kept in the spool database, so a genuine ``open`` replayed after
  a restart (still inside the window) is not carried out again.
* Liveness of the commands subscription: a connection can stay up while the broker no longer
  delivers to it (on amqtt, after another client used this device's client id). While answers
  are overdue and none arrived for ``unanswered_reconnect_s`` on this connection, the link
  reconnects (subscribing again; the broker then delivers what it queued), backing off. The
  heartbeat reports overdue answers, so the server shows the device ``degraded`` meanwhile.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import MqttSection
from edge_agent.spool import CommandSeen, Spool
from faceengine.protocol import (
    OFFLINE_WILL,
    Command,
    Detection,
    DeviceState,
    ProtocolError,
    Status,
    TopicKind,
    commands_topic,
    open_message,
    payload_from_dict,
    seal,
    split_envelope,
    status_topic,
)

logger = logging.getLogger(__name__)


class EdgeLink:
    def __init__(
        self,
        settings: MqttSection,
        *,
        device_uid: str,
        private_key: Any,
        server_public_key: str,
        spool: Spool,
        agent_version: str = "",
        on_command: Callable[[Command, bytes], None] | None = None,
    ) -> None:
        self.settings = settings
        self.device_uid = device_uid
        self.private_key = private_key
        self.server_public_key = server_public_key
        self.spool = spool
        self.agent_version = agent_version or None
        self.on_command = on_command
        self.commands_rejected = 0
        self.foreign_ignored = 0
        self._commands_topic = commands_topic(device_uid)
        self.disconnected_since: float | None = time.monotonic()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> spool id
        self._last_handed = 0
        self.resent = 0
        self.passes = 0  # sender loop iterations completed (tests wait on it, not on a sleep)
        self.connects = 0  # successful connections (diagnostics, tests)
        self.reconnects = 0  # for missing answers (see _check_answers)
        self._answer_at = time.monotonic()  # last verified command, or the start of this connection
        self._reconnect_after = settings.unanswered_reconnect_s
        self._reconnecting = False
        self._lifecycle = threading.Lock()  # a reconnect and stop() never interleave
        self._sender = threading.Thread(target=self._send_loop, name="edge-mqtt-sender", daemon=True)
        self.client = self._build_client()

    # -- setup -----------------------------------------------------------------------------

    def _build_client(self) -> paho.Client:
        s = self.settings
        url = urlsplit(s.url)
        self.host = url.hostname or "127.0.0.1"
        tls = url.scheme == "mqtts"
        self.port = url.port or (8883 if tls else 1883)
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.device_uid,
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        if tls:
            client.tls_set(
                ca_certs=str(s.tls_ca) if s.tls_ca else None,
                certfile=str(s.tls_cert) if s.tls_cert else None,
                keyfile=str(s.tls_key) if s.tls_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if s.username or s.password:  # the broker login: username = device uid unless set otherwise
            client.username_pw_set(s.username or self.device_uid, s.password)
        client.will_set(status_topic(self.device_uid), OFFLINE_WILL, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, round(s.reconnect_min_s)), max_delay=round(s.reconnect_max_s))
        client.max_inflight_messages_set(max(20, s.max_inflight))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def start(self) -> None:
        """Connect in the background (retrying while the broker is down) and start sending."""
        logger.info("connecting to %s:%s as %s", self.host, self.port, self.device_uid)
        self.client.connect_async(self.host, self.port, keepalive=self.settings.keepalive_s)
        self.client.loop_start()
        self._sender.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish a signed ``offline``, disconnect cleanly (no last will) and stop the threads."""
        if self.connected:
            status = Status(device_uid=self.device_uid, state=DeviceState.OFFLINE, sent_at=time.time())
            info = self.client.publish(
                status_topic(self.device_uid), seal(status, self.private_key), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                logger.warning("could not publish offline status")
        with self._lifecycle:
            self._stop.set()
            self._wake.set()
            self.client.disconnect()
            self.client.loop_stop()
        if self._sender.is_alive():
            self._sender.join(timeout)

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until the broker acknowledged the commands subscription of the current connection."""
        return self._subscribed.wait(timeout)

    def offline_for(self) -> float:
        """Seconds since the link went down (0 while connected)."""
        since = self.disconnected_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def wait_drained(self, timeout: float) -> bool:
        """Block until the spool is empty and nothing is in flight (tests, simulate)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._inflight and len(self.spool) == 0:
                return True
            time.sleep(0.05)
        return False

    # -- publishing ------------------------------------------------------------------------

    def send(self, topic: str, raw: bytes, *, detection_id: str | None = None) -> int:
        """Queue a signed message durably (spool) for in-order QoS1 delivery; returns its spool id.

        With ``detection_id`` it is a detection: sent again until its answer arrives.
        """
        entry_id = self.spool.put(topic, raw, qos=1, detection_id=detection_id)
        self._wake.set()
        return entry_id

    def publish_now(self, topic: str, raw: bytes, *, retain: bool = False) -> bool:
        """Best-effort QoS1 publish, not spooled (heartbeats); False when disconnected."""
        if not self.connected:
            return False
        return self.client.publish(topic, raw, qos=1, retain=retain).rc == paho.MQTT_ERR_SUCCESS

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._reap_acks()
                if self.connected:
                    self._resend_unanswered()
                    self._hand_over()
                    self._check_answers()
            except Exception:
                logger.exception("sender loop error")
                time.sleep(0.5)
            self.passes += 1

    def _reap_acks(self) -> None:
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                return
            entry_id = self._inflight.get(mid)
            if entry_id is not None:  # recorded before it leaves the in-flight map (see wait_drained)
                self.spool.accepted(entry_id, answer_by=time.time() + self.settings.decision_timeout_s)
                self._inflight.pop(mid, None)

    def _resend_unanswered(self, now: float | None = None) -> None:
        """Sign again and re-queue the detections whose answer is overdue; give up after the window."""
        now = time.time() if now is None else now
        for entry in self.spool.due(now):
            try:
                detection = payload_from_dict(TopicKind.DETECTIONS, split_envelope(entry.payload).payload)
                assert isinstance(detection, Detection)
                again = detection.resent(sent_at=now)
            except (ProtocolError, ValueError, AssertionError):
                logger.exception("awaited detection %s cannot be re-sent; dropped", entry.detection_id)
                self.spool.give_up(entry.detection_id)
                continue
            # a door's offline decision must reach the access log: re-sent for longer (see config)
            window = (
                self.settings.offline_resend_window_s
                if detection.offline_decision is not None
                else self.settings.resend_window_s
            )
            if now - entry.accepted_at > window:
                self.spool.give_up(entry.detection_id)
                logger.warning(
                    "no answer for detection %s after %d attempt(s) in %.0fs; giving up",
                    entry.detection_id, entry.attempts + 1, now - entry.accepted_at,
                )  # fmt: skip
                continue
            attempts = entry.attempts + 1
            backoff = now + self.settings.decision_timeout_s * 2**attempts
            self.spool.reschedule(
                entry.detection_id,
                attempts=attempts,
                next_at=min(backoff, entry.accepted_at + window + 0.001),
            )
            self.spool.put(entry.topic, seal(again, self.private_key), qos=1, detection_id=entry.detection_id)
            self.resent += 1
            logger.warning("no answer for detection %s yet; sent again (attempt %d)", entry.detection_id, attempts)

    def _check_answers(self, now: float | None = None) -> None:
        """Reconnect when answers are overdue and none arrived on this connection for a while."""
        if self.settings.unanswered_reconnect_s <= 0:
            return
        now = time.monotonic() if now is None else now
        silent = now - self._answer_at
        if silent < self._reconnect_after:
            return
        overdue, oldest = self.spool.overdue(time.time(), timeout_s=self.settings.decision_timeout_s)
        if not overdue:
            return
        self.reconnects += 1
        logger.warning(
            "%d detection(s) without an answer (oldest %ss) and no command for %.0f s: the commands "
            "subscription may be lost; reconnecting (%d)",
            overdue, oldest, silent, self.reconnects,
        )  # fmt: skip
        self._reconnect_after = min(self._reconnect_after * 2, 600.0)
        self._answer_at = now
        with self._lifecycle:
            if self._stop.is_set():
                return
            self._reconnect()

    def _reconnect(self) -> None:
        self._reconnecting = True
        try:
            self.client.disconnect()
            self.client.loop_stop()
            if self._connected.is_set():  # paho did not report the disconnect
                self.disconnected_since = time.monotonic()
                self._connected.clear()
                self._subscribed.clear()
            if not self._stop.is_set():
                self.client.connect_async(self.host, self.port, keepalive=self.settings.keepalive_s)
                self.client.loop_start()
        finally:
            self._reconnecting = False

    def _hand_over(self) -> None:
        room = self.settings.max_inflight - len(self._inflight)
        if room <= 0:
            return
        for entry in self.spool.peek(after_id=self._last_handed, limit=room):
            info = self.client.publish(entry.topic, entry.payload, qos=entry.qos)
            if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
                return
            # MQTT_ERR_NO_CONN still queues a QoS1 message in paho: it goes out on reconnect
            self._inflight[info.mid] = entry.id
            self._last_handed = entry.id

    # -- paho callbacks (network thread: never block here) ---------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            logger.warning("broker refused connection: %s", reason_code)
            return
        logger.info("connected to %s:%s (session present: %s)", self.host, self.port, flags.session_present)
        client.subscribe(self._commands_topic, qos=1)
        status = Status(
            device_uid=self.device_uid, state=DeviceState.ONLINE, sent_at=time.time(), agent_version=self.agent_version
        )
        client.publish(status_topic(self.device_uid), seal(status, self.private_key), qos=1, retain=True)
        self.disconnected_since = None
        self.connects += 1
        self._answer_at = max(self._answer_at, time.monotonic())
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self._stop.is_set():
            logger.info("disconnected from broker (stopping)")
        elif self._connected.is_set():
            if self._reconnecting:
                logger.info("disconnected from broker (reconnecting)")
            else:
                logger.warning("disconnected from broker (%s); spooling", reason_code)
            self.disconnected_since = time.monotonic()
        self._connected.clear()
        self._subscribed.clear()

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if any(getattr(code, "is_failure", False) for code in reason_codes):
            logger.error("broker refused the commands subscription: %s", [str(code) for code in reason_codes])
            return
        self._subscribed.set()

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic != self._commands_topic:
            # Only our commands topic is subscribed; a broker may still deliver others (retained
            # messages of other devices, a shared session): never treat them as commands.
            self.foreign_ignored += 1
            logger.debug("message on %s ignored (not our commands topic)", message.topic)
            return
        try:
            command = open_message(
                message.topic, message.payload, self.server_public_key, window_s=self.settings.command_window_s
            )
        except ProtocolError as exc:
            self.commands_rejected += 1
            logger.warning("command rejected on %s: %s (%s)", message.topic, exc.code, exc.message)
            return
        if not isinstance(command, Command):
            self.commands_rejected += 1
            logger.warning("unexpected message on %s", message.topic)
            return
        seen = self.spool.command_apply_once(
            command.command_id,
            detection_id=command.detection_id,
            issued_at=command.issued_at,
            keep_s=2 * self.settings.command_window_s + 60,
        )
        if seen is CommandSeen.REPLAYED:
            self.commands_rejected += 1
            logger.warning("command %s replayed; ignored", command.command_id)
            return
        self._answer_at = time.monotonic()
        self._reconnect_after = self.settings.unanswered_reconnect_s
        if command.detection_id:
            self.spool.resolve(command.detection_id)
            if seen is CommandSeen.ANSWERED:
                logger.info("second answer for detection %s ignored", command.detection_id)
                return
        if self.on_command is not None:
            try:
                self.on_command(command, message.payload)
            except Exception:
                logger.exception("command %s failed", command.command_id)
