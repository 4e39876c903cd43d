"""Apply the retention policies (or, with --dry-run, report what they would delete)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.privacy.retention import DataKind, RetentionBusy, retention_apply, retention_plan


class Command(BaseCommand):
    help = "Delete expired face crops, snapshots, rejected enrolment photos and access events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
        parser.add_argument(
            "--kind",
            action="append",
            choices=[k.value for k in DataKind],
            help="apply only to this kind (repeatable; default all)",
        )
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"]:
            report = retention_plan()
        else:
            kinds = {DataKind(k) for k in options["kind"]} if options["kind"] else None
            try:
                report = retention_apply(kinds=kinds)
            except RetentionBusy as exc:
                raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
            return
        for line in report.lines():
            self.stdout.write(line)
