"""Presentation-attack-detection figures (ISO/IEC 30107-3) of the liveness scorer on a folder.

The folder holds ``live/<subject>/*.jpg`` (bona fide presentations) and ``print/<subject>/*.jpg``
(attack presentations; one attack instrument species, printed photos), the layout of
``nuaa-dev``. Each photo is one presentation: the largest face the detector finds with a detector
score of at least ``min_detector_score`` (the edge agent's ``[detection] min_detector_score``: it
sends no other face) is scored on the full photo; a photo without such a face counts as
``not_detected`` and is left out of the rates
(ISO/IEC 30107-3 reports such failures to acquire separately from the PAD error rates).

- APCER: proportion of attack presentations classified as bona fide (score >= threshold).
- BPCER: proportion of bona fide presentations classified as attacks (score < threshold).

Both are given overall and per subject. :func:`threshold_for_apcer` gives the lowest threshold
whose APCER does not exceed a target; :func:`calibrate` applies it overall and to every subject.
The face detector is passed in (any callable ``rgb -> [face with .box (x1, y1, x2, y2)]``), so
that this module imports no detector and no Django.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from faceengine.liveness.scorer import LivenessScorer

LIVE_DIR = "live"
ATTACK_DIRS = ("print",)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: Threshold used when nothing was calibrated: the networks' own decision point (P(live) = 1/2).
DEFAULT_THRESHOLD = 0.5
CALIBRATION_FILENAME = "liveness_calibration.json"
#: the edge agent's default ``[detection] min_detector_score``: faces scored lower are never sent.
#: It matters with YuNet: its largest box on 26 of nuaa-dev's 1,008 printed photos scores under 0.9
#: (0.50-0.90), and on 24 of them (0.50-0.80) it is not the face MTCNN finds but the printed sheet
#: or the hand; every live face of nuaa-dev scores 0.90 or more
MIN_DETECTOR_SCORE = 0.9

Detector = Callable[[np.ndarray], Sequence[Any]]


@dataclass(frozen=True)
class Presentation:
    """One photo of the evaluation folder."""

    path: Path
    subject: str
    attack: bool


@dataclass(frozen=True)
class ScoredPresentation:
    presentation: Presentation
    score: float | None  # None: no face detected
    ms: float = 0.0  # scoring time (crops + networks) for this face


def dataset_scan(root: str | Path, *, every: int = 1) -> list[Presentation]:
    """The presentations under ``root`` in a stable order; ``every``: keep one photo in ``every``."""
    root = Path(root)
    if not (root / LIVE_DIR).is_dir() or not any((root / d).is_dir() for d in ATTACK_DIRS):
        raise FileNotFoundError(f"{root} must hold {LIVE_DIR}/<subject>/*.jpg and print/<subject>/*.jpg")
    presentations: list[Presentation] = []
    for kind in (LIVE_DIR, *ATTACK_DIRS):
        base = root / kind
        if not base.is_dir():
            continue
        for subject_dir in sorted(p for p in base.iterdir() if p.is_dir()):
            photos = sorted(p for p in subject_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            kept = photos[:: max(every, 1)]
            presentations.extend(Presentation(path=p, subject=subject_dir.name, attack=kind != LIVE_DIR) for p in kept)
    return presentations


def image_load(path: str | Path) -> np.ndarray:
    """An image file as an HxWx3 uint8 RGB array, upright (EXIF orientation applied)."""
    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB"), dtype=np.uint8)


def _largest_box(faces: Sequence[Any], min_score: float = 0.0) -> np.ndarray | None:
    """The box of the largest face whose detector ``score`` (when it has one) is >= ``min_score``."""
    faces = [f for f in faces if float(getattr(f, "score", 1.0)) >= min_score]
    if not faces:
        return None
    boxes = np.asarray([getattr(f, "box", f) for f in faces], dtype=np.float64).reshape(-1, 4)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return boxes[int(np.argmax(areas))]


def presentations_score(
    presentations: Iterable[Presentation],
    scorer: LivenessScorer,
    detector: Detector,
    *,
    progress: Callable[[int], None] | None = None,
    min_detector_score: float = MIN_DETECTOR_SCORE,
) -> list[ScoredPresentation]:
    """Detect and score the largest face of every presentation (timing only the scorer) among
    those the detector scores at least ``min_detector_score``."""
    scored: list[ScoredPresentation] = []
    for i, presentation in enumerate(presentations):
        rgb = image_load(presentation.path)
        box = _largest_box(detector(rgb), min_detector_score)
        if box is None:
            scored.append(ScoredPresentation(presentation, None))
        else:
            start = time.perf_counter()
            score = float(scorer.score(rgb, box[None])[0])
            scored.append(ScoredPresentation(presentation, score, (time.perf_counter() - start) * 1000.0))
        if progress is not None:
            progress(i + 1)
    return scored


def capture_key(path: Path) -> tuple[str, int]:
    """``(capture, frame number)`` of a photo named ``<capture>_<n>.<ext>`` (nuaa-dev:
    ``<subject>_<glasses>_<position>_<session>_<n>.jpg``); a name without a number is its own capture."""
    stem, _, number = path.stem.rpartition("_")
    if stem and number.isdigit():
        return stem, int(number)
    return path.stem, 0


def tracks_fuse(
    scored: Sequence[ScoredPresentation], frames: int, fusion: str, *, k: int = 3
) -> list[ScoredPresentation]:
    """Judge tracks, as the edge agent does, instead of single photos.

    The photos of one capture (:func:`capture_key`, in frame order) are cut into consecutive runs
    of ``frames`` detected faces (a shorter remainder is dropped); each run is one presentation,
    scored by ``fusion`` (:func:`faceengine.liveness.fusion.fuse`) of its frame scores and named
    by its first photo (its time: the mean per face). Photos without a face are skipped (the agent
    tracks the frames it sees)."""
    from faceengine.liveness.fusion import fuse

    if frames < 1:
        raise ValueError("frames must be >= 1")
    captures: dict[tuple[bool, str, str], list[tuple[int, ScoredPresentation]]] = {}
    for item in scored:
        if item.score is None:
            continue
        capture, number = capture_key(item.presentation.path)
        key = (item.presentation.attack, item.presentation.subject, capture)
        captures.setdefault(key, []).append((number, item))
    tracks: list[ScoredPresentation] = []
    for key in sorted(captures):
        run = [
            item for _number, item in sorted(captures[key], key=lambda pair: (pair[0], str(pair[1].presentation.path)))
        ]
        for start in range(0, len(run) - frames + 1, frames):
            window = run[start : start + frames]
            score = fuse([float(w.score) for w in window if w.score is not None], fusion, k=k)
            tracks.append(ScoredPresentation(window[0].presentation, score, sum(w.ms for w in window) / frames))
    return tracks


def _scores(scored: Iterable[ScoredPresentation], *, attack: bool, subject: str | None = None) -> np.ndarray:
    return np.asarray(
        [
            s.score
            for s in scored
            if s.score is not None
            and s.presentation.attack == attack
            and (subject is None or s.presentation.subject == subject)
        ],
        dtype=np.float64,
    )


def apcer(attack_scores: np.ndarray, threshold: float) -> float | None:
    """Share of attack presentations accepted as live (``None`` without any)."""
    return float(np.mean(attack_scores >= threshold)) if attack_scores.size else None


def bpcer(live_scores: np.ndarray, threshold: float) -> float | None:
    """Share of bona fide presentations rejected as attacks (``None`` without any)."""
    return float(np.mean(live_scores < threshold)) if live_scores.size else None


def threshold_for_apcer(attack_scores: np.ndarray, target_apcer: float) -> float:
    """The lowest threshold (live if score >= threshold) with APCER <= ``target_apcer``."""
    if not 0 <= target_apcer < 1:
        raise ValueError("target APCER must be in [0, 1)")
    scores = np.sort(np.asarray(attack_scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        raise ValueError("no attack scores to calibrate on")
    allowed = math.floor(target_apcer * scores.size + 1e-9)  # attacks that may pass
    if allowed >= scores.size:
        return 0.0
    # Just above the (allowed + 1)-th highest attack score: that one and all below are rejected.
    return float(min(np.nextafter(scores[allowed], np.inf), 1.0))


def calibrate(scored: Sequence[ScoredPresentation], target_apcer: float, *, per_subject: bool = True) -> float:
    """Threshold meeting ``target_apcer`` overall and, with ``per_subject``, for every subject."""
    threshold = threshold_for_apcer(_scores(scored, attack=True), target_apcer)
    if per_subject:
        for subject in sorted({s.presentation.subject for s in scored if s.presentation.attack}):
            attacks = _scores(scored, attack=True, subject=subject)
            if attacks.size:
                threshold = max(threshold, threshold_for_apcer(attacks, target_apcer))
    return threshold


@dataclass
class PadReport:
    """APCER/BPCER of one evaluation at one threshold, overall and per subject."""

    threshold: float
    apcer: float | None
    bpcer: float | None
    n_live: int
    n_attack: int
    not_detected: int
    ms_per_face: float | None
    per_subject: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "apcer": self.apcer,
            "bpcer": self.bpcer,
            "threshold": self.threshold,
            "n_live": self.n_live,
            "n_attack": self.n_attack,
            "not_detected": self.not_detected,
            "ms_per_face": self.ms_per_face,
            "per_subject": self.per_subject,
            "model_version": self.model_version,
        }

    def summary(self) -> str:
        lines = [
            f"liveness {self.model_version} at threshold {self.threshold:.4f}: "
            f"APCER {_pct(self.apcer)} of {self.n_attack} attacks, BPCER {_pct(self.bpcer)} of {self.n_live} live, "
            f"{self.not_detected} not detected, {_ms(self.ms_per_face)} per face"
        ]
        for subject, row in self.per_subject.items():
            lines.append(
                f"  {subject}: APCER {_pct(row['apcer'])} of {row['n_attack']}, "
                f"BPCER {_pct(row['bpcer'])} of {row['n_live']}, {row['not_detected']} not detected"
            )
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def pad_report(scored: Sequence[ScoredPresentation], threshold: float, *, model_version: str = "") -> PadReport:
    """The figures of ``scored`` at ``threshold``."""
    timings = [s.ms for s in scored if s.score is not None]
    per_subject: dict[str, dict[str, Any]] = {}
    for subject in sorted({s.presentation.subject for s in scored}):
        live = _scores(scored, attack=False, subject=subject)
        attacks = _scores(scored, attack=True, subject=subject)
        per_subject[subject] = {
            "apcer": apcer(attacks, threshold),
            "bpcer": bpcer(live, threshold),
            "n_live": int(live.size),
            "n_attack": int(attacks.size),
            "not_detected": sum(1 for s in scored if s.score is None and s.presentation.subject == subject),
        }
    live = _scores(scored, attack=False)
    attacks = _scores(scored, attack=True)
    return PadReport(
        threshold=float(threshold),
        apcer=apcer(attacks, threshold),
        bpcer=bpcer(live, threshold),
        n_live=int(live.size),
        n_attack=int(attacks.size),
        not_detected=sum(1 for s in scored if s.score is None),
        ms_per_face=float(np.mean(timings)) if timings else None,
        per_subject=per_subject,
        model_version=model_version,
    )


def calibration_save(
    path: str | Path, *, threshold: float, target_apcer: float, model_version: str, report: PadReport, data: str
) -> None:
    """Write a calibrated threshold (with the figures it was measured with) as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "threshold": threshold,
        "target_apcer": target_apcer,
        "model_version": model_version,
        "data": data,
        "calibrated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "report": report.as_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def calibration_load(path: str | Path, *, model_version: str) -> float | None:
    """The threshold stored at ``path`` for ``model_version`` (``None`` if absent or for another model)."""
    path = Path(path)
    if not path.is_file():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    if payload.get("model_version") != model_version:
        return None
    return float(payload["threshold"])
