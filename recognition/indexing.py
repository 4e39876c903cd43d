"""The gallery's HNSW indexes: what each model version's index was built with, and rebuilding it.

The migration builds every model version's partial index with ``m = 16, ef_construction = 64``:
small, quick to build, and enough for galleries up to a few hundred thousand photos. A denser graph
answers big galleries better at the price of a longer build and a bigger index
(``bench/search_scale.py``, 1M face-like photos, 2 cores: m=16 builds in 6 min, 793 MB, and the
gallery search finds the exact nearest photo for 98.3 % of probes; m=32, ef_construction=128 builds
in 23 min, 980 MB, and finds it for 99.5 %, p50 7.6 ms). :func:`hnsw_rebuild`
builds the new index next to the old one (``CREATE INDEX CONCURRENTLY``: enrolment and door
decisions go on meanwhile), then swaps it in under the old name in one short transaction.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection

from accessctl.project.dbroles import owner_connection
from recognition.gallery import dim_for
from recognition.models import FaceEmbedding

logger = logging.getLogger(__name__)

_TABLE = FaceEmbedding._meta.db_table
_MEMORY = re.compile(r"^\d+\s*(kB|MB|GB)$")
_OPTION = re.compile(r"(\w+)\s*=\s*'?(\d+)'?")


class IndexBuildError(ValueError):
    """Bad build parameters."""


@dataclass(frozen=True)
class HnswIndex:
    """One model version's gallery index as PostgreSQL has it."""

    model_version: str
    name: str
    m: int
    ef_construction: int
    size_bytes: int
    valid: bool
    rows: int
    build_s: float | None = None


def index_name(model_version: str) -> str:
    """The migration's name for ``model_version``'s index (kept across rebuilds)."""
    return "face_hnsw_" + model_version.replace("-", "_").replace(".", "_")[:40]


def create_sql(model_version: str, *, m: int, ef_construction: int, name: str | None = None) -> str:
    """``CREATE INDEX CONCURRENTLY`` of the partial HNSW index the gallery queries use."""
    dim = dim_for(model_version)  # also checks the version is a known, safe literal
    if not 2 <= m <= 100:
        raise IndexBuildError("m must be between 2 and 100 (pgvector's limits)")
    if not max(4, 2 * m) <= ef_construction <= 1000:
        raise IndexBuildError("ef_construction must be between 2 * m and 1000")
    return (
        f"CREATE INDEX CONCURRENTLY {name or index_name(model_version)} ON {_TABLE} "
        f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) "
        f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) "
        f"WHERE model_version = '{model_version}'"
    )


def hnsw_index(model_version: str) -> HnswIndex | None:
    """The current index of ``model_version`` (None when there is none)."""
    name = index_name(model_version)
    dim_for(model_version)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.reloptions, pg_relation_size(c.oid), i.indisvalid FROM pg_class c "
            "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = %s",
            [name],
        )
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(f"SELECT count(*) FROM {_TABLE} WHERE model_version = %s", [model_version])
        rows = cursor.fetchone()[0]
    options = dict(_OPTION.match(option).groups() for option in row[0] or [] if _OPTION.match(option))
    return HnswIndex(
        model_version=model_version,
        name=name,
        m=int(options.get("m", 16)),  # pgvector's defaults when built without them
        ef_construction=int(options.get("ef_construction", 64)),
        size_bytes=int(row[1]),
        valid=bool(row[2]),
        rows=int(rows),
    )


@contextlib.contextmanager
def _one_transaction(cursor: Any) -> Iterator[None]:
    """One explicit transaction on a connection outside Django's transaction management."""
    cursor.execute("BEGIN")
    try:
        yield
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


BuildProgress = Callable[[str, int, int], None]  # phase, done, total (blocks, else tuples)


