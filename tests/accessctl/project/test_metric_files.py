"""The metric files of processes that end (issue 22): real processes write counters and histograms
into a folder of their own, exit or are killed; their counts move into the archive files, their
files go, the folder stays bounded, and no scrape ever sees a counter go back."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from accessctl.metrics import _ProcessFiles, metrics_exposition, metrics_files_compact
from accessctl.models import WebhookDelivery, WebhookSubscription
from tests.devices import e2e

ROOT = Path(__file__).resolve().parents[3]

_CHILD = """
import os, sys, time
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")
from accessctl import metrics  # the settings only: what a process needs to count
metrics.WEBHOOK_DELIVERIES.labels("retry").inc(int(sys.argv[1]))
metrics.BRIDGE_LAG.labels("wait").observe(0.004)
if sys.argv[2] == "gauges":  # as a future multiprocess gauge would: one file per mode and process
    from prometheus_client import Gauge
    Gauge("t_live", "h", ["k"], multiprocess_mode="livesum").labels("a").set(2)
    Gauge("t_all", "h", multiprocess_mode="all").set(int(sys.argv[1]))
    metrics.DECISION_LATENCY.labels("crop").observe(0.07)
    metrics.DECISION_LATENCY.labels("crop").observe(7)
if sys.argv[2] in ("hang", "gauges"):
    print("ready", flush=True)
    time.sleep(600)
