"""``manage.py restore --from FILE|s3://bucket/key``: bring a new machine back from a backup."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.project.backup import BackupError, backup_restore
from accessctl.project.backup_crypto import BackupCryptoError
from accessctl.project.management.backup_options import database_running, passphrase_option_add, passphrase_read


class Command(BaseCommand):
    help = (
        "Restore a backup archive into this site's (empty) database and folders, then verify it: counts, "
        "the audit chain and its head."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="source", required=True, help="archive file or s3://bucket/key")
        passphrase_option_add(parser)
        parser.add_argument("--force", action="store_true", help="erase a database that is not empty first")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        passphrase = passphrase_read(options)
        try:
            with database_running():
                result = backup_restore(options["source"], passphrase, force=options["force"])
        except (BackupError, BackupCryptoError) as exc:
            raise CommandError(str(exc)) from None
        summary = {
            "ok": result.ok,
            "seconds": round(result.seconds, 2),
            **result.counts,
            "chain_checked": result.chain_checked,
            "problems": result.problems,
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(
                f"restored in {result.seconds:.1f} s: {result.counts}; audit chain {result.chain_checked} events "
                + ("verified" if result.ok else "PROBLEMS: " + "; ".join(result.problems))
            )
        if not result.ok:
            raise CommandError("the restored site does not match the archive: " + "; ".join(result.problems))
