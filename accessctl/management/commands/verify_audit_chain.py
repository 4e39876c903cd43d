"""Verify the access log's hash chain, and the chain against its signed anchors outside the database."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.anchoring import anchors_verify
from accessctl.audit import chain_verify


def _age(delta: dt.timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


class Command(BaseCommand):
    help = "Verify the tamper-evident hash chain of access events and check it against the signed anchors."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--max-anchor-age",
            type=int,
            default=settings.AUDIT_ANCHOR_MAX_AGE_S,
            help="fail when the latest anchor is older than this many seconds (0: only report its age)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = chain_verify()
        if not report.ok:
            raise CommandError(
                f"chain broken at event id {report.first_broken_id} "
                f"after {report.checked} good events: {report.problem}"
            )
        anchors = anchors_verify()
        for problem in anchors.problems:
            self.stderr.write(f"anchor: {problem}")
        if not anchors.ok:
            raise CommandError(f"audit log does not match its anchors ({len(anchors.problems)} problems)")
        if anchors.latest is None or anchors.age is None:
            self.stdout.write(self.style.WARNING("no anchor yet: truncation or a rewritten chain would not show"))
        else:
            latest = anchors.latest
            self.stdout.write(
                f"last anchor {latest.at.isoformat(timespec='seconds')} ({_age(anchors.age)} ago): "
                f"head event {latest.head_id}, {latest.count} events; {anchors.checkpoints} anchors checked"
            )
            max_age = int(options["max_anchor_age"] or 0)
            if max_age and anchors.age.total_seconds() > max_age:
                raise CommandError(f"the latest anchor is {_age(anchors.age)} old (more than {max_age} s)")
        self.stdout.write(self.style.SUCCESS(f"audit chain intact: {report.checked} events verified"))
