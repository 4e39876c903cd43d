"""``manage.py calibrate_threshold``: the match threshold for a target false-match rate.

Genuine/impostor cosine scores come from LFW pairs (default) or from a labelled folder
``<folder>/<person>/*.jpg``. The threshold is stored through
``recognition.calibration.store_threshold(...)`` when that function exists, else printed.
"""

from __future__ import annotations

import importlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from faceengine.registry import DEFAULT_BACKEND, get_embedder
from recognition import evaluation
from recognition.engine import model_files_options
from recognition.gallery import PersonScore, person_score_rule
from recognition.management.lfw_options import lfw_option_add, lfw_root_locate
from recognition.metrics import thresholds_for_gallery_sizes


class Command(BaseCommand):
    help = "Compute the similarity threshold giving a target false-match rate (FMR)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default=None, help="embedder backend (default: sface)")
        parser.add_argument("--target-fmr", type=float, default=1e-3)
        parser.add_argument("--folder", default=None, help="labelled images <folder>/<person>/*.jpg")
        lfw_option_add(parser)
        parser.add_argument("--cache-dir", default=None)
        parser.add_argument("--dry-run", action="store_true", help="print only, do not store")
        parser.add_argument(
            "--target-stranger-acceptance",
            type=float,
            default=0.005,
            help="for the gallery-size report: strangers accepted by a whole gallery (default 0.005)",
        )
        parser.add_argument(
            "--gallery-sizes",
            default="100,1000,10000",
            help="people in the gallery, for the report (default 100,1000,10000)",
        )
        parser.add_argument(
            "--photos-per-person",
            type=int,
            default=3,
            help="for the report when people are scored by their best photo (default 3); with the mean template: 1",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["target_fmr"]
        if not 0 < target < 1:
            raise CommandError("--target-fmr must be in (0, 1)")
        name = options["backend"] or DEFAULT_BACKEND
        embedder = get_embedder(name, **model_files_options(name))
        if options["folder"]:
            dist = evaluation.folder_distributions(options["folder"], embedder, cache_dir=options["cache_dir"])
        else:
            dist = evaluation.lfw_pair_distributions(
                embedder, lfw_root=lfw_root_locate(options["lfw_root"]), cache_dir=options["cache_dir"]
            )
        if dist.genuine.size == 0 or dist.impostor.size == 0:
            raise CommandError("need at least one genuine and one impostor pair")
        threshold = dist.threshold_for_fmr(target)
        details = {
            "source": dist.source,
            "genuine_pairs": int(dist.genuine.size),
            "impostor_pairs": int(dist.impostor.size),
            "fnmr": dist.fnmr_at(threshold),
            "fmr": float((dist.impostor >= threshold).mean()),
            "min_resolvable_fmr": 1.0 / dist.impostor.size,
        }
        self.stdout.write(
            f"{embedder.model_version}: threshold {threshold:.4f} for FMR {target:g} "
            f"(measured FMR {details['fmr']:.2e}, FNMR {details['fnmr'] * 100:.2f}%, "
            f"{details['genuine_pairs']} genuine / {details['impostor_pairs']} impostor pairs from {dist.source})"
        )
        # A stranger is compared with every photo of everyone (best photo) or with one template per
        # person (mean template): the gallery-size figures use the scores of what is compared.
        rule = person_score_rule()
        templates = rule is PersonScore.MEAN_TEMPLATE
        impostor = dist.template_impostor if templates else dist.impostor
        if impostor is None or impostor.size == 0:
            raise CommandError("gallery-size report: no person has enough photos for a mean template")
        per_person = 1 if templates else options["photos_per_person"]
        try:
            sizes = [int(size) for size in str(options["gallery_sizes"]).split(",")]
            by_size = thresholds_for_gallery_sizes(
                impostor, target_acceptance=options["target_stranger_acceptance"], sizes=sizes,
                photos_per_person=per_person,
            )  # fmt: skip
        except ValueError as exc:
            raise CommandError(f"gallery-size report: {exc}") from exc
        details["by_gallery_size"] = {
            "target_stranger_acceptance": options["target_stranger_acceptance"],
            "photos_per_person": per_person,
            "person_score": str(rule),
            "impostor_scores": int(impostor.size),
            "thresholds": {str(size): value for size, value in by_size.items()},
        }
        for size, value in by_size.items():
            shown = f"{value:.4f}" if value is not None else "not resolvable with these pairs"
            self.stdout.write(
                f"  {size:>7d} people: threshold {shown} for {options['target_stranger_acceptance']:.2%} of strangers "
                "accepted"
            )
        if target < details["min_resolvable_fmr"]:
            self.stderr.write("warning: too few impostor pairs to resolve this FMR; threshold is conservative")
        if options["dry_run"]:
            return
        try:
            calibration = importlib.import_module("recognition.calibration")
        except ImportError:
            calibration = None
        store = getattr(calibration, "store_threshold", None)
        if store is None:
            self.stdout.write("recognition.calibration.store_threshold not available: not stored")
            return
        store(model_version=embedder.model_version, threshold=threshold, target_fmr=target, details=details)
        self.stdout.write("stored")
