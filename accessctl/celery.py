"""The Celery application. Tasks live in each app's ``tasks.py``; settings use the CELERY_ prefix."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.settings")

app = Celery("accessctl")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
