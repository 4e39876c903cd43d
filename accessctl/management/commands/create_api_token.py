"""Issue an API token from the command line; the secret is printed once, alone on the last line.

    manage.py create_api_token USERNAME --scopes people:read,people:write [--expires DAYS] [--name NAME]

Scripts take the last line: ``TOKEN=$(manage.py create_api_token sync --scopes people:write | tail -n 1)``.
The same rules as the admin (``accessctl.tokens.api_token_issue``): the user must exist and be
active, and hold every permission of each scope. Whoever runs this has the server's own access, so
the command issues for any user, as a superuser would; the token records ``issued_by`` as
``command line (OS user <name>)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from accessctl.exceptions import DomainError
from accessctl.tokens import ALL_SCOPES, SystemActor, api_token_issue

MAX_DAYS = 36_500


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of days: {value!r}") from None
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_DAYS} days")
    return days


def _command_line_actor() -> SystemActor:
    try:
        os_user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return SystemActor(label="command line")
    return SystemActor(label=f"command line (OS user {os_user})")


def _refusal(username: str, exc: DomainError) -> str:
    """The service's refusal, with what to do about it: valid scopes, or the missing permissions."""
    details = exc.details if isinstance(exc.details, dict) else {}
    message = f"Cannot issue a token for {username!r}: {exc.message}"
    if "allowed" in details:
        return f"{message}. Valid scopes: {', '.join(details['allowed'])}."
    missing: dict[str, list[str]] = details.get("missing_permissions") or {}
    if missing:
        lines = [f"  {scope}: {', '.join(perms)}" for scope, perms in missing.items()]
        return "\n".join(
            [
                f"Cannot issue a token for {username!r}: the user lacks these permissions for the scopes asked:",
                *lines,
                "Grant them to the user (admin: Users, or a group) or ask for fewer scopes.",
            ]
        )
    return message


class Command(BaseCommand):
    help = (
        "Issue an API token for USERNAME and print its secret alone on the last line (shown once). "
        f"Scopes: {', '.join(ALL_SCOPES)}."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the token's owner (an active user)")
        parser.add_argument(
            "--scopes",
            required=True,
            help=f"comma-separated, e.g. people:read,people:write; any of {', '.join(ALL_SCOPES)}",
        )
        parser.add_argument("--expires", type=_days, metavar="DAYS", help="expire after DAYS days (default: never)")
        parser.add_argument("--name", help="a label for the token (default: '<username> (command line)')")
        parser.add_argument(
            "--rate-limit", type=int, default=600, metavar="PER_MINUTE", help="requests per minute (default 600)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            hint = "Create it first (the admin, or manage.py createsuperuser)."
            raise CommandError(f"No user {username!r}. {hint}") from None
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        if not scopes:
            raise CommandError(f"--scopes names no scope. Valid scopes: {', '.join(ALL_SCOPES)}.")
        days: int | None = options["expires"]
        expires_at = timezone.now() + dt.timedelta(days=days) if days else None
        name = options["name"] or f"{username} (command line)"[:100]
        if len(name) > 100:
            raise CommandError("--name is longer than 100 characters.")
        try:
            token, plaintext = api_token_issue(
                user=user,
                issued_by=_command_line_actor(),
                name=name,
                scopes=scopes,
                expires_at=expires_at,
                rate_limit_per_minute=options["rate_limit"],
            )
        except DomainError as exc:
            raise CommandError(_refusal(username, exc)) from exc
        expiry = f"expires {token.expires_at.isoformat(timespec='seconds')}" if token.expires_at else "never expires"
        self.stdout.write(
            f"API token {token.name!r} ({token.prefix}) for {username}: scopes {', '.join(token.scopes)}; {expiry}."
        )
        self.stdout.write("Copy the secret now, it is not shown again. Send it as 'Authorization: Bearer <secret>':")
        self.stdout.write(plaintext)
