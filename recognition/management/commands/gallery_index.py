"""``manage.py gallery_index``: show the gallery's HNSW indexes; rebuild one with other parameters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from accessctl.project.progress import progress_bar
from recognition.gallery import GalleryError
from recognition.indexing import IndexBuildError, hnsw_index, hnsw_rebuild
from recognition.models import EMBEDDING_DIMS


class Command(BaseCommand):
    help = (
        "Show each model version's HNSW gallery index (m, ef_construction, size). With --rebuild, build "
        "one again with other parameters beside the current one and swap it in (searches go on meanwhile). "
        "Galleries of ~1M photos: --m 32 --ef-construction 128."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rebuild", metavar="MODEL_VERSION", default=None, help="the model version to rebuild")
        parser.add_argument("--m", type=int, default=16, help="links per node (default 16)")
        parser.add_argument("--ef-construction", type=int, default=64, help="build candidate list (default 64)")
        parser.add_argument("--maintenance-work-mem", default="1GB", help="memory for the build (e.g. 2GB)")
        parser.add_argument("--workers", type=int, default=2, help="parallel maintenance workers")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rebuild"]:
            self.stdout.write(
                f"building the {options['rebuild']} index (m={options['m']}, "
                f"ef_construction={options['ef_construction']}) beside the current one..."
            )
            bar = progress_bar(total=100, desc=f"index {options['rebuild']}", unit="%", stream=self.stderr._out)

            def progress(phase: str, done: int, total: int) -> None:
                if total:
                    bar.n = min(100, done * 100 // total)
                bar.set_postfix_str(phase)  # redraws

            try:
                index = hnsw_rebuild(
                    options["rebuild"],
                    m=options["m"],
                    ef_construction=options["ef_construction"],
                    maintenance_work_mem=options["maintenance_work_mem"],
                    parallel_workers=options["workers"],
                    progress=progress,
                )
                bar.n = 100
                bar.set_postfix_str("done")
            except (GalleryError, IndexBuildError, DatabaseError) as exc:
                raise CommandError(f"rebuild failed, the current index is unchanged: {exc}") from exc
            finally:
                bar.close()
            self.stdout.write(self.style.SUCCESS(f"rebuilt in {index.build_s:.1f} s"))
        for model_version in sorted(EMBEDDING_DIMS):
            index = hnsw_index(model_version)
            if index is None:
                self.stdout.write(f"{model_version}: no index (searches would scan the whole table)")
                continue
            self.stdout.write(
                f"{model_version}: {index.name} m={index.m} ef_construction={index.ef_construction} "
                f"{index.size_bytes / 2**20:.1f} MB, {index.rows} embeddings"
                + ("" if index.valid else " INVALID (a failed build; rebuild it)")
            )
