"""``manage.py reembed_gallery``: embed every accepted enrolment photo with another model."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.models import Person
from accessctl.project.progress import progress_bar
from faceengine.embedder import EmbedderError
from faceengine.registry import available_backends
from recognition.engine import active_embedder
from recognition.enrollment import embeddings_prune, person_reembed
from recognition.model_registry import RegistryError


class Command(BaseCommand):
    help = "Re-embed the accepted enrolment photos with an embedder backend (gallery migration)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backend", default=None, help="embedder backend (default: the registry's active model version)"
        )
        parser.add_argument("--person", type=int, default=None, help="only this person id")
        parser.add_argument("--force", action="store_true", help="recompute embeddings that already exist")
        parser.add_argument(
            "--prune-others", action="store_true", help="then delete the embeddings of every other model version"
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        backend = options["backend"]
        if backend is not None and backend not in available_backends():
            raise CommandError(f"unknown backend {backend!r}; available: {', '.join(available_backends())}")
        try:
            embedder = active_embedder(backend)
        except (EmbedderError, FileNotFoundError, RegistryError) as exc:
            raise CommandError(str(exc)) from exc
        person = None
        if options["person"] is not None:
            person = Person.objects.filter(pk=options["person"]).first()
            if person is None:
                raise CommandError(f"no person {options['person']}")
        bar = None

        def progress(done: int, total: int) -> None:
            nonlocal bar
            if options["no_progress"]:
                return
            if bar is None:
                bar = progress_bar(
                    total=total, unit="photo", desc=f"embed {embedder.model_version}", stream=self.stderr._out
                )
            bar.update(1)

        try:
            summary = person_reembed(embedder=embedder, person=person, force=options["force"], progress=progress)
        finally:
            if bar is not None:
                bar.close()
        self.stdout.write(
            f"{summary.model_version}: {summary.photos} accepted photos, {summary.created} embedded, "
            f"{summary.skipped} already done, {summary.failed} failed"
        )
        if summary.failed_photo_ids:
            self.stdout.write("  failed photos: " + ", ".join(str(i) for i in summary.failed_photo_ids[:50]))
        if options["prune_others"]:
            if summary.failed:
                raise CommandError("not pruning: some photos failed to embed")
            self.stdout.write(f"pruned {embeddings_prune(keep_model_version=embedder.model_version)} embeddings")
