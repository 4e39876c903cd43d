"""Door behaviour on a folder of identities: the real enrolment and the real matcher, measured.

:func:`door_evaluate` reads ``DIR/<identity>/*.jpg``, splits the identities (seeded) into enrolled
people and strangers, enrols the first ``enrol`` photos (sorted by name) of each enrolled identity
with :func:`recognition.enrollment.photos_enroll` (quality gates, identity checks: a photo HELD or
REJECTED does not join the gallery) and probes every other photo through
:func:`recognition.matcher.match_decide_many` (threshold, margin) at no door.

Scratch gallery: everything runs inside one database transaction that is rolled back at the end
(people, photos, embeddings never committed), with the enrolment files written to a temporary
folder that is removed afterwards. The evaluation refuses to run when the gallery already holds
embeddings of the model version (a live gallery would take part in every search and its people
would count as wrong matches): run it on a development or test database.

A probe photo is decoded like an enrolment photo and its largest face of at least
``settings.RECOGNITION_MIN_FACE_PX`` is cropped and embedded (no quality gate: the door decides on
what it sees). A photo with no such face is a failure to detect and takes part in no attempt. An
attempt is ``probes_per_attempt`` (K) detected photos of one identity, in name order (a remainder
shorter than K is left out), fused as the server fuses a track's probes
(:func:`recognition.track_fusion.tracks_match`, by default :data:`~recognition.track_fusion.TRACK_FUSION_RULE`;
``fusions`` measures several rules on the same embeddings, one report each). Each probe's quality
metrics are measured as a door measures them (:func:`faceengine.quality.probe_quality`) for the
quality-weighted rules.

Figures (fractions of attempts unless said otherwise):

* ``top1``: enrolled attempts whose nearest person is the right one, whatever the threshold;
* ``enrolled_rejected``: enrolled attempts not granted (unknown face or ambiguous match);
* ``wrong_person_admitted``: enrolled attempts granted as someone else;
* ``strangers_accepted``: stranger attempts granted as anyone;
* ``failure_to_detect``: probe photos with no usable face (fraction of probe photos);
* ``failure_to_enrol``: enrolled identities left with no accepted photo (their photos are not
  probed); ``photos_not_accepted`` counts the enrolment photos rejected or held;
* ``ms_per_probe``: wall time per probe photo (decode, detect, crop, embed) plus the match time
  per attempt divided by K.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.test.utils import override_settings

from accessctl.codes import Reason
from accessctl.models import Person
from faceengine.alignment import align_arcface
from faceengine.detector import detect_faces
from faceengine.pipeline import crop_for
from faceengine.quality import probe_quality
from recognition.calibration import margin_for, threshold_for
from recognition.datasets import list_identity_folder
from recognition.enrollment import BadImageError, PhotoUpload, configured_embedder, decode_image, photos_enroll
from recognition.models import EnrollmentPhoto, FaceEmbedding
from recognition.track_fusion import TRACK_FUSION_RULE, FusionRule, probe_weights, tracks_match

if TYPE_CHECKING:
    from faceengine.embedder import Embedder

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DoorEvaluationError(ValueError):
    """The evaluation cannot run (no usable folder, a gallery that is not empty, bad options)."""


@dataclass
class DoorReport:
    """The figures of one evaluation (module docstring)."""

    model_version: str
    threshold: float
    min_margin: float
    probes_per_attempt: int
    fusion: str
    top1: float
    enrolled_rejected: float
    strangers_accepted: float
    wrong_person_admitted: float
    failure_to_detect: float
    failure_to_enrol: float
    ms_per_probe: float
    counts: dict[str, int] = field(default_factory=dict)
    scratch: str = "transaction rolled back, files in a temporary folder"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"door evaluation: {self.model_version}, threshold {self.threshold:.3f}, margin {self.min_margin:.3f}, "
            f"K={self.probes_per_attempt}, fusion {self.fusion}",
            f"  top1                  {self.top1:7.2%}  ({c['enrolled_attempts']} enrolled attempts)",
            f"  enrolled_rejected     {self.enrolled_rejected:7.2%}",
            f"  wrong_person_admitted {self.wrong_person_admitted:7.2%}",
            f"  strangers_accepted    {self.strangers_accepted:7.2%}  ({c['stranger_attempts']} stranger attempts)",
            f"  failure_to_detect     {self.failure_to_detect:7.2%}  ({c['probe_photos_no_face']} of "
            f"{c['probe_photos']} probe photos)",
            f"  failure_to_enrol      {self.failure_to_enrol:7.2%}  ({c['identities_not_enrolled']} of "
            f"{c['enrolled_identities']} identities; {c['photos_not_accepted']} of {c['enrol_photos']} photos "
            "not accepted)",
            f"  ms_per_probe          {self.ms_per_probe:7.1f}",
            f"  counts                {c}",
            f"  scratch gallery       {self.scratch}",
        ]
        return "\n".join(lines)


class _Rollback(Exception):
    pass


def _identities(data: Path, limit: int | None) -> dict[str, list[Path]]:
    if not data.is_dir():
        raise DoorEvaluationError(f"{data} is not a folder")
    found = {
        name: [data / relpath for relpath in relpaths]
        for name, relpaths in list_identity_folder(data, IMAGE_SUFFIXES).items()
    }
    if limit is not None:
        found = dict(list(found.items())[:limit])
    if len(found) < 2:
        raise DoorEvaluationError(f"{data} holds fewer than two <identity>/*.jpg folders")
    return found


def _split(names: list[str], *, stranger_share: float, seed: int) -> tuple[list[str], list[str]]:
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    strangers = round(len(shuffled) * stranger_share)
    strangers = min(max(strangers, 1 if stranger_share > 0 else 0), len(shuffled) - 1)
    return sorted(shuffled[strangers:]), sorted(shuffled[:strangers])


def _probe_embed(path: Path, embedder: Embedder) -> tuple[np.ndarray, dict[str, float]] | None:
    """The normalised embedding of the largest face of ``path`` and its quality metrics as a door
    measures them, or None (no usable face)."""
    try:
        rgb = decode_image(path.read_bytes())
    except BadImageError:
        return None
    faces = detect_faces(
        rgb, min_face_size=int(settings.RECOGNITION_MIN_FACE_PX), num_threads=settings.RECOGNITION_TORCH_THREADS
    )
    if not faces:
        return None
    face = max(faces, key=lambda f: f.area)
    vector = np.asarray(embedder.embed(crop_for(rgb, face, embedder.input_kind)[None])[0], dtype=np.float32)
    quality = probe_quality(
        face_px=face.size, score=face.score, crop=align_arcface(rgb, face.landmarks), landmarks=face.landmarks
    )
    return vector / max(float(np.linalg.norm(vector)), 1e-12), quality


def door_evaluate(
    *,
    data: Path,
    enrol: int = 3,
    stranger_share: float = 0.25,
    seed: int = 0,
    probes_per_attempt: int = 1,
    limit_identities: int | None = None,
    embedder: Embedder | None = None,
    progress: Callable[[str], None] | None = None,
    fusion: FusionRule | str = TRACK_FUSION_RULE,
) -> DoorReport:
    """Enrol, probe and measure on a scratch gallery that is rolled back (module docstring)."""
    return door_evaluate_rules(
        data=data, enrol=enrol, stranger_share=stranger_share, seed=seed, probes_per_attempt=probes_per_attempt,
        limit_identities=limit_identities, embedder=embedder, progress=progress, fusions=[fusion],
    )[0]  # fmt: skip


def door_evaluate_rules(
    *,
    data: Path,
    enrol: int = 3,
    stranger_share: float = 0.25,
    seed: int = 0,
    probes_per_attempt: int | Sequence[int] = 1,
    limit_identities: int | None = None,
    embedder: Embedder | None = None,
    progress: Callable[[str], None] | None = None,
    fusions: Sequence[FusionRule | str] = (TRACK_FUSION_RULE,),
) -> list[DoorReport]:
    """:func:`door_evaluate` for several K and fusion rules on the same enrolment and probe embeddings:
    one report per K and rule (K = 1: one report, every rule is the same single-probe match)."""
    ks = [probes_per_attempt] if isinstance(probes_per_attempt, int) else list(probes_per_attempt)
    try:
        rules = [FusionRule(f) for f in fusions]
    except ValueError:
        raise DoorEvaluationError(f"--fusion must be among {[r.value for r in FusionRule]} or all") from None
    if not rules:
        raise DoorEvaluationError("at least one fusion rule")
    if enrol < 1 or not ks or min(ks) < 1 or not 0 <= stranger_share < 1:
        raise DoorEvaluationError("--enrol and --probes-per-attempt must be >= 1, --stranger-share in [0, 1)")
    identities = _identities(Path(data), limit_identities)
    enrolled_names, stranger_names = _split(list(identities), stranger_share=stranger_share, seed=seed)
    embedder = embedder or configured_embedder()
    model_version = embedder.model_version
    if FaceEmbedding.objects.filter(model_version=model_version).exists():
        raise DoorEvaluationError(
            f"the gallery already holds {model_version} embeddings: they would take part in every search. "
            "Run the evaluation on a development or test database."
        )
    scratch_media = tempfile.mkdtemp(prefix="door-eval-")
    storages = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": scratch_media}},
    }
    reports: list[DoorReport] | None = None
    try:
        with override_settings(STORAGES=storages), transaction.atomic():
            reports = _run(
                identities=identities,
                rules=rules,
                ks=ks,
                enrolled_names=enrolled_names,
                stranger_names=stranger_names,
                enrol=enrol,
                embedder=embedder,
                progress=progress or (lambda _message: None),
            )
            raise _Rollback
    except _Rollback:
        pass
    finally:
        shutil.rmtree(scratch_media, ignore_errors=True)
    assert reports is not None
    return reports


def _run(
    *,
    identities: dict[str, list[Path]],
    rules: list[FusionRule],
    ks: list[int],
    enrolled_names: list[str],
    stranger_names: list[str],
    enrol: int,
    embedder: Embedder,
    progress: Callable[[str], None],
) -> list[DoorReport]:
    model_version = embedder.model_version
    counts = {
        "identities": len(identities),
        "enrolled_identities": len(enrolled_names),
        "stranger_identities": len(stranger_names),
        "identities_not_enrolled": 0,
        "enrol_photos": 0,
        "photos_not_accepted": 0,
        "gallery_embeddings": 0,
        "probe_photos": 0,
        "probe_photos_no_face": 0,
        "enrolled_attempts": 0,
        "stranger_attempts": 0,
        "top1_hits": 0,
        "enrolled_granted": 0,
        "enrolled_rejected": 0,
        "enrolled_ambiguous": 0,
        "wrong_person_admitted": 0,
        "strangers_accepted": 0,
    }
    person_of: dict[str, int] = {}
    for n, name in enumerate(enrolled_names, start=1):
        person = Person.objects.create(name=f"door evaluation {name}")
        uploads = [PhotoUpload(image=p.read_bytes(), filename=p.name) for p in identities[name][:enrol]]
        photos = photos_enroll(person=person, uploads=uploads, embedder=embedder)
        accepted = sum(1 for p in photos if p.status == EnrollmentPhoto.Status.ACCEPTED)
        counts["enrol_photos"] += len(photos)
        counts["photos_not_accepted"] += len(photos) - accepted
        counts["gallery_embeddings"] += accepted
        if accepted:
            person_of[name] = person.pk
        else:
            counts["identities_not_enrolled"] += 1
        progress(f"enrolled {n}/{len(enrolled_names)}")

    probe_seconds = 0.0
    probed = [(name, identities[name][enrol:], person_of[name]) for name in enrolled_names if name in person_of]
    probed += [(name, identities[name], None) for name in stranger_names]
    found: list[tuple[list[tuple[np.ndarray, dict[str, float]]], int | None]] = []
    for n, (_name, paths, expected) in enumerate(probed, start=1):
        usable = []
        for path in paths:
            started = time.perf_counter()
            probe = _probe_embed(path, embedder)
            probe_seconds += time.perf_counter() - started
            counts["probe_photos"] += 1
            if probe is None:
                counts["probe_photos_no_face"] += 1
            else:
                usable.append(probe)
        found.append((usable, expected))
        progress(f"probed {n}/{len(probed)}")
    reports = []
    for k in ks:
        # (probe vectors, their weights, expected person or None)
        attempts: list[tuple[list[np.ndarray], list[float], int | None]] = []
        for usable, expected in found:
            for start in range(0, len(usable) - k + 1, k):
                group = usable[start : start + k]
                attempts.append(([v for v, _ in group], probe_weights([q for _, q in group]), expected))
        for rule in rules if k > 1 else rules[:1]:  # one probe: every rule is the single-probe match
            reports.append(
                _score(attempts, dict(counts), rule=rule, k=k, model_version=model_version,
                       probe_seconds=probe_seconds, enrolled_total=len(enrolled_names))
            )  # fmt: skip
    return reports


def _score(
    attempts: list[tuple[list[np.ndarray], list[float], int | None]],
    counts: dict[str, int],
    *,
    rule: FusionRule,
    k: int,
    model_version: str,
    probe_seconds: float,
    enrolled_total: int,
) -> DoorReport:
    match_seconds = 0.0
    batch = 64
    for start in range(0, len(attempts), batch):
        chunk = attempts[start : start + batch]
        started = time.perf_counter()
        results = tracks_match(
            [vectors for vectors, _, _ in chunk],
            weights=[weights for _, weights, _ in chunk],
            model_version=model_version,
            doors=[None] * len(chunk),
            rule=rule,
        )
        match_seconds += time.perf_counter() - started
        for (_, _, expected), result in zip(chunk, results, strict=True):
            if expected is None:
                counts["stranger_attempts"] += 1
                counts["strangers_accepted"] += int(result.matched)
                continue
            counts["enrolled_attempts"] += 1
            counts["top1_hits"] += int(result.best_person_id == expected)
            if not result.matched:
                counts["enrolled_rejected"] += 1
                counts["enrolled_ambiguous"] += int(result.reason is Reason.AMBIGUOUS_MATCH)
            elif result.person_id == expected:
                counts["enrolled_granted"] += 1
            else:
                counts["wrong_person_admitted"] += 1

    def rate(part: int, whole: int) -> float:
        return round(part / whole, 6) if whole else 0.0

    enrolled_attempts, stranger_attempts = counts["enrolled_attempts"], counts["stranger_attempts"]
    ms_per_probe = 0.0
    if counts["probe_photos"]:
        ms_per_probe = 1000 * probe_seconds / counts["probe_photos"]
    if attempts:
        ms_per_probe += 1000 * match_seconds / len(attempts) / k
    return DoorReport(
        model_version=model_version,
        threshold=threshold_for(model_version),
        min_margin=margin_for(model_version),
        probes_per_attempt=k,
        fusion=str(rule) if k > 1 else "none",
        top1=rate(counts["top1_hits"], enrolled_attempts),
        enrolled_rejected=rate(counts["enrolled_rejected"], enrolled_attempts),
        strangers_accepted=rate(counts["strangers_accepted"], stranger_attempts),
        wrong_person_admitted=rate(counts["wrong_person_admitted"], enrolled_attempts),
        failure_to_detect=rate(counts["probe_photos_no_face"], counts["probe_photos"]),
        failure_to_enrol=rate(counts["identities_not_enrolled"], enrolled_total),
        ms_per_probe=round(ms_per_probe, 2),
        counts=counts,
    )
