"""``manage.py evaluate_door --data DIR``: door behaviour (real enrolment, real matcher) on a scratch gallery."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from faceengine.embedder import EmbedderConfigError
from recognition.door_evaluation import DoorEvaluationError, door_evaluate_rules, door_fused_offsets_store
from recognition.engine import version_embedder
from recognition.gallery import PersonScore
from recognition.model_registry import BundleRefused, RegistryError
from recognition.track_fusion import TRACK_FUSION_RULE, FusionRule


class Command(BaseCommand):
    help = (
        "Enrol the first photos of most identities of DIR/<identity>/*.jpg, probe with the others and with "
        "held-out strangers, and print top-1, enrolled rejected, strangers accepted, wrong person admitted, "
        "failure to detect / enrol and ms per probe. The gallery is a rolled-back transaction: nothing is kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--data", required=True, type=Path, help="folder of <identity>/*.jpg")
        parser.add_argument("--enrol", type=int, default=3, help="photos enrolled per identity (default 3)")
        parser.add_argument("--stranger-share", type=float, default=0.25, help="identities held out (default 0.25)")
        parser.add_argument(
            "--seed",
            default="0",
            help="seed of the enrolled/stranger split; several as 0,1,2: one enrolment each, attempts counted together",
        )
        parser.add_argument(
            "--probes-per-attempt",
            default="1",
            help="K photos per attempt, fused as a track (default 1); several as 1,3: one report each",
        )
        parser.add_argument(
            "--fusion",
            default=str(TRACK_FUSION_RULE),
            help=f"how K > 1 photos are fused: {', '.join(FusionRule)} or all (one report each; default: the "
            f"server's rule, {TRACK_FUSION_RULE})",
        )
        parser.add_argument(
            "--person-score",
            default=None,
            help="how people are scored: mean_template, best_photo or all (one report each, the same gallery; "
            "default: the site's, ACCESSCTL_PERSON_SCORE)",
        )
        parser.add_argument(
            "--model-version",
            default=None,
            help="a registered model version in any state (a candidate, before promoting it); default: the active one",
        )
        parser.add_argument(
            "--threshold",
            default=None,
            help="sweep: one report per single-probe threshold, e.g. 0.45,0.476,0.5 (default: the site's threshold)",
        )
        parser.add_argument("--limit-identities", type=int, default=None, help="the first N identities (by name)")
        parser.add_argument(
            "--cache-dir",
            type=Path,
            default=None,
            help="keep probe embeddings there (by photo digest and model version) and reuse them next time",
        )
        parser.add_argument(
            "--store-fused-offsets",
            action="store_true",
            help="store the fused-threshold offsets measured for K > 1 in the model's calibration (used by the "
            "server for tracks of that many probes)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        quiet = options["json"] or options["verbosity"] < 2

        def progress(message: str) -> None:
            if not quiet:
                self.stderr.write(message)

        try:
            try:
                ks = [int(k) for k in str(options["probes_per_attempt"]).split(",")]
                seeds = [int(seed) for seed in str(options["seed"]).split(",")]
            except ValueError:
                raise DoorEvaluationError("--probes-per-attempt and --seed take integers, e.g. 3 or 1,3") from None
            try:
                sweep = [float(t) for t in options["threshold"].split(",")] if options["threshold"] else None
            except ValueError:
                raise DoorEvaluationError("--threshold takes numbers, e.g. 0.45,0.476,0.5") from None
            if sweep and options["store_fused_offsets"]:
                # an offset is measured at the threshold in use: a sweep would store one per threshold
                raise DoorEvaluationError("--store-fused-offsets measures at the site's threshold: no --threshold")
            fusions = list(FusionRule) if options["fusion"] == "all" else options["fusion"].split(",")
            scoring = options["person_score"]
            person_scores = list(PersonScore) if scoring == "all" else (scoring.split(",") if scoring else None)
            embedder = None
            if options["model_version"]:
                try:
                    embedder = version_embedder(options["model_version"])
                except (RegistryError, EmbedderConfigError, BundleRefused) as exc:
                    raise DoorEvaluationError(f"model version {options['model_version']}: {exc}") from exc
            reports = door_evaluate_rules(
                data=options["data"],
                embedder=embedder,
                enrol=options["enrol"],
                stranger_share=options["stranger_share"],
                seed=seeds,
                probes_per_attempt=ks,
                limit_identities=options["limit_identities"],
                progress=progress,
                fusions=fusions,
                cache_dir=options["cache_dir"],
                person_scores=person_scores,
                thresholds=sweep,
            )
            stored = door_fused_offsets_store(reports) if options["store_fused_offsets"] else None
        except DoorEvaluationError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            found = [report.as_dict() for report in reports]
            self.stdout.write(json.dumps(found[0] if len(found) == 1 else found))
        else:
            self.stdout.write("\n".join(report.summary() for report in reports))
            if stored is not None:
                self.stdout.write(f"fused offsets stored: {stored}")
