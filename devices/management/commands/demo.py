"""Prepare the demo site: a door, a group of enrolled LFW people and a provisioned simulated camera.

Run by ``manage.py up --demo`` (by name: the project imports no app), also usable alone. Prints the
simulated camera's command line as a JSON list (``--locate``: only the LFW folder it would use).
"""

from __future__ import annotations

import json
import logging

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.demo import demo_prepare
from recognition.datasets import DatasetError, lfw_locate

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Add the demo door, enrol LFW people and provision the simulated door camera; print its command line."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--lfw",
            default=None,
            metavar="PATH",
            help="LFW photos (default: found, or downloaded once into var/, by recognition.datasets.lfw_locate)",
        )
        parser.add_argument(
            "--locate", action="store_true", help="only find the LFW photos and print their folder (no database)"
        )

    def handle(self, *args: object, **options: object) -> str:
        try:  # a missing dataset is one line, not a traceback
            lfw_root = lfw_locate(explicit=options["lfw"])  # type: ignore[arg-type]
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        if options["locate"]:
            return str(lfw_root)
        logger.info("preparing the demo (enrolling LFW people from %s; takes a minute on first run)", lfw_root)
        return json.dumps(demo_prepare(lfw_root=lfw_root).simulator_argv())
