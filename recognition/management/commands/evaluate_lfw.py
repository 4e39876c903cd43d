"""``manage.py evaluate_lfw``: LFW 10-fold verification (and optionally identification)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from recognition import evaluation
from recognition.gallery import person_score_rule
from recognition.management.lfw_options import lfw_option_add, lfw_root_locate


class Command(BaseCommand):
    help = "Evaluate embedder backends on LFW: 10-fold accuracy, TAR@FAR, identification."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", action="append", dest="backends", help="repeatable; default: sface")
        lfw_option_add(parser)
        parser.add_argument("--cache-dir", default=None, help="default: var/cache")
        parser.add_argument("--flip", action="store_true", help="average with the mirrored crop")
        parser.add_argument("--standardization", choices=["fixed", "prewhiten"], default=None)
        parser.add_argument("--identification", action="store_true", help="also run the identification benchmark")
        parser.add_argument("--json", action="store_true", help="print the reports as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        reports: list[dict[str, Any]] = []
        lfw_root = lfw_root_locate(options["lfw_root"])
        for backend in options["backends"] or ["sface"]:
            opts: dict[str, Any] = {}
            if options["flip"]:
                opts["flip"] = True
            if options["standardization"] and backend.startswith("facenet"):
                opts["standardization"] = options["standardization"]
            report = evaluation.evaluate_lfw(backend, lfw_root=lfw_root, cache_dir=options["cache_dir"], **opts)
            reports.append(report.as_dict())
            if not options["json"]:
                self.stdout.write(report.summary())
            if options["identification"]:
                ident = evaluation.identification_benchmark(
                    backend,
                    lfw_root=lfw_root,
                    cache_dir=options["cache_dir"],
                    person_score=str(person_score_rule()),
                    **opts,
                )
                reports.append(ident.as_dict())
                if not options["json"]:
                    self.stdout.write(ident.summary())
        if options["json"]:
            self.stdout.write(json.dumps(reports, indent=2))
