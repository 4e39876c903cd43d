"""``manage.py evaluate_door`` on a tiny identity folder cut from LFW: real enrolment, real matcher,
a scratch gallery that leaves nothing behind."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from accessctl.models import Person
from recognition.calibration import BUILTIN_FUSED_OFFSETS
from recognition.door_evaluation import DoorReport
from recognition.enrollment import photo_enroll
from recognition.models import EnrollmentPhoto, FaceEmbedding
from recognition.track_fusion import FusionRule
from tests.faces import PEOPLE, face_jpeg, face_paths

pytestmark = pytest.mark.dataset("lfw")

PHOTOS_PER_IDENTITY = 6
KEYS = {"top1", "enrolled_rejected", "strangers_accepted", "wrong_person_admitted", "failure_to_detect", "ms_per_probe"}


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five LFW people, six photos each, as ``<identity>/*.jpg`` (copies in a temporary folder)."""
    root = tmp_path_factory.mktemp("door-identities")
    for person in PEOPLE:
        (root / person).mkdir()
        for path in face_paths(person, PHOTOS_PER_IDENTITY):
            shutil.copyfile(path, root / person / path.name)
    return root


def evaluate(data: Path, *args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("evaluate_door", "--data", str(data), "--stranger-share", "0.4", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def media_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.django_db
def test_one_photo_per_attempt_keys_figures_and_nothing_kept(enrol_env: Path, identities: Path) -> None:
    live = Person.objects.create(name="Someone already here")
    report = evaluate(identities)
    assert KEYS <= report.keys()
    counts = report["counts"]
    # 5 identities, 40 % strangers: 3 enrolled (3 photos in, 3 probes each) and 2 strangers (6 probes each).
    assert (counts["enrolled_identities"], counts["stranger_identities"]) == (3, 2)
    assert counts["enrol_photos"] == 9 and counts["probe_photos"] == 9 + 12
    assert counts["enrolled_attempts"] + counts["stranger_attempts"] == 21 - counts["probe_photos_no_face"]
    # Sane figures on easy, well-known LFW faces at the built-in door threshold.
    assert report["top1"] >= 0.8
    assert report["enrolled_rejected"] <= 0.34
    assert report["wrong_person_admitted"] == 0 and report["strangers_accepted"] == 0
    assert report["failure_to_detect"] <= 0.1 and report["failure_to_enrol"] == 0
    assert report["ms_per_probe"] > 0 and report["threshold"] == pytest.approx(0.476)
    # The scratch gallery was rolled back: the live data is as it was, no file was left behind.
    assert list(Person.objects.all()) == [live]
    assert not EnrollmentPhoto.objects.exists() and not FaceEmbedding.objects.exists()
    assert media_files(enrol_env) == []


@pytest.mark.django_db
def test_three_photos_fused_per_attempt(enrol_env: Path, identities: Path) -> None:
    """One run, the same embeddings: K=1 once, and K=3 under every fusion rule (the server's first),
    people scored each way on the same gallery."""
    reports = evaluate(
        identities, "--probes-per-attempt", "1,3", "--fusion", "all", "--seed", "1", "--person-score", "all"
    )
    per_scoring = [(1, "none"), *((3, str(rule)) for rule in FusionRule)]
    assert [(r["person_score"], r["probes_per_attempt"], r["fusion"]) for r in reports] == [
        *(("mean_template", k, rule) for k, rule in per_scoring),
        *(("best_photo", k, rule) for k, rule in per_scoring),
    ]
    assert reports[0]["counts"]["enrolled_attempts"] == 9
    model_version = reports[0]["model_version"]
    for report in reports:
        if report["probes_per_attempt"] == 1:
            continue
        counts = report["counts"]
        # 3 probes per enrolled identity -> one attempt each; 6 per stranger -> two each (all faces found).
        assert counts["probe_photos_no_face"] == 0
        assert (counts["enrolled_attempts"], counts["stranger_attempts"]) == (3, 4)
        assert report["top1"] == 1 and report["enrolled_rejected"] == 0
        assert report["wrong_person_admitted"] == 0 and report["strangers_accepted"] == 0
        # no offset stored: the built-in one measured for the person score (none for best photo)
        offsets = BUILTIN_FUSED_OFFSETS.get((model_version, report["person_score"]), {})
        builtin = offsets.get(report["fusion"], {}).get(3, 0.0)
        assert report["gallery_people"] == 3
        assert report["threshold"] == pytest.approx(report["single_threshold"] + max(builtin, 0.0))
        assert (
            report["intervals_95"]["strangers_accepted"][0] == 0
            and report["intervals_95"]["strangers_accepted"][1] > 0.3
        )


@pytest.mark.slow  # a third full enrolment + evaluation; the default suite keeps the first two
@pytest.mark.django_db
def test_several_seeds_count_together_and_probes_come_from_the_cache(
    enrol_env: Path, identities: Path, tmp_path: Path
) -> None:
    first = evaluate(identities, "--seed", "1", "--cache-dir", str(tmp_path))
    assert first["counts"]["probe_photos_cached"] == 0 and first["seeds"] == [1]
    both = evaluate(identities, "--seed", "1,2", "--cache-dir", str(tmp_path))
    counts = both["counts"]
    assert both["seeds"] == [1, 2] and counts["enrolled_identities"] == 2 * 3
    assert counts["enrolled_attempts"] + counts["stranger_attempts"] == 2 * 21  # every photo found, both splits
    assert counts["probe_photos_cached"] >= 21  # seed 1's probes again, not embedded twice
    low, high = both["intervals_95"]["enrolled_rejected"]
    assert low <= both["enrolled_rejected"] <= high


@pytest.mark.django_db
def test_a_candidate_version_swept_over_thresholds(enrol_env: Path, identities: Path) -> None:
    """``--model-version``: a registered candidate measured before promotion (the active model keeps
    the live gallery); ``--threshold``: one report per threshold, on the same enrolment."""
    from faceengine.backends.sface import SFACE_FLIP_MODEL_VERSION

    reports = evaluate(
        identities, "--model-version", SFACE_FLIP_MODEL_VERSION, "--threshold", "0.3,0.476,0.95",
        "--limit-identities", "4",
    )  # fmt: skip
    assert [r["model_version"] for r in reports] == [SFACE_FLIP_MODEL_VERSION] * 3
    assert [r["threshold"] for r in reports] == pytest.approx([0.3, 0.476, 0.95])
    attempts = {(r["counts"]["enrolled_attempts"], r["counts"]["stranger_attempts"]) for r in reports}
    (counted,) = attempts  # the same attempts, decided at each threshold
    assert min(counted) > 0
    rejected = [r["enrolled_rejected"] for r in reports]
    accepted = [r["strangers_accepted"] for r in reports]
    assert rejected == sorted(rejected) and accepted == sorted(accepted, reverse=True)
    assert rejected[-1] == 1.0 and accepted[-1] == 0.0  # nobody reaches 0.95
    # every attempt let in as someone else is listed, with who tried, with which photos, as whom
    for report in reports:
        counts, admissions = report["counts"], report["false_admissions"]
        assert len(admissions) == counts["strangers_accepted"] + counts["wrong_person_admitted"]
        for admission in admissions:
            assert admission["identity"] in PEOPLE and admission["admitted_as"] in PEOPLE
            assert admission["identity"] != admission["admitted_as"] and len(admission["photos"]) == 1
            assert admission["similarity"] >= report["threshold"]
            assert admission["kind"] in ("stranger", "wrong_person")
    assert not FaceEmbedding.objects.exists()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="fusion"):
        evaluate(tmp_path, "--fusion", "median")
    with pytest.raises(CommandError, match="integers"):
        evaluate(tmp_path, "--probes-per-attempt", "three")
    with pytest.raises(CommandError, match="person-score"):
        evaluate(tmp_path, "--person-score", "median")
    with pytest.raises(CommandError, match="numbers"):
        evaluate(tmp_path, "--threshold", "high")
    with pytest.raises(CommandError, match="site's threshold"):
        evaluate(tmp_path, "--threshold", "0.5", "--store-fused-offsets")


@pytest.mark.django_db
def test_an_unknown_version_or_a_sweep_over_a_stored_calibration_is_refused(identities: Path) -> None:
    from recognition.calibration import store_threshold
    from recognition.engine import server_model_version

    with pytest.raises(CommandError, match="No model version 'nope'"):
        evaluate(identities, "--model-version", "nope")
    store_threshold(model_version=server_model_version(), threshold=0.5, target_fmr=1e-3)
    with pytest.raises(CommandError, match="stored calibration"):
        evaluate(identities, "--threshold", "0.4")


@pytest.mark.django_db
def test_refuses_a_gallery_that_is_not_empty(enrol_env: Path, identities: Path) -> None:
    person = Person.objects.create(name="Colin Powell")
    photo = photo_enroll(person=person, image=face_jpeg("Colin_Powell", 0))
    assert photo.status == EnrollmentPhoto.Status.ACCEPTED
    with pytest.raises(CommandError, match="already holds"):
        evaluate(identities)
    assert FaceEmbedding.objects.filter(person=person).count() == 1 and Person.objects.count() == 1


def test_rejects_a_folder_without_identities(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="fewer than two"):
        evaluate(tmp_path)


def test_summary_names_every_figure() -> None:
    counts = dict.fromkeys(
        ("enrolled_attempts", "stranger_attempts", "probe_photos_no_face", "probe_photos", "identities_not_enrolled"),
        1,
    ) | {"enrolled_identities": 3, "photos_not_accepted": 0, "enrol_photos": 9}
    report = DoorReport(
        model_version="m", threshold=0.5, min_margin=0.05, probes_per_attempt=1, fusion="mean_score", top1=1.0,
        enrolled_rejected=0.0, strangers_accepted=0.0, wrong_person_admitted=0.0, failure_to_detect=0.0,
        failure_to_enrol=0.0, ms_per_probe=12.5, counts=counts,
    )  # fmt: skip
    text = report.summary()
    for name in (*KEYS, "failure_to_enrol", "counts", "scratch gallery", "mean_score"):
        assert name in text
