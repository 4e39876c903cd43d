"""What ``evaluate_liveness`` and ``calibrate_liveness`` share: options, scoring a folder, the calibration file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import CommandError, CommandParser

from accessctl.project.progress import progress_bar
from faceengine.detector import FaceDetector
from faceengine.liveness import evaluation
from faceengine.liveness.scorer import LivenessScorer, get_scorer


def liveness_options_add(parser: CommandParser) -> None:
    parser.add_argument("--data", required=True, metavar="DIR", help="live/<subject>/*.jpg, print/<subject>/*.jpg")
    parser.add_argument("--every", type=int, default=1, metavar="K", help="use one photo in K (quicker, rougher)")
    parser.add_argument("--threads", type=int, default=2, help="detector, liveness threads (default 2: a door device)")
    parser.add_argument(
        "--min-face-px", type=int, default=None, help="smallest face detected (default: RECOGNITION_MIN_FACE_PX)"
    )
    parser.add_argument(
        "--detector",
        choices=("mtcnn", "yunet"),
        default="yunet",
        help="face detector (default yunet: the edge agent's default, whose scores doors judge)",
    )
    parser.add_argument(
        "--min-detector-score",
        type=float,
        default=evaluation.MIN_DETECTOR_SCORE,
        help="score the largest face the detector scores at least this (default %(default)s: the edge agent's "
        "[detection] min_detector_score, which sends no other face)",
    )
    parser.add_argument(
        "--boxes",
        choices=("auto", "detector", "onet"),
        default="auto",
        help="box the liveness window is cut around, as the edge agent's [liveness] boxes "
        "(auto: O-Net's redrawing with yunet, the detector's own with mtcnn)",
    )


def calibration_path() -> Path:
    """Where ``calibrate_liveness --save`` writes the threshold (read back by ``evaluate_liveness``)."""
    return Path(settings.VAR_DIR) / evaluation.CALIBRATION_FILENAME


def detector_for(options: dict[str, Any], min_face: int) -> evaluation.Detector:
    """The ``--detector`` with the ``--boxes`` the liveness windows are cut around."""
    if options.get("detector", "yunet") == "yunet":
        from faceengine.yunet import YunetDetector

        detector: evaluation.Detector = YunetDetector(min_face_size=min_face, num_threads=options["threads"])
    else:
        detector = FaceDetector(min_face_size=min_face, num_threads=options["threads"])
    boxes = options.get("boxes", "auto")
    if boxes == "onet" or (boxes == "auto" and options.get("detector", "yunet") == "yunet"):
        from faceengine.onet_refine import onet_boxes_detector

        detector = onet_boxes_detector(detector)
    return detector


def folder_score(options: dict[str, Any], stream: Any) -> tuple[LivenessScorer, list[evaluation.ScoredPresentation]]:
    """Detect and score every presentation of ``--data`` (a progress bar on a terminal)."""
    try:
        presentations = evaluation.dataset_scan(options["data"], every=options["every"])
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from exc
    if not presentations:
        raise CommandError(f"no photos under {options['data']}")
    scorer = get_scorer(num_threads=options["threads"])
    min_face = options["min_face_px"] or settings.RECOGNITION_MIN_FACE_PX
    detector = detector_for(options, min_face)
    with progress_bar(total=len(presentations), desc="liveness", unit="photo", stream=stream) as bar:
        scored = evaluation.presentations_score(
            presentations,
            scorer,
            detector,
            progress=lambda _done: bar.update(1),
            min_detector_score=options.get("min_detector_score", evaluation.MIN_DETECTOR_SCORE),
        )
    return scorer, scored
