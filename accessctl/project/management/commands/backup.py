"""``manage.py backup [--to DIR|s3://bucket/prefix]``: one encrypted archive of the whole site."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.project.backup import BackupError, backup_create
from accessctl.project.backup_crypto import BackupCryptoError
from accessctl.project.management.backup_options import database_running, passphrase_option_add, passphrase_read


class Command(BaseCommand):
    help = (
        "Write one consistent, encrypted archive of the site (database, images, signing key and secrets, "
        "audit anchors) to a folder or to S3."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--to", dest="to", help="folder or s3://bucket/prefix (default: ACCESSCTL_BACKUP_TO)")
        passphrase_option_add(parser)
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        destination = options["to"] or settings.BACKUP_TO
        if not destination:
            raise CommandError("where to? pass --to DIR or s3://bucket/prefix, or set ACCESSCTL_BACKUP_TO")
        passphrase = passphrase_read(options)
        try:
            with database_running():
                result = backup_create(destination, passphrase)
        except (BackupError, BackupCryptoError) as exc:
            raise CommandError(str(exc)) from None
        summary = {
            "location": result.location,
            "bytes": result.bytes,
            "seconds": round(result.seconds, 2),
            **result.manifest["counts"],
            "media_files": result.manifest["media_files"],
            "chain_head": result.manifest["chain_head"]["id"],
        }
        if options["json"]:
            self.stdout.write(json.dumps(summary))
        else:
            self.stdout.write(
                f"backup {result.location}: {result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s "
                f"({summary['people']} people, {summary['gallery_vectors']} gallery vectors, {summary['devices']} "
                f"devices, {summary['events']} events, {summary['media_files']} images)"
            )
