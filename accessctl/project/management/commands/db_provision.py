"""Create the database and its owner and application roles on a real PostgreSQL server."""

from __future__ import annotations

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.project.db_provision import Login, database_provision


class Command(BaseCommand):
    help = (
        "Create (or update) the roles of DATABASE_URL (application) and DATABASE_OWNER_URL (owner) and "
        "their database with pgvector, using a superuser's connection (--admin-url or DATABASE_ADMIN_URL). "
        "Then run `manage.py migrate`."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--admin-url", default=None, help="a superuser's postgresql:// URL (any database)")

    def handle(self, *args: object, **options: object) -> None:
        admin_url = options["admin_url"] or os.environ.get("DATABASE_ADMIN_URL")
        if not admin_url:
            raise CommandError("give --admin-url or DATABASE_ADMIN_URL")
        if settings.EMBEDDED_POSTGRES or settings.DATABASE_SINGLE_ROLE:
            raise CommandError("set DATABASE_URL (application role) and DATABASE_OWNER_URL (owner role) first")
        app, owner = settings.DATABASES["default"], settings.DATABASES["owner"]
        try:
            database_provision(
                str(admin_url),
                database=str(app["NAME"]),
                owner=Login(str(owner["USER"]), str(owner["PASSWORD"])),
                app=Login(str(app["USER"]), str(app["PASSWORD"])),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"database {app['NAME']}: owner {owner['USER']}, application {app['USER']}, pgvector")
