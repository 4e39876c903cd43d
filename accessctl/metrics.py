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

Files of processes that are gone (a worker child recycled, a bridge restarted, a crash) are
compacted: their counters and histograms are added into one archive file per type
(``counter_archive.db``, ``histogram_archive.db``) and the files removed, so the folder holds the
files of the live processes plus the archive however often processes restart, and no counter goes
backwards. Each process compacts its own files when it exits (:func:`metrics_process_exit`: at
interpreter exit, from Celery's ``worker_process_shutdown`` for pool children, which leave through
``os._exit``); a scrape compacts those of processes that died without (SIGKILL, OOM). A lock file
in the folder keeps a scrape from reading while the files change (shared for readers, exclusive
for the compaction). A process is dead when its pid is: the folder belongs to the processes of one
host (one pid namespace); a container that shares it with another namespace must not.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from django.conf import settings
from django.db import connection, transaction

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.METRICS_DIR))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram  # noqa: E402
from prometheus_client import values as _values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.exposition import generate_latest  # noqa: E402
from prometheus_client.mmap_dict import MmapedDict  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead  # noqa: E402
from prometheus_client.samples import Sample  # noqa: E402
from prometheus_client.utils import floatToGoString  # noqa: E402

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
SHADOW_DECISIONS = Counter(
    "accessctl_shadow_decisions",
    "Shadow decisions of a candidate model (recognition/shadow.py) by outcome: queued, recorded, and "
    "what was dropped (backlog: the shadow queue was full; late: waited past its age; crop_gone: the "
    "crop was deleted first; enqueue_failed, error, not_shadow: the version left shadow).",
    ["outcome"],
)


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


def metrics_exposition(folder: Path | None = None) -> tuple[bytes, str]:
    """The text exposition of every process's counters plus the scrape-time gauges, and its content
    type (``folder``: the processes' files, PROMETHEUS_MULTIPROC_DIR unless given)."""
    folder = Path(folder or os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if metric_files_dead(folder):  # processes that died without compacting theirs (killed)
        try:
            metrics_files_compact(folder)
        except Exception:  # the scrape still answers, with the files as they are
            logger.exception("metrics: compacting the files of ended processes failed")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessFiles(folder))
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


# --------------------------------------------------------------------------- the processes' files

#: The pid part of the archive files' names (``counter_archive.db``).
ARCHIVE = "archive"
#: File types whose values add up across processes (per key: per series, per histogram bucket).
_ADDITIVE = ("counter", "histogram", "summary")
_LOCK_NAME = ".metrics.lock"


