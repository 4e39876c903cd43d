"""What ``backup`` and ``restore`` share: the passphrase and the embedded database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings
from django.core.management.base import CommandError, CommandParser


def passphrase_option_add(parser: CommandParser) -> None:
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the archive passphrase (default: ACCESSCTL_BACKUP_PASSPHRASE)",
    )


def passphrase_read(options: dict) -> str:
    path = options.get("passphrase_file")
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CommandError(f"cannot read the passphrase file: {exc}") from None
    if settings.BACKUP_PASSPHRASE:
        return settings.BACKUP_PASSPHRASE
    raise CommandError("no passphrase: set ACCESSCTL_BACKUP_PASSPHRASE or pass --passphrase-file")


@contextlib.contextmanager
def database_running() -> Iterator[None]:
    """The embedded PostgreSQL running for the command (attached when ``up`` runs it, else started
    and stopped again); nothing to do with ``DATABASE_URL``."""
    if not settings.EMBEDDED_POSTGRES:
        yield
        return
    from accessctl.project import embedded

    pg = embedded.start_postgres(settings.EMBEDDED_PGDATA)
    pg.ensure_database(settings.DATABASES["default"]["NAME"])
    yield
