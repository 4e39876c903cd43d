"""The Celery application. Tasks live in each app's ``tasks.py``; settings use the CELERY_ prefix."""

import os
from typing import TYPE_CHECKING

from celery import Celery, signals

if TYPE_CHECKING:
    from accessctl.heartbeats import HeartbeatThread

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")

app = Celery("accessctl")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes the database connections before and after every task unless
# CELERY_DB_REUSE_MAX is set: each decision then paid for a new PostgreSQL backend (the connect,
# and planning with cold catalog caches), about a third of its end-to-end latency. Connections
# are kept instead and recycled the way Django does after a request (below).
app.conf.update({"CELERY_DB_REUSE_MAX": 2**31})
app.autodiscover_tasks()


@signals.task_prerun.connect
@signals.task_postrun.connect
def _recycle_database_connections(sender: object = None, **_: object) -> None:
    """Drop connections that are broken (e.g. the database restarted) or older than CONN_MAX_AGE.

    Not for an eager task: it runs in its caller's process, inside the caller's transaction.
    """
    from django.db import close_old_connections

    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()


#: The worker's heartbeat for /readyz (accessctl.heartbeats, kind "worker"), from its main process.
_heartbeat: "list[HeartbeatThread]" = []


@signals.worker_ready.connect
def _worker_heartbeat_start(sender: object = None, **_: object) -> None:
    from accessctl.heartbeats import HeartbeatThread
    from accessctl.systemd_notify import systemd_notify

    name = str(getattr(sender, "hostname", None) or f"worker-{os.getpid()}")
    _heartbeat.append(HeartbeatThread(kind="worker", name=name).start())
    systemd_notify("READY=1")  # Type=notify in deploy/systemd/accessctl-worker.service


@signals.worker_shutdown.connect
def _worker_heartbeat_stop(**_: object) -> None:
    for beat in _heartbeat:
        beat.stop()
    _heartbeat.clear()


@signals.worker_process_shutdown.connect
def _metrics_pool_child_exit(**_: object) -> None:
    """A pool child leaves through ``os._exit`` (no interpreter exit hooks): its counters go into
    the metrics archive here (accessctl.metrics; the main process does it at interpreter exit)."""
    from accessctl.metrics import metrics_process_exit

    metrics_process_exit()
