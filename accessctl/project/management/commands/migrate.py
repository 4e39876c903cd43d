"""``migrate`` with the schema owner's rights: the application's own role may not change the schema.

Django's ``migrate``, except that the ``default`` database is migrated through the ``owner`` alias
(same database, the owner role; see accessctl/project/dbroles.py). ``--database owner`` says the same.
"""

from __future__ import annotations

from typing import Any

from django.core.management.commands import migrate

from accessctl.project.dbroles import owner_alias


class Command(migrate.Command):
    help = migrate.Command.help + " The default database is migrated as its owner role."

    def handle(self, *args: Any, **options: Any) -> None:
        options["database"] = owner_alias(options["database"])
        super().handle(*args, **options)
