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
from recognition.calibration import (
    CalibrationError,
    calibration_stored,
    live_gallery_size,
    margin_for,
    store_fused_offsets,
    threshold_for,
)
from recognition.datasets import list_identity_folder
from recognition.enrollment import BadImageError, PhotoUpload, configured_embedder, decode_image, photos_enroll
from recognition.fused_calibration import fused_offset, person_scores
from recognition.gallery import PersonScore, person_score_rule, person_templates
from recognition.metrics import wilson_interval
from recognition.models import EnrollmentPhoto, FaceEmbedding
from recognition.probe_cache import ProbeCache, file_digest
from recognition.track_fusion import TRACK_FUSION_RULE, FusionRule, fused_embedding, probe_weights, tracks_match

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
    seeds: list[int] = field(default_factory=lambda: [0])
    #: people in the scratch gallery (the threshold is sized for them)
    gallery_people: int = 0
    #: the threshold of one probe (``threshold`` is the one the attempts met: fused when K > 1)
    single_threshold: float = 0.0
    #: 95 % Wilson score intervals [low, high] of the rates (attempts taken as independent)
    intervals_95: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: K > 1: the fused-threshold offset these embeddings measure (recognition.fused_calibration)
    fused_offset_measured: dict[str, Any] | None = None
    #: how people were scored (recognition.gallery.PersonScore)
    person_score: str = "best_photo"
    #: every attempt let in as someone it is not: the identity and photos that tried, whom they were
    #: taken for, at what similarity (look at them: lookalikes, or one person under two names)
    false_admissions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        c = self.counts

        def ci(key: str) -> str:
            low, high = self.intervals_95.get(key, (0.0, 0.0))
            return f"[{low:.2%}, {high:.2%}]"

        offset = ""
        if self.fused_offset_measured:
            offset = f", measured fused offset {self.fused_offset_measured['offset']:+.4f}"
        lines = [
            f"door evaluation: {self.model_version}, threshold {self.threshold:.3f} (one probe "
            f"{self.single_threshold:.3f}, {self.gallery_people} people{offset}), margin {self.min_margin:.3f}, "
            f"K={self.probes_per_attempt}, fusion {self.fusion}, people scored by {self.person_score}, "
            f"seeds {self.seeds}",
            f"  top1                  {self.top1:7.2%}  ({c['enrolled_attempts']} enrolled attempts)",
            f"  enrolled_rejected     {self.enrolled_rejected:7.2%}  95 % {ci('enrolled_rejected')}",
            f"  wrong_person_admitted {self.wrong_person_admitted:7.2%}  95 % {ci('wrong_person_admitted')}",
            f"  strangers_accepted    {self.strangers_accepted:7.2%}  95 % {ci('strangers_accepted')}  "
            f"({c['stranger_attempts']} stranger attempts)",
            f"  failure_to_detect     {self.failure_to_detect:7.2%}  ({c['probe_photos_no_face']} of "
            f"{c['probe_photos']} probe photos)",
            f"  failure_to_enrol      {self.failure_to_enrol:7.2%}  ({c['identities_not_enrolled']} of "
            f"{c['enrolled_identities']} identities; {c['photos_not_accepted']} of {c['enrol_photos']} photos "
            "not accepted)",
            f"  ms_per_probe          {self.ms_per_probe:7.1f}",
            *(
                f"  let in as someone else: {a['kind']} {a['identity']} {a['photos']} as {a['admitted_as']} "
                f"({a['similarity']:.3f})"
                for a in self.false_admissions
            ),
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


def _probe_embed(data: bytes, embedder: Embedder) -> tuple[np.ndarray, dict[str, float]] | None:
    """The normalised embedding of the largest face of the photo ``data`` and its quality metrics as
    a door measures them, or None (no usable face)."""
    try:
        rgb = decode_image(data)
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
    cache_dir: Path | None = None,
) -> DoorReport:
    """Enrol, probe and measure on a scratch gallery that is rolled back (module docstring)."""
    return door_evaluate_rules(
        data=data, enrol=enrol, stranger_share=stranger_share, seed=seed, probes_per_attempt=probes_per_attempt,
        limit_identities=limit_identities, embedder=embedder, progress=progress, fusions=[fusion],
        cache_dir=cache_dir,
    )[0]  # fmt: skip


