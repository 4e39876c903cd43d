"""Verify the access log's hash chain and report the first broken link."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from accessctl.audit import chain_verify


class Command(BaseCommand):
    help = "Verify the tamper-evident hash chain of access events."

    def handle(self, *args: object, **options: object) -> None:
        report = chain_verify()
        if not report.ok:
            raise CommandError(
                f"chain broken at event id {report.first_broken_id} "
                f"after {report.checked} good events: {report.problem}"
            )
        self.stdout.write(self.style.SUCCESS(f"audit chain intact: {report.checked} events verified"))
