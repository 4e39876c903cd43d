"""Load the embedder of the version about to become active before a door needs it.

A promotion (:mod:`recognition.gallery_migration`) builds the target version's gallery in the
background, then switches. Without this, each decision worker process would build the new
embedder on its first crop-mode detection after the switch (facenet-casia: seconds, while a person
waits at the door). :class:`EmbedderPreloader` runs in every decision worker process
(``recognition.tasks``, at process start): a daemon thread looks, every ``interval_s``, for the
versions this process should have loaded (:func:`preload_versions`: the active version and a
promotion's target) and builds those missing from faceengine's per-process cache
(:func:`recognition.engine.version_embedder`, verified as at first use), so at the switch the
instance is there. Nothing runs on the decision path.

Only a process that decides crop-mode detections loads ahead (it embedded a door's crop in the
last ``crop_window_s``, :func:`recognition.engine.door_crops_embedded`): an embedding-mode detection
is decided in its device's own version, so a process that decides only those would never use the
target's embedder, nor, after the switch, the new active one. Measured with
``bench/model_promotion.py`` (sface -> facenet-casia, 50 embedding-mode devices at 30 decisions/s, a
2-core machine): with the decision processes loading ahead, p99 during the build 439, 536 and
1,135 ms in three runs, worst 10 s 650-1,290 ms (the decision processes at 75-106 % of a core
instead of ~50 %); without, 246 ms, worst 10 s 345 ms, against 120-280 ms steady. (The bench's fresh ``VAR_DIR`` has no
converted facenet-casia weights: each of its loads converts them, heavier than on a server where
the gallery worker has cached them.)

One load at a time: one thread per process, and the processes of a machine take turns (a file lock
in ``VAR_DIR``: a worker's processes loading at once would take every core from the decisions). A
failed load is logged and tried again ``retry_s`` later; nothing it does stops the worker. A version
it loaded that is neither to preload nor kept (:func:`recognition.gallery_versions.kept_versions`:
the previous active version stays loaded while its gallery is kept, for a quick way back) is
dropped from the cache: a promotion abandoned and retired, an old version retired after the fleet
moved.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from django.db import connection

from faceengine.embedder import Embedder
from faceengine.registry import embedder_forget
from recognition.engine import door_crops_embedded, version_embedder
from recognition.gallery_versions import kept_versions
from recognition.model_registry import RegistryError, active_model
from recognition.models import GalleryMigration, ModelVersion

logger = logging.getLogger(__name__)


def promotion_target() -> str | None:
    """The version a promotion is about to make active: the target of a gallery build requested
    with activation (queued, running, or done but not switched yet) that is a candidate or in shadow.
    None when no promotion is under way (none requested, paused, failed, or switched already)."""
    return (
        GalleryMigration.objects.filter(
            activate=True,
            state__in=[GalleryMigration.State.QUEUED, GalleryMigration.State.RUNNING, GalleryMigration.State.DONE],
            model__state__in=[ModelVersion.State.CANDIDATE, ModelVersion.State.SHADOW],
        )
        .values_list("model__model_version", flat=True)
        .first()
    )


_not_ahead: set[str] = set()  # versions this process said (logged) it does not load ahead


def preload_versions(*, crops_within_s: float = 0.0) -> list[str]:
    """What a decision worker process should have loaded: the active version (loaded at process
    start too; here again when that failed, or after a switch), then the promotion target; none when
    this process embedded no door crop in the last ``crops_within_s`` seconds (0: whatever it decides):
    it loads an embedder when it first needs one."""
    try:
        versions = [active_model().model_version]
    except RegistryError:
        versions = []
    target = promotion_target()
    if target and target not in versions:
        versions.append(target)
    if door_crops_embedded(crops_within_s):
        _not_ahead.difference_update(versions)
        return versions
    for version in set(versions) - _not_ahead:
        logger.info("embedder preload: %s is not loaded ahead: this process embedded no door crop in the last "
                    "%.0f s (an embedding-mode detection is decided in its device's version)",
                    version, crops_within_s)  # fmt: skip
    _not_ahead.update(versions)
    return []


class EmbedderPreloader:
    """Builds the embedders of :func:`preload_versions` ahead of need, in one background thread."""

    def __init__(
        self,
        *,
        interval_s: float,
        retry_s: float,
        versions: Callable[[], list[str]] = preload_versions,
        kept: Callable[[], list[str]] = kept_versions,
        load: Callable[[str], Embedder] = version_embedder,
        lock_path: Path | None = None,
    ) -> None:
        self.interval_s = max(0.1, float(interval_s))
        self.retry_s = max(0.0, float(retry_s))
        self._versions = versions
        self._kept = kept
        self._load = load
        self._lock_path = lock_path
        self._lock_warned = False
        self.loaded: dict[str, Embedder] = {}  # what this preloader built (or found built)
        self._failed_at: dict[str, float] = {}  # version -> time.monotonic() of its last failed load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[str]:
        """One pass in the calling thread: drop what it built that is no longer kept; then, unless
        another process of the machine is loading, build each version to preload that is not built
        (one that failed less than ``retry_s`` ago waits) and run one face through it. Returns the
        versions built now. Never raises (a failure is logged)."""
        try:
            wanted = self._versions()
            keep = set(wanted) | set(self._kept())
        except Exception as exc:  # the database away: the next pass asks again
            logger.warning("embedder preload: cannot read the model registry (%s); retrying", exc)
            return []
        for version in [v for v in self.loaded if v not in keep]:
            embedder_forget(self.loaded.pop(version))
            logger.info("embedder preload: %s dropped (no longer kept)", version)
        with self._turn() as ours:
            return [v for v in wanted if self._build(v)] if ours else []

    def _build(self, version: str) -> bool:
        failed_at = self._failed_at.get(version)
        if failed_at is not None and time.monotonic() - failed_at < self.retry_s:
            return False
        started = time.perf_counter()
        try:
            embedder = self._load(version)  # once built, a dictionary look-up and a registry read
            if embedder is self.loaded.get(version):
                return False
            size = embedder.input_size  # one face through it: the first inference is slower too
            embedder.embed(np.zeros((1, size, size, 3), dtype=np.uint8))
        except Exception:
            self._failed_at[version] = time.monotonic()
            logger.exception("embedder preload: could not load %s; trying again in %.0f s", version, self.retry_s)
            return False
        self._failed_at.pop(version, None)
        previous = self.loaded.get(version)
        if previous is not None:  # the version was registered again with other files: the old one goes
            embedder_forget(previous)
        self.loaded[version] = embedder
        logger.info("embedder preload: %s ready (%.2f s)", version, time.perf_counter() - started)
        return True

    @contextmanager
    def _turn(self) -> Iterator[bool]:
        """The machine's load turn (``lock_path``, none: always ours): True when this pass holds it."""
        if self._lock_path is None:
            yield True
            return
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if not self._lock_warned:
                self._lock_warned = True
                logger.warning("embedder preload: no lock file %s (%s); loading without one", self._lock_path, exc)
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False  # another process is loading: next pass
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def start(self) -> None:
        """Run :meth:`check` every ``interval_s`` in a daemon thread; returns at once. The first pass
        too waits ``interval_s``: the thread starts in ``worker_process_init``, whose other receiver
        (Celery's Django fixup) closes the descriptors of the connections the process inherited; a
        connection this thread opened meanwhile could get one of their numbers."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="embedder-preload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread after its current pass (a load under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # check() catches what a load raises; nothing else may end the thread
                logger.exception("embedder preload: pass failed")
            finally:
                connection.close()  # this thread's own connection: not held between passes


_preloader: EmbedderPreloader | None = None


def embedder_preload_start(
    *, interval_s: float, retry_s: float, lock_path: Path, crop_window_s: float = 0.0
) -> EmbedderPreloader:
    """Start this process's preloader (once per process; a decision worker at start); a promotion's
    target is loaded ahead when the process embedded a door's crop in the last ``crop_window_s``."""
    global _preloader
    if _preloader is None:
        _preloader = EmbedderPreloader(
            interval_s=interval_s, retry_s=retry_s, lock_path=lock_path,
            versions=functools.partial(preload_versions, crops_within_s=crop_window_s),
        )  # fmt: skip
    _preloader.start()
    return _preloader
