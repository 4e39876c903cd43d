"""Export everything held about a person as a zip (right of access / portability)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.privacy.erasure import ErasureError, person_export, person_find


class Command(BaseCommand):
    help = "Write a zip with all data held about a person (records, events, photos, embeddings)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("person", help="uid, id or external_id of the person")
        parser.add_argument("-o", "--output", help="zip file to write ('-' for stdout; default person-<uid>.zip)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            person = person_find(ident=options["person"])
        except ErasureError as exc:
            raise CommandError(str(exc)) from exc
        data = person_export(person=person)
        output = options["output"] or f"person-{person.uid}.zip"
        if output == "-":
            sys.stdout.buffer.write(data)
            return
        path = Path(output)
        path.write_bytes(data)
        path.chmod(0o600)
        self.stdout.write(f"wrote {path} ({len(data)} bytes)")