@contextlib.contextmanager
def _build_watched(pid: int, progress: BuildProgress | None) -> Iterator[None]:
    """Report PostgreSQL's ``pg_stat_progress_create_index`` of backend ``pid`` twice a second."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        watcher = owner_connection()  # the build's role: it sees the build's progress; made in this thread
        try:
            with watcher.cursor() as cursor:
                while not stop.wait(0.5):
                    cursor.execute(
                        "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total "
                        "FROM pg_stat_progress_create_index WHERE pid = %s",
                        [pid],
                    )
                    row = cursor.fetchone()
                    if row is not None:
                        phase, blocks_done, blocks_total, tuples_done, tuples_total = row
                        done, total = (blocks_done, blocks_total) if blocks_total else (tuples_done, tuples_total)
                        progress(str(phase), int(done or 0), int(total or 0))
        except Exception:  # progress is a nicety: never fail the build over it
            logger.debug("index build progress unavailable", exc_info=True)
        finally:
            watcher.close()

    thread = threading.Thread(target=watch, name="index-build-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def hnsw_rebuild(
    model_version: str,
    *,
    m: int,
    ef_construction: int,
    maintenance_work_mem: str = "1GB",
    parallel_workers: int = 2,
    progress: BuildProgress | None = None,
) -> HnswIndex:
    """Build ``model_version``'s index with ``m`` / ``ef_construction`` beside the current one, then
    swap it in. Searches use the old index until the swap; a failed build leaves the old one.
    ``progress(phase, done, total)`` is called twice a second while the index builds."""
    if not _MEMORY.match(maintenance_work_mem):
        raise IndexBuildError("maintenance_work_mem must look like 512MB or 2GB")
    if not 0 <= parallel_workers <= 64:
        raise IndexBuildError("parallel_workers must be between 0 and 64")
    if connection.in_atomic_block:
        raise IndexBuildError("an index is built concurrently, outside any transaction")
    name = index_name(model_version)
    building = name[:55] + "_build"
    owner = owner_connection()  # an index is schema: built with the owner's rights (accessctl/project/dbroles.py)
    try:
        with owner.cursor() as cursor:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {building}")  # what a failed build left
            cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
            cursor.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)", [str(parallel_workers)])
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
            started = time.perf_counter()
            try:
                with _build_watched(pid, progress):
                    cursor.execute(create_sql(model_version, m=m, ef_construction=ef_construction, name=building))
            except Exception:
                cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {building}")
                raise
            finally:
                cursor.execute("RESET maintenance_work_mem")
                cursor.execute("RESET max_parallel_maintenance_workers")
            build_s = time.perf_counter() - started
            with _one_transaction(cursor):
                cursor.execute(f"DROP INDEX IF EXISTS {name}")
                cursor.execute(f"ALTER INDEX {building} RENAME TO {name}")
    finally:
        owner.close()
    rebuilt = hnsw_index(model_version)
    assert rebuilt is not None
    return HnswIndex(**{**rebuilt.__dict__, "build_s": build_s})


#: What the migration builds every version's index with (module docstring).
DEFAULT_M, DEFAULT_EF_CONSTRUCTION = 16, 64


def hnsw_ensure(model_version: str) -> HnswIndex:
    """``model_version``'s index, built (concurrently, with the migration's parameters) when it is
    missing or a failed build left it invalid; an existing valid index is kept as it is."""
    index = hnsw_index(model_version)
    if index is not None and index.valid:
        return index
    logger.info("building the HNSW index of %s", model_version)
    return hnsw_rebuild(model_version, m=DEFAULT_M, ef_construction=DEFAULT_EF_CONSTRUCTION)


def hnsw_drop(model_version: str) -> bool:
    """Drop ``model_version``'s index (concurrently: searches of other versions go on). Returns
    whether there was one. Call it outside any transaction that touched the gallery table."""
    if hnsw_index(model_version) is None:  # also checks the version is a known, safe literal
        return False
    name = index_name(model_version)
    owner = owner_connection()
    try:
        with owner.cursor() as cursor:
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    finally:
        owner.close()
    logger.warning("HNSW index %s of %s dropped", name, model_version)
    return True
