"""``manage.py calibrate_liveness --data DIR --target-apcer 0.01``: the liveness threshold for a target APCER.

The threshold holds the target overall and for every subject of DIR. It is printed; with
``--save`` it is written to ``<var dir>/liveness_calibration.json``, which ``evaluate_liveness``
uses by default. (Per-door thresholds come with the door policy.)
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from faceengine.liveness import evaluation
from recognition.management.liveness_options import calibration_path, folder_score, liveness_options_add


class Command(BaseCommand):
    help = "Compute the liveness threshold giving a target APCER (attacks accepted), overall and per subject."

    def add_arguments(self, parser: CommandParser) -> None:
        liveness_options_add(parser)
        parser.add_argument("--target-apcer", type=float, default=0.01)
        parser.add_argument("--save", action="store_true", help="write it to the var dir for evaluate_liveness")

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["target_apcer"]
        if not 0 <= target < 1:
            raise CommandError("--target-apcer must be in [0, 1)")
        scorer, scored = folder_score(options, self.stderr._out)
        try:
            threshold = evaluation.calibrate(scored, target)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        report = evaluation.pad_report(scored, threshold, model_version=scorer.model_version)
        self.stdout.write(repr(threshold))
        self.stderr.write(report.summary())
        if report.n_attack and target < 1 / report.n_attack:
            self.stderr.write("warning: too few attacks to resolve this APCER; the threshold is conservative")
        if options["save"]:
            path = calibration_path()
            evaluation.calibration_save(
                path,
                threshold=threshold,
                target_apcer=target,
                model_version=scorer.model_version,
                report=report,
                data=str(options["data"]),
            )
            self.stderr.write(f"saved to {path}")