@contextlib.contextmanager
def _files_locked(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """Scrapes read under a shared lock, the compaction changes the files under an exclusive one."""
    with open(folder / _LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _file_pid(path: Path) -> int | None:
    """The writer's pid from ``<type>[_<mode>]_<pid>.db`` (None: the archive or a foreign file)."""
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def metric_files_dead(folder: Path, *, exiting: int | None = None) -> list[Path]:
    """The metric files of processes that are gone (and of ``exiting``, the caller on its way out)."""
    alive: dict[int, bool] = {}
    dead = []
    for path in folder.glob("*.db"):
        pid = _file_pid(path)
        if pid is None:
            continue
        if pid not in alive:
            alive[pid] = pid != exiting and _process_alive(pid)
        if not alive[pid]:
            dead.append(path)
    return dead


def metrics_files_compact(path: Path | None = None, *, exiting_pid: int | None = None) -> int:
    """Add the counters and histograms of dead processes (and of ``exiting_pid``) into the archive
    files and remove their files; returns how many files went. Their live gauges go too
    (prometheus_client's ``mark_process_dead``); other gauge files stay (their values are per process).

    The new archive replaces the old one before the absorbed files are removed, under the
    exclusive lock: a scrape sees the totals before or after, never a step back. A compaction killed
    between the two steps counts the files it had not removed yet twice (up, never down)."""
    folder = Path(path or os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if not folder.is_dir():  # removed under a process on its way out (a test's temporary folder)
        return 0
    with _files_locked(folder, exclusive=True):
        dead = metric_files_dead(folder, exiting=exiting_pid)
        by_type: dict[str, list[Path]] = {}
        for item in dead:
            by_type.setdefault(item.name.split("_", 1)[0], []).append(item)
        gone = []
        for typ, files in sorted(by_type.items()):
            if typ not in _ADDITIVE:
                continue
            archive = folder / f"{typ}_{ARCHIVE}.db"
            totals: dict[str, float] = {}
            for source in [archive, *files]:
                try:
                    values = MmapedDict.read_all_values_from_file(str(source))
                except (FileNotFoundError, struct.error):  # struct.error: killed while creating it (empty)
                    continue
                for key, value, _timestamp, _pos in values:
                    totals[key] = totals.get(key, 0.0) + value
            staging = folder / f".{typ}_{ARCHIVE}.db.new"  # not *.db: no scrape reads it
            staging.unlink(missing_ok=True)
            written = MmapedDict(str(staging))
            try:
                for key, value in totals.items():
                    written.write_value(key, value, 0.0)
            finally:
                written.close()
            os.replace(staging, archive)
            gone.extend(files)
        for pid in {_file_pid(item) for item in dead}:
            mark_process_dead(pid, str(folder))
        for item in gone:
            item.unlink(missing_ok=True)
    if dead:
        logger.info("metrics: compacted %d file(s) of %d ended process(es)", len(dead), len({*map(_file_pid, dead)}))
    return len(dead)


def metrics_process_exit() -> None:
    """This process is ending: its counters go into the archive (Celery's pool children call this
    from ``worker_process_shutdown``; every other process at interpreter exit). Never raises."""
    try:
        metrics_files_compact(exiting_pid=os.getpid())
    except Exception:
        logger.exception("metrics: compacting this process's files at exit failed")


atexit.register(metrics_process_exit)


_unpack_int = struct.Struct("i").unpack_from
_unpack_double = struct.Struct("d").unpack_from


class _Key(NamedTuple):
    """A file key parsed (it names one series of one metric, the same in every file and scrape)."""

    metric: str
    sample: str
    labels: tuple[tuple[str, str], ...]  # sorted
    help: str
    le: float | None  # a histogram bucket's bound (its labels without ``le``)


def _key_parse(raw: str) -> _Key:
    metric_name, name, labels, help_text = json.loads(raw)
    le = labels.pop("le", None) if name.endswith("_bucket") else None
    return _Key(metric_name, name, tuple(sorted(labels.items())), help_text, None if le is None else float(le))


class _FileIndex(NamedTuple):
    """Where the values of one file are: an entry never moves (the file is append-only), so the
    keys are parsed once per file and each scrape reads only the doubles at their offsets."""

    inode: int
    used: int
    entries: tuple[tuple[_Key, int], ...]


_indexes: dict[str, _FileIndex] = {}
_indexes_lock = threading.Lock()


def _file_values(path: Path) -> list[tuple[_Key, float]]:
    """``(key, value)`` of every entry of one file (empty for a file still being created)."""
    try:
        with open(path, "rb") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            data = handle.read(mmap.PAGESIZE)
            if len(data) < 8:  # a file being created (empty until its writer sizes it): no values yet
                return []
            used = _unpack_int(data, 0)[0]
            if used > len(data):
                data += handle.read(used - len(data))
    except FileNotFoundError:  # a live gauge's file removed since the listing (mark_process_dead)
        return []
    with _indexes_lock:
        index = _indexes.get(str(path))
        if index is None or index.inode != inode or index.used > used:
            index = _FileIndex(inode, 8, ())
        entries, pos = list(index.entries), index.used
        while pos < used:  # entries appended since the last scrape (the format of prometheus_client's MmapedDict)
            length = _unpack_int(data, pos)[0]
            if pos + 4 + length > used:
                raise RuntimeError(f"metrics file {path.name} is corrupted")
            raw = bytes(data[pos + 4 : pos + 4 + length]).decode("utf-8")
            pos += 4 + length + (8 - (length + 4) % 8)
            entries.append((_key_parse(raw), pos))
            pos += 16
        if pos != index.used:
            index = _indexes[str(path)] = _FileIndex(inode, pos, tuple(entries))
    return [(key, _unpack_double(data, offset)[0]) for key, offset in index.entries]


def _indexes_forget(folder: Path, *, keep: set[str]) -> None:
    """Drop the indexes of files gone from ``folder`` (compacted): one per process ever seen would pile up."""
    prefix = f"{folder}{os.sep}"
    with _indexes_lock:
        for path in [p for p in _indexes if p.startswith(prefix) and p not in keep]:
            del _indexes[path]


class _ProcessFiles:
    """What prometheus_client's MultiProcessCollector yields, read under the folder's shared lock,
    faster: each file's keys are parsed once (:class:`_FileIndex`), counters and histograms are
    added up directly; and a file a process is creating at that moment (still empty) reads as
    holding nothing (the upstream collector fails the whole scrape on it). Gauge files (none of
    ours) go through the upstream accumulation, for its per-mode rules."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterable[Metric]:
        with _files_locked(self.folder, exclusive=False):
            paths = sorted(self.folder.glob("*.db"))
            read = [(path.name.split("_"), _file_values(path)) for path in paths]
        _indexes_forget(self.folder, keep={str(path) for path in paths})
        kinds: dict[str, tuple[str, str]] = {}  # metric -> (type, help)
        plain: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        buckets: dict[str, dict[tuple[tuple[str, str], ...], dict[float, float]]] = {}
        gauges: dict[str, Metric] = {}
        for parts, values in read:
            typ = parts[0]
            for key, value in values:
                kinds.setdefault(key.metric, (typ, key.help))
                if typ == "gauge":
                    gauge = gauges.get(key.metric)
                    if gauge is None:
                        gauge = gauges[key.metric] = Metric(key.metric, key.help, typ)
                    gauge._multiprocess_mode = parts[1]  # type: ignore[attr-defined]
                    gauge.add_sample(key.sample, (*key.labels, ("pid", parts[2][:-3])), value)  # type: ignore[arg-type]
                elif key.le is not None:
                    per_le = buckets.setdefault(key.metric, {}).setdefault(key.labels, {})
                    per_le[key.le] = per_le.get(key.le, 0.0) + value
                else:
                    series = plain.setdefault(key.metric, {})
                    series[(key.sample, key.labels)] = series.get((key.sample, key.labels), 0.0) + value
        families: list[Metric] = []
        for name, (typ, help_text) in kinds.items():
            if typ == "gauge":
                continue
            metric = Metric(name, help_text, typ)
            for (sample, labels), value in plain.get(name, {}).items():
                metric.samples.append(Sample(sample, dict(labels), value))
            for labels, per_le in buckets.get(name, {}).items():
                total = 0.0
                for le, value in sorted(per_le.items()):
                    total += value
                    metric.samples.append(Sample(f"{name}_bucket", {**dict(labels), "le": floatToGoString(le)}, total))
                metric.samples.append(Sample(f"{name}_count", dict(labels), total))
            families.append(metric)
        families.extend(MultiProcessCollector._accumulate_metrics(gauges, True))
        return families
