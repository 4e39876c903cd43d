"""Erase a person (right to erasure): photos, embeddings, crops, the person record; events pseudonymised."""

from __future__ import annotations

import json
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.privacy.erasure import ErasureError, person_erase, person_find


class Command(BaseCommand):
    help = "Erase everything held about a person; their access events stay under a pseudonym."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("person", help="uid, id or external_id of the person")
        parser.add_argument("--actor", required=True, help="username of the administrator doing it (audited)")
        parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            person = person_find(ident=options["person"])
        except ErasureError as exc:
            raise CommandError(str(exc)) from exc
        try:
            actor = get_user_model().objects.get(username=options["actor"])
        except get_user_model().DoesNotExist as exc:
            raise CommandError(f"no user {options['actor']!r}") from exc
        if not options["yes"]:
            answer = input(f"Erase {person.name} ({person.uid}) permanently? Type 'erase' to confirm: ")
            if answer.strip() != "erase":
                raise CommandError("not confirmed; nothing erased")
        report = person_erase(person=person, actor=actor)
        self.stdout.write(json.dumps(report.as_dict(), indent=2))