def door_evaluate_rules(
    *,
    data: Path,
    enrol: int = 3,
    stranger_share: float = 0.25,
    seed: int | Sequence[int] = 0,
    probes_per_attempt: int | Sequence[int] = 1,
    limit_identities: int | None = None,
    embedder: Embedder | None = None,
    progress: Callable[[str], None] | None = None,
    fusions: Sequence[FusionRule | str] = (TRACK_FUSION_RULE,),
    cache_dir: Path | None = None,
    person_scores: Sequence[str] | None = None,
    thresholds: Sequence[float] | None = None,
) -> list[DoorReport]:
    """:func:`door_evaluate` for several K and fusion rules on the same enrolment and probe embeddings:
    one report per K and rule (K = 1: one report, every rule is the same single-probe match), and per
    person score (``person_scores``, :class:`recognition.gallery.PersonScore` values; default: the
    site's), the same gallery scored each way.

    Several seeds: one enrolment per split (seed), the attempts of all splits counted together
    (more stranger attempts, other people as strangers); the Wilson intervals assume the attempts
    independent, which attempts of one person are not: read them as a lower bound of the doubt.

    ``cache_dir``: keep the probe embeddings there (:class:`recognition.probe_cache.ProbeCache`) and
    reuse them on the next run (``ms_per_probe`` then counts only the photos embedded this time).

    ``thresholds``: one report per single-probe threshold (the sweep, as ``ACCESSCTL_MATCH_THRESHOLD``
    would set it; fused attempts add their offset to it) instead of the site's threshold: what a site
    trades between enrolled people turned away and strangers let in, through the real enrolment."""
    ks = [probes_per_attempt] if isinstance(probes_per_attempt, int) else list(probes_per_attempt)
    seeds = [seed] if isinstance(seed, int) else list(dict.fromkeys(seed))
    try:
        rules = [FusionRule(f) for f in fusions]
    except ValueError:
        raise DoorEvaluationError(f"--fusion must be among {[r.value for r in FusionRule]} or all") from None
    if not rules:
        raise DoorEvaluationError("at least one fusion rule")
    try:
        scorings = [PersonScore(p) for p in (person_scores or [person_score_rule()])]
    except ValueError:
        raise DoorEvaluationError(f"--person-score must be among {[p.value for p in PersonScore]} or all") from None
    sweep = [float(t) for t in thresholds] if thresholds else []
    if any(not -1.0 <= t <= 1.0 for t in sweep):
        raise DoorEvaluationError("--threshold values are cosine similarities in [-1, 1]")
    if enrol < 1 or not ks or min(ks) < 1 or not 0 <= stranger_share < 1 or not seeds:
        raise DoorEvaluationError(
            "--enrol and --probes-per-attempt must be >= 1, --stranger-share in [0, 1), at least one seed"
        )
    identities = _identities(Path(data), limit_identities)
    embedder = embedder or configured_embedder()
    model_version = embedder.model_version
    if FaceEmbedding.objects.filter(model_version=model_version).exists():
        raise DoorEvaluationError(
            f"the gallery already holds {model_version} embeddings: they would take part in every search. "
            "Run the evaluation on a development or test database."
        )
    if sweep and calibration_stored(model_version):
        raise DoorEvaluationError(
            f"{model_version} has a stored calibration, which a swept threshold would not override: "
            "run the sweep on a development or test database"
        )
    probe_cache = None
    if cache_dir is not None:
        probe_cache = ProbeCache(
            Path(cache_dir), model_version=model_version, min_face_px=int(settings.RECOGNITION_MIN_FACE_PX)
        )
    tallies: dict[tuple[str, int, str, float | None], _Tally] = {}
    say = progress or (lambda _message: None)
    try:
        for n, split_seed in enumerate(seeds, start=1):
            enrolled_names, stranger_names = _split(list(identities), stranger_share=stranger_share, seed=split_seed)
            _scratch_run(
                identities=identities,
                rules=rules,
                ks=ks,
                enrolled_names=enrolled_names,
                stranger_names=stranger_names,
                enrol=enrol,
                embedder=embedder,
                progress=(lambda message, n=n: say(f"seed {n}/{len(seeds)}: {message}")) if len(seeds) > 1 else say,
                probe_cache=probe_cache,
                tallies=tallies,
                scorings=scorings,
                sweep=sweep,
            )
    finally:
        if probe_cache is not None:
            probe_cache.save()
    return [tally.report(model_version=model_version, seeds=seeds) for tally in tallies.values()]


