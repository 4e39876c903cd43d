"""The Django project: settings, URLs, ASGI/WSGI, the Celery app and the plumbing that runs the site.

It wires the apps by dotted strings only (INSTALLED_APPS, URL includes, Celery autodiscovery,
management commands by name), so it imports no module of ``recognition`` or ``devices``.
"""

from accessctl.project.celery import app as celery_app

__all__ = ["celery_app"]
