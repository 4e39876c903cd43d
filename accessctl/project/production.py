"""Settings a production deployment (``ACCESSCTL_PRODUCTION=1``) refuses to start with.

Called from ``accessctl/project/settings.py`` while the settings load, so every process (web, worker,
bridge, management commands) stops with :class:`ImproperlyConfigured` and a message naming the
variable to fix, instead of running with a warning nobody reads.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

#: Django's own deploy check (security.W009) asks for at least 50 characters, 5 of them distinct.
MIN_SECRET_KEY_LENGTH = 50
MIN_SECRET_KEY_UNIQUE_CHARACTERS = 5
_INSECURE_PREFIX = "django-insecure-"


def production_settings_refuse(*, debug: bool, secret_key: str) -> None:
    """Raise :class:`ImproperlyConfigured` when ``debug`` is on or ``secret_key`` is weak."""
    if debug:
        raise ImproperlyConfigured(
            "DJANGO_DEBUG must be off when ACCESSCTL_PRODUCTION=1 (debug pages show settings, "
            "SQL and stack traces to anyone who triggers an error)."
        )
    if (
        len(secret_key) < MIN_SECRET_KEY_LENGTH
        or len(set(secret_key)) < MIN_SECRET_KEY_UNIQUE_CHARACTERS
        or secret_key.startswith(_INSECURE_PREFIX)
    ):
        raise ImproperlyConfigured(
            f"DJANGO_SECRET_KEY is too weak for ACCESSCTL_PRODUCTION=1: use at least "
            f"{MIN_SECRET_KEY_LENGTH} random characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(64))'."
        )
