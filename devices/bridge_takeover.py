"""A dead bridge's share of the detections: drained by a live bridge of its group.

With a shared subscription (``MQTT_SHARED_GROUP``) each bridge has a persistent session, and
Mosquitto (2.0) goes on handing a session whose client is gone its turn of the group's messages:
they are queued for it, kept, and delivered only when a client with that id connects again. A
bridge that is restarted under the same client id (deploy/topology.py, systemd) gets them back:
nothing is lost. A bridge that does not come back (its machine died) would hold every N-th
detection of the site, unanswered, until it does.

So each bridge on a shared subscription looks, every few seconds, at its group's heartbeats
(:mod:`accessctl.heartbeats`, kind ``bridge``). One that has not written for
``MQTT_BRIDGE_TAKEOVER_AFTER_S`` is taken for dead; the first live bridge to claim it (a short
lease in Redis) connects under its client id with the persistent session, takes the queued
detections through the same verification and staging as its own (acknowledging each once its
decision task is out, as always), unsubscribes that session from the group so the broker stops
giving it a share, and disconnects. Nothing is lost on the way: what it did not acknowledge stays
in the session. If the dead bridge comes back meanwhile, the broker hands the session to it (the
drain is disconnected and does not reconnect); it subscribes again on connecting, as always.

A drained detection is decided like any other: one older than the devices' freshness window is
denied as stale (recorded, never silently dropped). Decisions stay idempotent on ``detection_id``,
so a message handled by both the drain and the returning bridge is decided once. Each takeover
raises a ``bridge_deaf`` alarm naming the dead bridge (details ``dead``, ``drained_by``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
from django.db import close_old_connections

from accessctl.alarms import alarm_raise
from accessctl.heartbeats import heartbeat_claim, heartbeats_read
from accessctl.models import Alarm
from devices.bridge import HEARTBEAT_KIND, Bridge, Handler, probe_topic, subscription_topics

logger = logging.getLogger(__name__)

#: A drain that has heard nothing for this long has emptied the session.
QUIET_S = 2.0
#: A drain gives up after this long (what it did not acknowledge stays in the session).
DRAIN_MAX_S = 120.0
#: ... or when it could not connect for this long.
CONNECT_TIMEOUT_S = 30.0


def orphaned_bridges(beats: Mapping[str, Mapping[str, Any]], *, me: str, group: str, stale_after_s: float) -> list[str]:
    """Client ids of the bridges of ``group`` (other than ``me``) whose heartbeat is older than ``stale_after_s``."""
    return sorted(
        name
        for name, data in beats.items()
        if name != me and data.get("group") == group and float(data.get("age_s", 0.0)) > stale_after_s
    )


class SessionDrain(Bridge):
    """Connects under a dead bridge's client id, handles what its session holds, leaves the group."""

    def __init__(self, handler: Handler, *, client_id: str, shared_group: str) -> None:
        super().__init__(handler, client_id=client_id, shared_group=shared_group, deaf_after_s=DRAIN_MAX_S)
        self.client.reconnect_delay_set(min_delay=int(DRAIN_MAX_S), max_delay=int(DRAIN_MAX_S))  # never reconnect
        self.client.on_unsubscribe = self._on_unsubscribe
        self.outcome = "running"
        self.handled = 0
        self._started = time.monotonic()
        self._unsubscribed: float | None = None
        self._unsubacked = threading.Event()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            self._finish(f"refused: {reason}")
            return
        self._heard_at = time.monotonic()
        self.connected.set()
        if not getattr(flags, "session_present", False):
            self._finish("no session")  # nothing was kept for it (the broker lost it, or never had one)
        else:
            logger.info("draining the session of dead bridge %s", self.client_id)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object
    ) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            self._finish(f"taken back ({reason})")  # the bridge came back, or the broker went away

    def _on_unsubscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: object, props: object) -> None:
        self._unsubacked.set()

    def _dispatch(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        self.handled += 1
        super()._dispatch(client, message)

    def _finish(self, outcome: str) -> None:
        if self.outcome == "running":
            self.outcome = outcome
        self._stop.set()

    def watch(self) -> None:
        now = time.monotonic()
        if now - self._started > DRAIN_MAX_S:
            self._finish("timed out")
            return
        if not self.connected.is_set():
            if now - self._started > CONNECT_TIMEOUT_S:
                self._finish("could not connect")
            return
        quiet = now - self._heard_at >= QUIET_S and not self._delivering and not self.pending
        if not quiet:
            return
        if self._unsubscribed is None:  # the queue is empty: leave the group (and the probe topic)
            self.client.unsubscribe([*subscription_topics(self.shared_group), probe_topic(self.client_id)])
            self._unsubscribed = now
            self._heard_at = now  # whatever the broker still sends before the UNSUBACK is handled too
        elif self._unsubacked.is_set():
            self._finish("drained")

    def heartbeat(self) -> None:
        """A drain writes no heartbeat in the dead bridge's name (``run_forever`` removes it at the end)."""


def takeover_orphans(bridge: Bridge, *, stale_after_s: float) -> list[str]:
    """Start draining the sessions of ``bridge``'s group's dead bridges; returns the client ids started."""
    for name, thread in list(bridge.drains.items()):
        if not thread.is_alive():
            del bridge.drains[name]
    group = bridge.shared_group or ""
    beats = heartbeats_read(HEARTBEAT_KIND)
    orphans = orphaned_bridges(beats, me=bridge.client_id, group=group, stale_after_s=stale_after_s)
    started = []
    for orphan in orphans:
        if orphan in bridge.drains or not heartbeat_claim(kind=HEARTBEAT_KIND, name=orphan, ttl_s=DRAIN_MAX_S + 30):
            continue
        logger.warning(
            "bridge %s: bridge %s of group %s wrote no heartbeat for over %.0f s; draining its session",
            bridge.client_id, orphan, group, stale_after_s,
        )  # fmt: skip
        drain = SessionDrain(bridge.handler, client_id=orphan, shared_group=group)
        thread = threading.Thread(target=_drain_run, args=(drain,), name=f"drain-{orphan}", daemon=True)
        thread.start()
        bridge.drains[orphan] = thread
        started.append(orphan)
        _alarm(orphan, drained_by=bridge.client_id, silent_s=float(beats[orphan].get("age_s", 0.0)))
    return started


def _alarm(orphan: str, *, drained_by: str, silent_s: float) -> None:
    """The operators see it: a bridge stopped (bridge_deaf, folded into the open one). Never raises."""
    try:
        close_old_connections()
        alarm_raise(
            kind=Alarm.Kind.BRIDGE_DEAF,
            details={"client_id": orphan, "silent_s": round(silent_s, 1), "dead": True, "drained_by": drained_by},
        )
    except Exception:  # the database may be down too; the drain goes on without the alarm
        logger.exception("could not raise the bridge_deaf alarm for dead bridge %s", orphan)


def _drain_run(drain: SessionDrain) -> None:
    try:
        drain.run_forever()
    finally:
        logger.warning("drain of bridge %s: %s; %d message(s) handled", drain.client_id, drain.outcome, drain.handled)