"""

RETRY = ("accessctl_webhook_deliveries_total", (("outcome", "retry"),))
WAIT_COUNT = ("accessctl_bridge_lag_seconds_count", (("step", "wait"),))
WAIT_BUCKET = ("accessctl_bridge_lag_seconds_bucket", (("le", "0.005"), ("step", "wait")))


def totals(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for metric in _ProcessFiles(folder).collect():
        for sample in metric.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def files(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("*.db")}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "metrics"
    path.mkdir()
    return path


def _env(folder: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}


def child(folder: Path, count: int, mode: str = "exit") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(count), mode], env=_env(folder), cwd=ROOT, stdout=subprocess.PIPE, text=True
    )


def hanging(folder: Path, count: int, mode: str = "hang") -> subprocess.Popen[str]:
    proc = child(folder, count, mode)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_exiting_processes_leave_their_counts_in_the_archive_and_no_files(folder: Path) -> None:
    for count in range(1, 4):
        assert child(folder, count).wait(60) == 0
        assert files(folder) == {"counter_archive.db", "histogram_archive.db"}  # not one more per process
    seen = totals(folder)
    assert seen[RETRY] == 6
    assert seen[WAIT_COUNT] == 3 and seen[WAIT_BUCKET] == 3
    assert seen[("accessctl_bridge_lag_seconds_sum", (("step", "wait"),))] == pytest.approx(0.012)


@pytest.mark.django_db
def test_a_killed_process_is_compacted_by_the_next_scrape_and_the_live_ones_are_left(folder: Path) -> None:
    assert child(folder, 2).wait(60) == 0
    killed, alive = hanging(folder, 3), hanging(folder, 4)
    try:
        assert len(files(folder)) == 6  # the archive, and two files of each live process
        before = totals(folder)
        assert before[RETRY] == 9 and before[WAIT_COUNT] == 3
        killed.send_signal(signal.SIGKILL)  # no exit hook runs: its files stay behind
        killed.wait(30)
        assert totals(folder) == before
        body, _ = metrics_exposition(folder)  # the scrape compacts what it finds dead
        scraped = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        assert scraped[RETRY] == 9 and scraped[WAIT_BUCKET] == 3
        assert files(folder) == {
            "counter_archive.db", "histogram_archive.db", f"counter_{alive.pid}.db", f"histogram_{alive.pid}.db"
        }  # fmt: skip
        assert totals(folder) == before
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait(30)
    assert metrics_files_compact(folder) == 2
    assert files(folder) == {"counter_archive.db", "histogram_archive.db"}
    assert totals(folder) == before
    from accessctl.metrics import _indexes

    # no index is kept for the files that went
    assert {Path(path).name for path in _indexes if path.startswith(str(folder))} == files(folder)


def test_scrapes_during_exits_and_compactions_never_see_a_counter_go_back(folder: Path) -> None:
    """Processes exiting at once (each compacting under the lock) while a scraper reads on: every
    read is at least the previous one, and the last is the sum of all."""
    stop = threading.Event()
    reads: list[tuple[float, float]] = []

    def scraper() -> None:
        while not stop.is_set():
            seen = totals(folder)
            reads.append((seen.get(RETRY, 0.0), seen.get(WAIT_BUCKET, 0.0)))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        procs = [child(folder, count) for count in range(1, 5)]
        assert [proc.wait(120) for proc in procs] == [0] * 4
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert len(reads) > 10
    for earlier, later in itertools.pairwise(reads):
        assert later[0] >= earlier[0] and later[1] >= earlier[1], (earlier, later)
    assert reads[-1] == (10, 4)
    assert files(folder) == {"counter_archive.db", "histogram_archive.db"}


@pytest.mark.django_db(transaction=True)
def test_a_celery_pool_child_and_the_worker_compact_their_files_when_they_end(
    folder: Path, test_env: dict[str, str], tmp_path: Path
) -> None:
    """A real worker: its pool child leaves through ``os._exit`` (the worker_process_shutdown
    signal), the main process at interpreter exit; stopped with SIGTERM to the main process, as
    systemd's KillMode=mixed (deploy/systemd) does."""
    subscription = WebhookSubscription.objects.create(name="x", url="ftp://nowhere.invalid/", secret="s" * 16)
    deliveries = [
        WebhookDelivery.objects.create(subscription=subscription, event_type="access.granted", payload={})
        for _ in range(2)
    ]
    refused = ("accessctl_webhook_deliveries_total", (("outcome", "refused"),))
    env = {**test_env, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    with e2e.child_process(e2e.worker_argv(name="metrics-files"), env, "ready.", tmp_path / "w.log") as worker:
        from accessctl.tasks import webhook_deliver

        for delivery in deliveries:
            webhook_deliver.delay(delivery.pk)
        deadline = time.monotonic() + 60
        while WebhookDelivery.objects.filter(status=WebhookDelivery.Status.PENDING).exists():
            assert time.monotonic() < deadline, "the worker did not take the deliveries"
            time.sleep(0.1)
        assert totals(folder)[refused] == 2
        live = files(folder)
        assert any(not name.endswith("_archive.db") for name in live), live  # the pool child's own files
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    log = (tmp_path / "w.log").read_text()
    assert "exited with" not in log, log[-2000:]  # the child left by itself, not killed
    assert {name for name in files(folder) if not name.endswith("_archive.db")} == set()
    assert totals(folder)[refused] == 2


def test_a_file_still_empty_is_read_as_nothing_and_an_empty_dead_one_is_removed(folder: Path) -> None:
    """A process creates its file, then sizes it: a scrape in between (or a kill) finds it empty."""
    assert child(folder, 2).wait(60) == 0
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    (folder / f"counter_{os.getpid()}.db").touch()  # alive: being created
    (folder / f"histogram_{dead.pid}.db").touch()  # killed right after creating it
    assert totals(folder)[RETRY] == 2
    assert metrics_files_compact(folder) == 1
    assert files(folder) == {"counter_archive.db", "histogram_archive.db", f"counter_{os.getpid()}.db"}
    assert totals(folder)[RETRY] == 2


def test_the_reader_yields_what_prometheus_client_s_collector_yields(folder: Path) -> None:
    """The faster reader against the upstream collector over the same files: the archive, live
    processes' counters and histograms, and gauge files."""

    def samples(metrics: object) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
        return {
            (metric.name, sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in metrics  # type: ignore[attr-defined]
            for sample in metric.samples
        }

    assert child(folder, 2).wait(60) == 0
    procs = [hanging(folder, 3, "gauges"), hanging(folder, 5, "gauges"), hanging(folder, 1)]
    try:
        ours, upstream = (
            samples(_ProcessFiles(folder).collect()),
            samples(MultiProcessCollector(None, str(folder)).collect()),
        )
        assert ours == upstream
        assert ours[("t_live", "t_live", (("k", "a"),))] == 4
        crop = ("accessctl_decision_latency_seconds", "accessctl_decision_latency_seconds_bucket")
        assert ours[(*crop, (("le", "0.075"), ("mode", "crop")))] == 2
        assert ours[(*crop, (("le", "+Inf"), ("mode", "crop")))] == 4
        # a live process's file grows (a new series) and its values change: read again
        own = MmapedDict(str(folder / f"counter_{os.getpid()}.db"))
        try:
            own.write_value(mmap_key("accessctl_webhook_deliveries", RETRY[0], ["outcome"], ["retry"], "x"), 4.0, 0)
            assert samples(_ProcessFiles(folder).collect())[("accessctl_webhook_deliveries", *RETRY)] == 15
            own.write_value(mmap_key("accessctl_webhook_deliveries", RETRY[0], ["outcome"], ["retry"], "x"), 5.0, 0)
            own.write_value(
                mmap_key("accessctl_alarms_raised", "accessctl_alarms_raised_total", ["kind"], ["replay"], "x"), 1, 0
            )
            again = samples(_ProcessFiles(folder).collect())
            assert again == samples(MultiProcessCollector(None, str(folder)).collect())
            assert again[("accessctl_webhook_deliveries", *RETRY)] == 16
            assert again[("accessctl_alarms_raised", "accessctl_alarms_raised_total", (("kind", "replay"),))] == 1
        finally:
            own.close()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
