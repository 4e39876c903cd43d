"""``manage.py evaluate_liveness --data DIR``: APCER/BPCER (ISO/IEC 30107-3) of the liveness scorer."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from faceengine.liveness import MODEL_VERSION, evaluation
from faceengine.liveness.fusion import FUSIONS
from recognition.management.liveness_options import calibration_path, folder_score, liveness_options_add


class Command(BaseCommand):
    help = "Evaluate liveness on live/<subject>/*.jpg and print/<subject>/*.jpg: APCER, BPCER, ms per face."

    def add_arguments(self, parser: CommandParser) -> None:
        liveness_options_add(parser)
        parser.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="default: the stored calibration (calibrate_liveness --save), else for the shipped networks the "
            "doors' threshold (ACCESSCTL_LIVENESS_THRESHOLD or the built-in calibration)",
        )
        parser.add_argument(
            "--track-frames",
            type=int,
            default=0,
            metavar="N",
            help="judge tracks of N consecutive photos of a capture, fused as the edge agent fuses them, "
            "instead of single photos (0: single photos)",
        )
        parser.add_argument("--fusion", choices=FUSIONS, default="median", help="with --track-frames (default median)")
        parser.add_argument("--fuse-top-k", type=int, default=3, help="with --fusion top_k (default 3)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        scorer, scored = folder_score(options, self.stderr._out)
        threshold = options["threshold"]
        if threshold is None:
            threshold = evaluation.calibration_load(calibration_path(), model_version=scorer.model_version)
            if threshold is None and scorer.model_version == MODEL_VERSION:
                threshold = settings.LIVENESS_THRESHOLD  # what the doors apply
                self.stderr.write(f"no stored liveness calibration: the doors' threshold {threshold}")
            elif threshold is None:
                threshold = evaluation.DEFAULT_THRESHOLD
                self.stderr.write(f"no liveness calibration for {scorer.model_version}: threshold {threshold}")
        if options["track_frames"] < 0:
            raise CommandError("--track-frames must be >= 0")
        if options["track_frames"]:
            scored = evaluation.tracks_fuse(
                scored, options["track_frames"], options["fusion"], k=max(options["fuse_top_k"], 1)
            )
        report = evaluation.pad_report(scored, threshold, model_version=scorer.model_version)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(report.summary())
