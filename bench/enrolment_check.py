"""How often the enrolment identity check holds a right photo, and lets a wrong one through (LFW).

    python bench/enrolment_check.py [--people N] [--seed 0]

Every LFW person with at least 4 photos is enrolled from their first 3 photos through
``recognition.enrollment.photos_enroll`` (the real service, real pgvector gallery). Then, for each
person, ``face_identity_check`` (what ``photos_enroll`` runs on every new face) judges:

* a right photo: the person's 4th photo -> a hold is a FALSE HOLD;
* a wrong photo of another ENROLLED person (their 4th photo) -> accepted is a WRONG PHOTO THROUGH;
* a wrong photo of a STRANGER (an LFW person with 1-3 photos, not enrolled) -> same.

The probes are checked read-only, so the trials are independent. The rates are printed at the
model's threshold (``recognition.calibration.threshold_for``) and, from the stored similarities,
at a few other thresholds.

Measured 2026-11-30 (sface-2021dec-int8bq, threshold 0.476, all 610 people, seed 0): enrolment of
3 photos each: 1572 accepted, 14 held (0.77 %), 244 rejected for quality; false holds of a right 4th
photo 5/525 (0.95 %); wrong photo of another enrolled person through 0/517; wrong photo of a
stranger through 0/533 (at 0.3644, the 1:1 threshold at FAR 1e-3: 0.19 % / 0 / 0.19 %).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import _stack

SWEEP = (0.30, 0.3644, 0.40, 0.45, 0.476, 0.50, 0.55)


@dataclass
class Trial:
    kind: str  # right / wrong_enrolled / wrong_stranger
    own: float | None
    other: float | None


def held_at(trial: Trial, threshold: float) -> bool:
    own, other = trial.own, trial.other
    if other is not None and other >= threshold and (own is None or other > own):
        return True
    return own is not None and own < threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--people", type=int, default=0, help="at most this many people (0: all 610)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from tests import faces

    if not faces.lfw_available():
        raise SystemExit(f"needs LFW photos in {faces.LFW_DIR}")
    folders = sorted(p for p in faces.LFW_DIR.iterdir() if p.is_dir())
    photos = {p.name: sorted(p.glob("*.jpg")) for p in folders}
    rng = random.Random(args.seed)
    enrolled = [name for name, paths in photos.items() if len(paths) >= 4]
    strangers = [name for name, paths in photos.items() if 1 <= len(paths) < 4]
    rng.shuffle(enrolled)
    if args.people:
        enrolled = enrolled[: args.people]

    with tempfile.TemporaryDirectory(prefix="enrolment-check-") as work:
        services = _stack.services_start(Path(work), db_name="accessctl_bench_enrol")
        try:
            run(enrolled, strangers, photos, rng)
        finally:
            services.stop()


def run(enrolled: list[str], strangers: list[str], photos: dict[str, list[Path]], rng: random.Random) -> None:
    import os

    os.environ.setdefault("ACCESSCTL_MIN_FACE_PX", "40")  # LFW faces are ~55 px
    _stack.django_ready()
    from django.conf import settings
    from tqdm import tqdm

    from accessctl.models import Person
    from recognition.calibration import threshold_for
    from recognition.enrollment import (
        PhotoUpload,
        configured_embedder,
        face_analyse,
        face_identity_check,
        photos_enroll,
    )
    from recognition.models import EnrollmentPhoto

    settings.MEDIA_ROOT = os.environ["ACCESSCTL_VAR_DIR"]
    embedder = configured_embedder()
    threshold = threshold_for(embedder.model_version)
    people: dict[str, int] = {}
    enrol_counts = {"accepted": 0, "held": 0, "rejected": 0}
    for name in tqdm(enrolled, desc="enrol 3 each", unit="person"):
        person = Person.objects.create(name=name)
        uploads = [PhotoUpload(image=p.read_bytes(), filename=p.name) for p in photos[name][:3]]
        for photo in photos_enroll(person=person, uploads=uploads, embedder=embedder):
            enrol_counts[photo.status] += 1
        if EnrollmentPhoto.objects.filter(person=person, status=EnrollmentPhoto.Status.ACCEPTED).exists():
            people[name] = person.pk

    trials: list[Trial] = []
    names = list(people)
    skipped = 0
    for index, name in enumerate(tqdm(names, desc="check right/wrong", unit="person")):
        other = names[(index + 1 + rng.randrange(len(names) - 1)) % len(names)]
        stranger = rng.choice(strangers)
        for kind, path in (
            ("right", photos[name][3]),
            ("wrong_enrolled", photos[other][3]),
            ("wrong_stranger", rng.choice(photos[stranger])),
        ):
            analysis = face_analyse(path.read_bytes(), embedder=embedder)
            if not analysis.ok or analysis.embedding is None:
                skipped += 1
                continue
            check = face_identity_check(
                embedding=analysis.embedding, model_version=analysis.model_version, person_id=people[name]
            )
            trials.append(Trial(kind=kind, own=check.own_similarity, other=check.other_similarity))

    total = sum(enrol_counts.values())
    print(f"\nmodel {embedder.model_version}, threshold {threshold:.4f}; {len(enrolled)} people with >= 4 photos")
    print(
        f"enrolment of 3 photos each ({total} photos): {enrol_counts['accepted']} accepted, "
        f"{enrol_counts['held']} held ({enrol_counts['held'] / max(total, 1) * 100:.2f} %), "
        f"{enrol_counts['rejected']} rejected for quality; {len(people)} people with an accepted photo"
    )
    print(f"probes without a usable face (skipped): {skipped}")
    header = "threshold  false holds (right photo)  wrong through (enrolled other)  wrong through (stranger)"
    print(header)
    for value in sorted({*SWEEP, round(threshold, 4)}):
        cells = []
        for kind, want_held in (("right", False), ("wrong_enrolled", True), ("wrong_stranger", True)):
            group = [t for t in trials if t.kind == kind]
            bad = sum(held_at(t, value) != want_held for t in group)
            cells.append(f"{bad:4d}/{len(group):4d} = {bad / max(len(group), 1) * 100:5.2f} %")
        mark = "  <- configured" if abs(value - threshold) < 1e-6 else ""
        print(f"{value:9.4f}  {cells[0]:>25}  {cells[1]:>30}  {cells[2]:>24}{mark}")


if __name__ == "__main__":
    main()
