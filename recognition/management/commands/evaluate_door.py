"""``manage.py evaluate_door --data DIR``: door behaviour (real enrolment, real matcher) on a scratch gallery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from recognition.door_evaluation import DoorEvaluationError, door_evaluate


class Command(BaseCommand):
    help = (
        "Enrol the first photos of most identities of DIR/<identity>/*.jpg, probe with the others and with "
        "held-out strangers, and print top-1, enrolled rejected, strangers accepted, wrong person admitted, "
        "failure to detect / enrol and ms per probe. The gallery is a rolled-back transaction: nothing is kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", required=True, type=Path, help="folder of <identity>/*.jpg")
        parser.add_argument("--enrol", type=int, default=3, help="photos enrolled per identity (default 3)")
        parser.add_argument("--stranger-share", type=float, default=0.25, help="identities held out (default 0.25)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the enrolled/stranger split")
        parser.add_argument(
            "--probes-per-attempt", type=int, default=1, help="K photos per attempt, embeddings averaged (default 1)"
        )
        parser.add_argument("--limit-identities", type=int, default=None, help="the first N identities (by name)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        quiet = options["json"] or options["verbosity"] < 2

        def progress(message: str) -> None:
            if not quiet:
                self.stderr.write(message)

        try:
            report = door_evaluate(
                data=options["data"],
                enrol=options["enrol"],
                stranger_share=options["stranger_share"],
                seed=options["seed"],
                probes_per_attempt=options["probes_per_attempt"],
                limit_identities=options["limit_identities"],
                progress=progress,
            )
        except DoorEvaluationError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict()))
        else:
            self.stdout.write(report.summary())
