"""Prometheus metrics: what every process counts, and the gauges read at scrape time.

Counters and histograms are written by the process where the thing happens (a decision in a
Celery worker, a staged detection in the bridge, a webhook attempt in a worker) into files under
``settings.METRICS_DIR``: prometheus_client's multiprocess mode, chosen by the
``PROMETHEUS_MULTIPROC_DIR`` environment variable, which this module sets (from the settings)
before prometheus_client is first imported. ``GET /metrics`` (:func:`metrics_exposition`) adds the
files of every process up and asks the registered collectors for the gauges that live in the
database or the cache (devices, the staged queue, the gallery): each app registers its own with
:func:`collector_register` (this app imports no app above it).

Label values are bounded: decision and reason codes, alarm kinds, detection modes, model versions.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.METRICS_DIR))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram  # noqa: E402
from prometheus_client import values as _values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.exposition import generate_latest  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

logger = logging.getLogger(__name__)

if _values.ValueClass is _values.MutexValue:  # prometheus_client was imported before this module
    logger.error(
        "prometheus_client was imported before accessctl.metrics set PROMETHEUS_MULTIPROC_DIR: this "
        "process's counters are not shared with /metrics"
    )

#: Detection modes of the decision latency (``offline``: decided by the device itself).
MODES = ("crop", "embedding", "offline")

DECISION_LATENCY = Histogram(
    "accessctl_decision_latency_seconds",
    "Detection staged at the bridge to decision committed (crop, embedding); for offline decisions "
    "the device's own capture-to-decision time.",
    ["mode"],
    buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0),
)
DECISIONS = Counter(
    "accessctl_decisions", "Access events recorded, by decision and reason code.", ["decision", "reason"]
)
BRIDGE_LAG = Histogram(
    "accessctl_bridge_lag_seconds",
    "Bridge hand-off of a detection: step=stage (message received to staged), step=enqueue "
    "(staged to its decision task handed to the task broker).",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
GALLERY_SEARCH = Histogram(
    "accessctl_gallery_search_seconds",
    "One HNSW gallery search call (all probes of a batch, the wider second search included).",
    ["model_version"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
WEBHOOK_DELIVERIES = Counter(
    "accessctl_webhook_deliveries",
    "Webhook delivery attempts by outcome (succeeded, failed, retry, refused).",
    ["outcome"],
)
ALARMS_RAISED = Counter("accessctl_alarms_raised", "Alarms opened (not repeats folded into an open one).", ["kind"])


def on_commit(action: Callable[[], None]) -> None:
    """Run ``action`` once the current transaction commits (now, outside one): counted are what
    was committed, not what was rolled back."""
    if connection.in_atomic_block:
        transaction.on_commit(action)
    else:
        action()


def decisions_count(verdicts: Iterable[tuple[str, str]]) -> None:
    """Count recorded events, ``(decision, reason)`` each, once they are committed."""
    verdicts = list(verdicts)
    if verdicts:
        on_commit(lambda: _decisions_inc(verdicts))


def _decisions_inc(verdicts: list[tuple[str, str]]) -> None:
    for decision, reason in verdicts:
        DECISIONS.labels(str(decision), str(reason)).inc()


def decision_latency_observe(mode: str, seconds: float) -> None:
    """One decision's latency (negative values, from clock steps, count as 0)."""
    DECISION_LATENCY.labels(mode if mode in MODES else "other").observe(max(0.0, seconds))


class Timer:
    """``with Timer() as t: ...``; ``t.seconds`` afterwards (monotonic clock)."""

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


# --------------------------------------------------------------------------- scrape-time gauges

#: A collector returns metric families read at scrape time (cheap queries: it runs on every scrape).
Collect = Callable[[], Iterable[Metric]]
_collectors: dict[str, Collect] = {}


def collector_register(name: str, collect: Collect) -> None:
    """Add (or replace) the scrape-time collector ``name`` (apps call this from ``ready()``)."""
    _collectors[name] = collect


class _Registered:
    """The registered collectors; one that fails is reported as down, the others still answer."""

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "accessctl_metrics_collector_up", "1 when the collector answered this scrape, else 0.", labels=["collector"]
        )
        took = GaugeMetricFamily(
            "accessctl_metrics_collector_seconds", "Time the collector took this scrape.", labels=["collector"]
        )
        for name, collect in sorted(_collectors.items()):
            started = time.perf_counter()
            try:
                families = list(collect())
            except Exception:
                logger.exception("metrics collector %s failed", name)
                families, ok = [], 0.0
            else:
                ok = 1.0
            yield from families
            up.add_metric([name], ok)
            took.add_metric([name], time.perf_counter() - started)
        yield up
        yield took


def metrics_exposition() -> tuple[bytes, str]:
    """The text exposition of every process's counters plus the scrape-time gauges, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    registry.register(_Registered())
    return generate_latest(registry), CONTENT_TYPE_LATEST


def metrics_dir_reset(path: Path | None = None) -> Path:
    """Empty the metrics folder (``up`` does, before it starts the processes): files of processes
    from an earlier run would otherwise be added to this run's counters."""
    folder = Path(path or os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.glob("*.db"):
        item.unlink(missing_ok=True)
    return folder
