"""``flush`` with the schema owner's rights: the application's role may not empty the access log.

Django's ``flush`` (also what transactional tests run between tests), done over a connection of the
owner role to the same database (accessctl/project/dbroles.py).
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import flush
from django.db import connections

from accessctl.project.dbroles import owner_alias, owner_connection


class Command(flush.Command):
    def handle(self, **options: Any) -> None:
        alias = options["database"]
        if owner_alias(alias) == alias:
            super().handle(**options)
            return
        owner = owner_connection(alias, as_alias=alias)
        app = connections[alias]
        connections[alias] = owner
        try:
            super().handle(**options)
        finally:
            connections[alias] = app
            owner.close()