def _scratch_run(**kwargs: Any) -> None:
    """:func:`_run` inside a transaction that is rolled back, enrolment files in a temporary folder."""
    scratch_media = tempfile.mkdtemp(prefix="door-eval-")
    storages = {
        **settings.STORAGES,
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": scratch_media}},
    }
    try:
        with override_settings(STORAGES=storages), transaction.atomic():
            _run(**kwargs)
            raise _Rollback
    except _Rollback:
        pass
    finally:
        shutil.rmtree(scratch_media, ignore_errors=True)


_COUNT_KEYS = (
    "identities", "enrolled_identities", "stranger_identities", "identities_not_enrolled", "enrol_photos",
    "photos_not_accepted", "gallery_embeddings", "probe_photos", "probe_photos_no_face", "probe_photos_cached",
    "enrolled_attempts", "stranger_attempts", "top1_hits", "enrolled_granted", "enrolled_rejected",
    "enrolled_ambiguous", "wrong_person_admitted", "strangers_accepted",
)  # fmt: skip


@dataclass
class _Tally:
    """What one (person score, K, rule) counted over every seed."""

    k: int
    rule: FusionRule
    person_score: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNT_KEYS, 0))
    probe_seconds: float = 0.0
    match_seconds: float = 0.0
    attempts: int = 0
    enrolled_total: int = 0
    threshold: float = 0.0
    single_threshold: float = 0.0
    gallery_people: int = 0
    single_impostor: list[np.ndarray] = field(default_factory=list)
    fused_impostor: list[np.ndarray] = field(default_factory=list)
    false_admissions: list[dict[str, Any]] = field(default_factory=list)

    def report(self, *, model_version: str, seeds: list[int]) -> DoorReport:
        c = self.counts

        def rate(part: int, whole: int) -> float:
            return round(part / whole, 6) if whole else 0.0

        enrolled, strangers = c["enrolled_attempts"], c["stranger_attempts"]
        ms_per_probe = 0.0
        embedded = c["probe_photos"] - c["probe_photos_cached"]
        if embedded:
            ms_per_probe = 1000 * self.probe_seconds / embedded
        if self.attempts:
            ms_per_probe += 1000 * self.match_seconds / self.attempts / self.k
        offset = None
        if self.k > 1 and self.single_impostor and self.fused_impostor:
            try:
                offset = fused_offset(
                    np.concatenate(self.single_impostor),
                    np.concatenate(self.fused_impostor),
                    threshold=self.single_threshold,
                ).as_dict()
            except ValueError:
                offset = None
        intervals = {
            "enrolled_rejected": wilson_interval(c["enrolled_rejected"], enrolled),
            "strangers_accepted": wilson_interval(c["strangers_accepted"], strangers),
            "wrong_person_admitted": wilson_interval(c["wrong_person_admitted"], enrolled),
        }
        return DoorReport(
            model_version=model_version,
            threshold=round(self.threshold, 6),
            min_margin=margin_for(model_version),
            probes_per_attempt=self.k,
            fusion=str(self.rule) if self.k > 1 else "none",
            top1=rate(c["top1_hits"], enrolled),
            enrolled_rejected=rate(c["enrolled_rejected"], enrolled),
            strangers_accepted=rate(c["strangers_accepted"], strangers),
            wrong_person_admitted=rate(c["wrong_person_admitted"], enrolled),
            failure_to_detect=rate(c["probe_photos_no_face"], c["probe_photos"]),
            failure_to_enrol=rate(c["identities_not_enrolled"], self.enrolled_total),
            ms_per_probe=round(ms_per_probe, 2),
            counts=dict(c),
            seeds=list(seeds),
            gallery_people=self.gallery_people,
            single_threshold=round(self.single_threshold, 6),
            intervals_95=intervals,
            fused_offset_measured=offset,
            person_score=self.person_score,
            false_admissions=self.false_admissions,
        )


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
    probe_cache: ProbeCache | None,
    tallies: dict[tuple[str, int, str, float | None], _Tally],
    scorings: Sequence[PersonScore],
    sweep: Sequence[float] = (),
) -> None:
    model_version = embedder.model_version
    counts = dict.fromkeys(_COUNT_KEYS, 0)
    counts.update(
        identities=len(identities), enrolled_identities=len(enrolled_names), stranger_identities=len(stranger_names)
    )
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
    sources: list[tuple[str, list[str]]] = []  # per entry of found: the identity, its usable photos' names
    for n, (name, paths, expected) in enumerate(probed, start=1):
        usable = []
        used: list[str] = []
        for path in paths:
            data = path.read_bytes()
            digest = file_digest(data) if probe_cache is not None else ""
            if probe_cache is not None and digest in probe_cache:
                probe = probe_cache.get(digest)
                counts["probe_photos_cached"] += 1
            else:
                started = time.perf_counter()
                probe = _probe_embed(data, embedder)
                probe_seconds += time.perf_counter() - started
                if probe_cache is not None:
                    probe_cache.put(digest, probe)
            counts["probe_photos"] += 1
            if probe is None:
                counts["probe_photos_no_face"] += 1
            else:
                usable.append(probe)
                used.append(path.name)
        found.append((usable, expected))
        sources.append((name, used))
        progress(f"probed {n}/{len(probed)}")
    for scoring in scorings:
        with override_settings(RECOGNITION_PERSON_SCORE=str(scoring)):
            scores = _ImpostorScores(found, person_of, model_version)  # the same at every swept threshold
        for swept in sweep or [None]:
            chosen = {} if swept is None else {"RECOGNITION_DEFAULT_THRESHOLD": swept}
            with override_settings(RECOGNITION_PERSON_SCORE=str(scoring), **chosen):
                _tally(found, sources, person_of, counts, scores, ks=ks, rules=rules, model_version=model_version,
                       tallies=tallies, probe_seconds=probe_seconds, enrolled=len(enrolled_names),
                       swept=swept)  # fmt: skip


