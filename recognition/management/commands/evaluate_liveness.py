"""``manage.py evaluate_liveness --data DIR``: APCER/BPCER (ISO/IEC 30107-3) of the liveness scorer."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from faceengine.liveness import MODEL_VERSION, evaluation
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
        report = evaluation.pad_report(scored, threshold, model_version=scorer.model_version)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(report.summary())
