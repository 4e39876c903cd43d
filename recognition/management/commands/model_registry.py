"""``manage.py model_registry``: list, register, verify and move model versions (recognition/model_registry.py).

manage.py model_registry list
manage.py model_registry register --backend sface [--version V] [--file PATH ...] [--option flip=true]
                                  [--licence TEXT] [--agent-versions '>=0.1.0'] [--lfw 99.42] [--measure]
manage.py model_registry verify [VERSION ...]          (default: every signed version)
manage.py model_registry shadow|candidate|retire|activate VERSION [--force] [--note TEXT]
manage.py model_registry shadow-report VERSION [--json]   (how it decided in shadow, beside the active one)
manage.py model_registry promote VERSION [--build-only] [--note TEXT]   (gallery built in the background)
manage.py model_registry pause|resume VERSION                          (its gallery build)
manage.py model_registry progress [VERSION ...]

``retire`` removes the version's vectors and HNSW index; it is refused while devices report the
version in their heartbeats (``--force`` overrides, recorded) and for the active version.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accessctl.exceptions import DomainError
from accessctl.tokens import SystemActor
from faceengine.embedder import EmbedderError
from recognition.calibration import CalibrationError, threshold_for
from recognition.engine import embedder_speed_ms
from recognition.gallery_migration import (
    gallery_migration_pause,
    gallery_migration_progress,
    gallery_migration_resume,
    gallery_migration_start,
)
from recognition.model_registry import model_version_register, model_version_transition, model_version_verify
from recognition.models import GalleryMigration, ModelVersion
from recognition.shadow import shadow_summary

MOVES = {"shadow": "shadow", "candidate": "candidate", "retire": "retired", "activate": "active"}


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CommandError(f'--option {text!r}: use key=value (value as JSON: true, 3, "x")')
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


class Command(BaseCommand):
    help = "List, register (hash + sign), verify and change the state of face-model versions."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="every version with its state, files and figures")
        register = sub.add_parser("register", help="hash the weight files, record the version, sign its manifest")
        register.add_argument("--backend", required=True)
        register.add_argument("--version", default=None, help="model version (default: the backend's)")
        register.add_argument("--file", action="append", default=[], help="a weight file (default: the backend's)")
        register.add_argument("--option", action="append", default=[], help="backend option key=value")
        register.add_argument("--licence", default="")
        register.add_argument("--source", default="")
        register.add_argument("--agent-versions", default="", help="e.g. '>=0.1.0, <0.3'")
        register.add_argument("--lfw", type=float, default=None, help="LFW accuracy, percent (evaluate_lfw)")
        register.add_argument("--measure", action="store_true", help="measure ms per face on this machine")
        verify = sub.add_parser("verify", help="check signatures and file hashes as a device would")
        verify.add_argument("versions", nargs="*")
        report = sub.add_parser("shadow-report", help="agreement with the active version and both score histograms")
        report.add_argument("version")
        report.add_argument("--json", action="store_true", help="the figures as JSON (what the API answers)")
        for name in MOVES:
            move = sub.add_parser(name, help=f"move a version to {MOVES[name]}")
            move.add_argument("version")
            move.add_argument(
                "--force", action="store_true",
                help="activate although the gallery is incomplete; retire although devices still run it",
            )  # fmt: skip
            move.add_argument("--note", default="")
        promote = sub.add_parser("promote", help="build the version's gallery in the background, then activate it")
        promote.add_argument("version")
        promote.add_argument("--build-only", action="store_true", help="build the gallery, do not activate")
        promote.add_argument("--note", default="")
        for name in ("pause", "resume"):
            sub.add_parser(name, help=f"{name} the version's gallery build").add_argument("version")
        progress = sub.add_parser("progress", help="the gallery builds: done/total, photos/s, time left")
        progress.add_argument("versions", nargs="*")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"_{options['action'].replace('-', '_')}", self._move)(options)
        except DomainError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None

    def _get(self, version: str) -> ModelVersion:
        model = ModelVersion.objects.filter(model_version=version).first()
        if model is None:
            raise CommandError(f"no model version {version!r} (manage.py model_registry list)")
        return model

    def _list(self, options: dict[str, Any]) -> None:
        for model in ModelVersion.objects.order_by("model_version"):
            try:
                threshold: float | None = threshold_for(model.model_version)
            except CalibrationError:
                threshold = None
            figures = ", ".join(
                f"{label} {value}"
                for label, value in (
                    ("LFW %", model.lfw_accuracy),
                    ("ms/face", model.ms_per_face),
                    ("threshold", threshold),
                )
                if value is not None
            )
            files = (
                ", ".join(f"{f['name']} ({f['size']} B, {f['sha256'][:12]})" for f in model.files) or "not registered"
            )
            signed = "signed" if model.signature else "unsigned"
            self.stdout.write(f"{model.model_version:40} {model.state:9} {model.backend:16} {signed:8} {files}")
            if figures:
                self.stdout.write(f"{'':40} {figures}")

    def _register(self, options: dict[str, Any]) -> None:
        backend_options = dict(_option(o) for o in options["option"])
        ms = None
        if options["measure"]:
            try:
                ms = embedder_speed_ms(options["backend"], backend_options)
            except (EmbedderError, FileNotFoundError) as exc:
                raise CommandError(str(exc)) from exc
        model = model_version_register(
            backend=options["backend"], model_version=options["version"], options=backend_options,
            files=options["file"] or None, licence=options["licence"], source=options["source"],
            agent_versions=options["agent_versions"], lfw_accuracy=options["lfw"], ms_per_face=ms,
        )  # fmt: skip
        self.stdout.write(f"{model.model_version}: registered ({model.state}), {len(model.files)} file(s), signed")

    def _verify(self, options: dict[str, Any]) -> None:
        models = (
            [self._get(v) for v in options["versions"]]
            if options["versions"]
            else list(ModelVersion.objects.exclude(signature="").order_by("model_version"))
        )
        for model in models:
            model_version_verify(model=model)
            self.stdout.write(f"{model.model_version}: ok")

    def _promote(self, options: dict[str, Any]) -> None:
        migration = gallery_migration_start(
            model=self._get(options["version"]), actor=SystemActor(label="manage.py model_registry"),
            activate=not options["build_only"], note=options["note"],
        )  # fmt: skip
        self._show(migration)

    def _migration(self, version: str) -> GalleryMigration:
        migration = GalleryMigration.objects.select_related("model").filter(model=self._get(version)).first()
        if migration is None:
            raise CommandError(f"{version} has no gallery build (manage.py model_registry promote {version})")
        return migration

    def _pause(self, options: dict[str, Any]) -> None:
        actor = SystemActor(label="manage.py model_registry")
        self._show(gallery_migration_pause(migration=self._migration(options["version"]), actor=actor))

    def _resume(self, options: dict[str, Any]) -> None:
        actor = SystemActor(label="manage.py model_registry")
        self._show(gallery_migration_resume(migration=self._migration(options["version"]), actor=actor))

    def _progress(self, options: dict[str, Any]) -> None:
        migrations = (
            [self._migration(v) for v in options["versions"]]
            if options["versions"]
            else list(GalleryMigration.objects.select_related("model").order_by("model__model_version"))
        )
        for migration in migrations:
            self._show(migration)

    def _show(self, migration: GalleryMigration) -> None:
        migration.refresh_from_db()
        p = gallery_migration_progress(migration)
        eta = "-" if p.eta_s is None else f"{p.eta_s:.0f} s"
        then = "then active" if p.activate else "build only"
        self.stdout.write(
            f"{p.model_version}: gallery {p.state} ({then}), {p.done}/{p.total} photos ({p.percent:g} %), "
            f"{p.failed} failed, {p.photos_per_s:g} photos/s, ETA {eta}{', complete' if p.ready else ''}"
            + (f"; last error: {p.last_error}" if p.last_error else "")
        )

    def _move(self, options: dict[str, Any]) -> None:
        model = model_version_transition(
            model=self._get(options["version"]), to_state=MOVES[options["action"]],
            actor=SystemActor(label="manage.py model_registry"), force=options["force"], note=options["note"],
        )  # fmt: skip
        self.stdout.write(f"{model.model_version}: {model.state}")

    def _shadow_report(self, options: dict[str, Any]) -> None:
        figures = shadow_summary(model=self._get(options["version"]))
        if options["json"]:
            self.stdout.write(json.dumps(figures, indent=2, default=str))
            return
        agreement, confusion = figures["agreement"], figures["confusion"]
        self.stdout.write(f"{figures['model_version']} ({figures['state']}): {figures['samples']} shadow decisions")
        if figures["gallery_covers_active"] is False:
            self.stdout.write("its gallery does not cover the active version's people yet: no shadow decisions")
        if not figures["samples"]:
            return
        for label, key in (("same person", "person"), ("same decision", "decision"), ("both", "both")):
            self.stdout.write(f"  {label:14} {agreement[f'same_{key}']:6}  {100 * agreement[f'{key}_rate']:5.1f} %")
        self.stdout.write("  active -> shadow   grant   deny")
        for active in ("grant", "deny"):
            self.stdout.write(f"  {active:16} {confusion[active]['grant']:6} {confusion[active]['deny']:6}")
        self.stdout.write("  similarity        active shadow")
        for bucket in figures["similarity"]["buckets"]:
            if bucket["active"] or bucket["shadow"]:
                low = "" if bucket["low"] is None else f"{bucket['low']:.2f}"
                high = "" if bucket["high"] is None else f"{bucket['high']:.2f}"
                self.stdout.write(f"  {low:>5}..{high:<5}       {bucket['active']:6} {bucket['shadow']:6}")
