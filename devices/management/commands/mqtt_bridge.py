"""Run the MQTT bridge until SIGINT/SIGTERM."""

from __future__ import annotations

import functools
import signal
import threading

from django.core.management.base import BaseCommand, CommandParser

from accessctl.systemd_notify import systemd_notify
from devices.bridge import Bridge
from devices.bridge_takeover import takeover_orphans
from devices.ingest import message_ingest
from recognition.queueing import DecisionQueue


class Command(BaseCommand):
    help = "Subscribe to device topics and hand verified messages to the recognition queue."
    requires_system_checks: list[str] = []  # a daemon; `manage.py check` runs at deploy/test time

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client-id", default=None, help="MQTT client id (default: MQTT_CLIENT_ID)")
        parser.add_argument("--shared-group", default=None, help="use $share/<group>/ subscriptions")

    def handle(self, *args: object, **options: object) -> None:
        with DecisionQueue() as queue:  # this run's batching of decision tasks
            handler = functools.partial(message_ingest, queue=queue)
            bridge = Bridge(
                handler,
                client_id=options["client_id"],  # type: ignore[arg-type]
                shared_group=options["shared_group"],  # type: ignore[arg-type]
                takeover=takeover_orphans,
            )
            signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
            signal.signal(signal.SIGINT, lambda *_: bridge.stop())
            threading.Thread(target=self._ready_when_connected, args=(bridge,), name="ready", daemon=True).start()
            bridge.run_forever()

    @staticmethod
    def _ready_when_connected(bridge: Bridge) -> None:
        """Type=notify (deploy/systemd/accessctl-bridge.service): ready once connected to the broker
        (its subscriptions sent)."""
        bridge.connected.wait()
        systemd_notify("READY=1")