def _tally(
    found: list[tuple[list[tuple[np.ndarray, dict[str, float]]], int | None]],
    sources: Sequence[tuple[str, list[str]]],
    person_of: dict[str, int],
    counts: dict[str, int],
    scores: _ImpostorScores,
    *,
    ks: list[int],
    rules: list[FusionRule],
    model_version: str,
    tallies: dict[tuple[str, int, str, float | None], _Tally],
    probe_seconds: float,
    enrolled: int,
    swept: float | None = None,
) -> None:
    """Score every attempt of one split for each K and rule, people scored by the site's rule
    (``sources``: per entry of ``found``, its identity and usable photos' names; ``scores``: the
    impostor scores under that rule)."""
    scoring = str(person_score_rule())
    single_threshold = threshold_for(model_version)
    people = live_gallery_size(model_version)
    name_of = {pk: name for name, pk in person_of.items()}
    for k in ks:
        attempts: list[_Attempt] = []
        for (usable, expected), (identity, photos) in zip(found, sources, strict=True):
            for start in range(0, len(usable) - k + 1, k):
                group = usable[start : start + k]
                weights = probe_weights([q for _, q in group])
                attempts.append(([v for v, _ in group], weights, expected, (identity, photos[start : start + k])))
        for rule in rules if k > 1 else rules[:1]:  # one probe: every rule is the single-probe match
            tally = tallies.setdefault((scoring, k, str(rule), swept), _Tally(k=k, rule=rule, person_score=scoring))
            attempt_counts, match_seconds, admitted = _score(attempts, rule=rule, k=k, model_version=model_version)
            tally.false_admissions += [{**a, "admitted_as": name_of.get(a["admitted_as"], "")} for a in admitted]
            for key, value in counts.items():
                tally.counts[key] += value
            for key, value in attempt_counts.items():
                tally.counts[key] += value
            tally.probe_seconds += probe_seconds
            tally.match_seconds += match_seconds
            tally.attempts += len(attempts)
            tally.enrolled_total += enrolled
            tally.threshold = threshold_for(model_version, probes_fused=k, fusion=str(rule))
            tally.single_threshold = single_threshold
            tally.gallery_people = people
            if k > 1:
                tally.single_impostor.append(scores.single())
                tally.fused_impostor.append(scores.fused(k, rule))


