"""``manage.py enroll_folder <folder-or-zip>``: bulk enrolment from ``<Person_Name>/*.jpg``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.project.progress import progress_bar
from recognition.bulk_import import ImportSourceError, ItemOutcome, photos_import
from recognition.enrollment import HOLD_MESSAGES


class Command(BaseCommand):
    help = "Enrol people from a folder or .zip laid out as <Person_Name>/*.jpg (people are created by name)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="folder or .zip file")
        parser.add_argument("--uploaded-by", default=None, help="username recorded as the uploader")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar (none when not a terminal)")
        parser.add_argument("--list-rejected", action="store_true", help="print each rejected or held picture")

    def handle(self, *args: Any, **options: Any) -> None:

        user = None
        if options["uploaded_by"]:
            user = get_user_model().objects.filter(username=options["uploaded_by"]).first()
            if user is None:
                raise CommandError(f"no user named {options['uploaded_by']!r}")
        bar = None

        def progress(done: int, total: int, outcome: ItemOutcome) -> None:
            nonlocal bar
            if options["no_progress"]:
                return
            if bar is None:
                bar = progress_bar(total=total, unit="photo", desc="enrol", stream=self.stderr._out)
            bar.update(1)
            bar.set_postfix_str(f"{outcome.folder[:20]}: {outcome.status}")

        try:
            summary = photos_import(source=options["source"], uploaded_by=user, progress=progress)
        except ImportSourceError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            if bar is not None:
                bar.close()
        self.stdout.write(
            f"{summary.total} pictures: {summary.accepted} accepted, {summary.rejected} rejected, "
            f"{summary.duplicates} held for review, {summary.errors} errors; "
            f"{summary.people_created} people created"
        )
        for reason, count in summary.reasons.most_common():
            verb = "held" if reason in HOLD_MESSAGES else "rejected"
            self.stdout.write(f"  {verb} {reason}: {count}")
        if summary.people_discarded:
            names = ", ".join(summary.people_discarded)
            self.stdout.write(f"  not created (no photo accepted or awaiting review): {names}")
        if options["list_rejected"]:
            for outcome in summary.outcomes:
                if outcome.status not in ("accepted",):
                    self.stdout.write(f"  {outcome.folder}/{outcome.filename}: {outcome.status} {outcome.reason}")
