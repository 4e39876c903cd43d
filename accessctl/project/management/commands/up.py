"""Start the whole system on embedded defaults (or the services the environment points at)."""

from __future__ import annotations

import io
import json
import logging
import threading

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.metrics import metrics_dir_reset
from accessctl.project import embedded, supervisor

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Start database, Valkey, MQTT broker (embedded unless configured), web, worker, beat and bridge."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address the web server binds to")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-beat", action="store_true", help="do not run the periodic task scheduler")
        parser.add_argument(
            "--demo",
            action="store_true",
            help="add a demo door, enrol LFW people and run a simulated door camera playing LFW visitors",
        )
        parser.add_argument(
            "--lfw",
            default=None,
            metavar="PATH",
            help="LFW photos for --demo (default: ACCESSCTL_LFW, else var/datasets/lfw, downloaded there once)",
        )

    def handle(self, *args: object, **options: object) -> None:
        lfw_root = None
        if options["demo"]:  # before anything starts: a missing dataset is one line (the devices app's `demo`)
            lfw_root = call_command("demo", "--locate", lfw=options["lfw"], stdout=io.StringIO())
        try:
            services = supervisor.services_start()
        except embedded.EmbeddedServiceError as exc:
            raise CommandError(str(exc)) from exc
        try:
            call_command("migrate", interactive=False, verbosity=0)
            # The broker admits the server and the enabled devices (the devices app's command).
            call_command("mqtt_identities", stdout=io.StringIO())
            supervisor.admin_ensure()
            children = supervisor.default_children(str(options["host"]), int(options["port"]), not options["no_beat"])
            if lfw_root is not None:
                children.append(self._demo_child(lfw_root))
            url = f"http://{options['host']}:{options['port']}/"
            logger.info("accessctl is starting on %s (Ctrl-C stops everything)", url)
            metrics_dir_reset()  # this run's counters only (the children write theirs there)
            running = supervisor.Supervisor(children)
            threading.Thread(
                target=supervisor.readiness_announce, args=(url, running.stopping), name="readiness", daemon=True
            ).start()
            running.run()
        finally:
            services.stop()
            logger.info("accessctl stopped")

    def _demo_child(self, lfw_root: str) -> supervisor.Child:
        """The simulated door camera, prepared by the devices app's ``demo`` command."""
        argv = json.loads(call_command("demo", lfw=lfw_root, stdout=io.StringIO()))
        return supervisor.Child("edge", argv)