class _ImpostorScores:
    """(probe or attempt, enrolled person other than its own) similarities (the site's person score:
    :func:`recognition.gallery.person_templates`), for the
    fused offset (:mod:`recognition.fused_calibration`). Fused attempts: every window of K
    consecutive probes of an identity (overlapping, for more pairs)."""

    def __init__(
        self,
        found: list[tuple[list[tuple[np.ndarray, dict[str, float]]], int | None]],
        person_of: dict[str, int],
        model_version: str,
    ) -> None:
        templates = person_templates(sorted(person_of.values()), model_version)
        self.people = sorted(templates)
        self.found = found
        self.templates = [np.stack([_unit(v) for v in templates[p]]) for p in self.people]
        self._per_probe: list[np.ndarray] = []  # per identity: (probes, people) similarities
        for usable, _expected in found:
            vectors = np.stack([v for v, _ in usable]) if usable else np.zeros((0, 1))
            self._per_probe.append(person_scores(vectors, self.templates) if usable and self.people else None)

    def _impostor(self, matrix: np.ndarray, expected: int | None) -> np.ndarray:
        keep = np.array([p != expected for p in self.people])
        return matrix[:, keep].ravel()

    def single(self) -> np.ndarray:
        parts = [
            self._impostor(m, expected)
            for m, (_usable, expected) in zip(self._per_probe, self.found, strict=True)
            if m is not None
        ]
        return np.concatenate(parts) if parts else np.zeros(0)

    def fused(self, k: int, rule: FusionRule) -> np.ndarray:
        parts = []
        for m, (usable, expected) in zip(self._per_probe, self.found, strict=True):
            if m is None or len(usable) < k:
                continue
            rows = []
            for start in range(len(usable) - k + 1):
                group = usable[start : start + k]
                weights = np.asarray(probe_weights([q for _, q in group]), dtype=np.float64)
                if not str(rule).startswith("quality"):
                    weights = np.ones(k)
                if rule in (FusionRule.MEAN_EMBEDDING, FusionRule.QUALITY_EMBEDDING):
                    vector = fused_embedding([v for v, _ in group], weights)
                    rows.append(person_scores(vector[None], self.templates)[0])
                elif rule is FusionRule.MAX_SCORE:
                    rows.append(m[start : start + k].max(axis=0))
                else:
                    rows.append((m[start : start + k] * weights[:, None]).sum(axis=0) / weights.sum())
            parts.append(self._impostor(np.stack(rows), expected))
        return np.concatenate(parts) if parts else np.zeros(0)


def _unit(vector: np.ndarray) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float64)
    return v / max(float(np.linalg.norm(v)), 1e-12)


#: (probe vectors, their weights, expected person or None (a stranger), (identity, photo names))
_Attempt = tuple[list[np.ndarray], list[float], int | None, tuple[str, list[str]]]


def _score(
    attempts: list[_Attempt],
    *,
    rule: FusionRule,
    k: int,
    model_version: str,
) -> tuple[dict[str, int], float, list[dict[str, Any]]]:
    """The attempt counts of one (K, rule), the seconds the matching took, and the attempts let in
    as someone they are not (``admitted_as``: the person's primary key)."""
    counts = dict.fromkeys(
        ("enrolled_attempts", "stranger_attempts", "top1_hits", "enrolled_granted", "enrolled_rejected",
         "enrolled_ambiguous", "wrong_person_admitted", "strangers_accepted"),
        0,
    )  # fmt: skip
    match_seconds = 0.0
    admitted: list[dict[str, Any]] = []
    batch = 64
    for start in range(0, len(attempts), batch):
        chunk = attempts[start : start + batch]
        started = time.perf_counter()
        results = tracks_match(
            [vectors for vectors, _, _, _ in chunk],
            weights=[weights for _, weights, _, _ in chunk],
            model_version=model_version,
            doors=[None] * len(chunk),
            rule=rule,
        )
        match_seconds += time.perf_counter() - started
        for (_, _, expected, (identity, photos)), result in zip(chunk, results, strict=True):
            if result.matched and result.person_id != expected:
                admitted.append({
                    "kind": "stranger" if expected is None else "wrong_person", "identity": identity,
                    "photos": photos, "admitted_as": result.person_id, "similarity": round(result.similarity or 0.0, 4),
                })  # fmt: skip
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
    return counts, match_seconds, admitted


def door_fused_offsets_store(reports: Sequence[DoorReport]) -> dict[str, dict[int, float]]:
    """Store the fused offsets the reports measured (K > 1, one per rule and K) in the calibration
    of their model version (:func:`recognition.calibration.store_fused_offsets`); returns them.
    Only reports scored by the site's person score: the stored offsets apply to its decisions."""
    stored: dict[str, dict[int, float]] = {}
    for report in reports:
        measured = report.fused_offset_measured
        if report.probes_per_attempt < 2 or not measured or report.person_score != person_score_rule():
            continue
        try:
            store_fused_offsets(
                model_version=report.model_version,
                rule=report.fusion,
                offsets={report.probes_per_attempt: measured["offset"]},
                source={
                    **measured,
                    "seeds": report.seeds,
                    "gallery_people": report.gallery_people,
                    "person_score": report.person_score,
                },
            )
        except (CalibrationError, ValueError) as exc:
            raise DoorEvaluationError(f"fused offset of {report.fusion} K={report.probes_per_attempt}: {exc}") from exc
        stored.setdefault(report.fusion, {})[report.probes_per_attempt] = measured["offset"]
    return stored
