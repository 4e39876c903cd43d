"""accessctl: the Django project and the core access-control domain."""

from accessctl.celery import app as celery_app

__all__ = ["celery_app"]
