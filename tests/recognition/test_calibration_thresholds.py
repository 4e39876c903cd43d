"""Thresholds that know the gallery and the fusion: size-interpolated thresholds, fused-probe
offsets (measured and applied), Wilson intervals and the door evaluation's probe cache."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from accessctl.models import Door, Person
from recognition.calibration import (
    BUILTIN_FUSED_OFFSETS,
    BUILTIN_THRESHOLDS,
    CALIBRATIONS,
    GALLERY_SIZES,
    CalibrationError,
    fused_offset_for,
    size_interpolated_threshold,
    store_fused_offsets,
    store_threshold,
    threshold_for,
)
from recognition.fused_calibration import fused_offset, person_scores
from recognition.matcher import match_decide_many
from recognition.metrics import wilson_interval
from recognition.models import FaceEmbedding, ModelCalibration
from recognition.probe_cache import ProbeCache, file_digest
from recognition.track_fusion import TRACK_FUSION_RULE, FusionRule, tracks_match

SFACE = "sface-2021dec-int8bq"
BY_SIZE = {"100": 0.50, "1000": 0.56, "10000": None}


def axis(i: int, dim: int = 128) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


# --- pure functions -------------------------------------------------------------------------------


def test_size_threshold_interpolates_in_log_size_between_calibrated_sizes() -> None:
    assert size_interpolated_threshold(BY_SIZE, 100, floor=0.4) == pytest.approx(0.50)
    assert size_interpolated_threshold(BY_SIZE, 1000, floor=0.4) == pytest.approx(0.56)
    # sqrt(100 * 1000) is halfway in log(size)
    assert size_interpolated_threshold(BY_SIZE, round(math.sqrt(100_000)), floor=0.4) == pytest.approx(0.53, abs=1e-3)


def test_size_threshold_never_laxer_than_the_smallest_size_or_the_floor() -> None:
    assert size_interpolated_threshold(BY_SIZE, 5, floor=0.4) == pytest.approx(0.50)  # no extrapolation down
    assert size_interpolated_threshold(BY_SIZE, 0, floor=0.4) == pytest.approx(0.50)
    assert size_interpolated_threshold(BY_SIZE, 300, floor=0.58) == pytest.approx(0.58)  # the base wins
    assert size_interpolated_threshold({}, 300, floor=0.45) == 0.45
    assert size_interpolated_threshold({"100": None}, 300, floor=0.45) == 0.45
    # a damaged stored entry is left out, never a failed decision
    assert size_interpolated_threshold({"100": "x", "y": 0.9, "1000": 0.6}, 300, floor=0.45) == pytest.approx(0.6)
    assert fused_offset_for({"mean_score": {"3": "nan?"}}, "mean_score", 3) == 0.0
    assert fused_offset_for({"mean_score": [0.1]}, "mean_score", 3) == 0.0


def test_size_threshold_beyond_the_resolved_sizes_keeps_rising() -> None:
    # 10,000 was not resolvable: extrapolated along 100 -> 1,000 (+0.06 per decade), capped at 1
    assert size_interpolated_threshold(BY_SIZE, 10_000, floor=0.4) == pytest.approx(0.62)
    assert size_interpolated_threshold({"100": 0.9, "1000": 0.99}, 10**9, floor=0.4) == 1.0
    assert size_interpolated_threshold({"100": 0.5}, 10**6, floor=0.4) == 0.5  # one size: its value


def test_fused_offset_for_picks_the_largest_calibrated_k_not_above_the_track() -> None:
    offsets = {"quality_embedding": {"2": 0.01, "3": 0.03}, "mean_score": {"3": -0.02}}
    assert fused_offset_for(offsets, "quality_embedding", 1) == 0.0
    assert fused_offset_for(offsets, "quality_embedding", 2) == 0.01
    assert fused_offset_for(offsets, "quality_embedding", 5) == 0.03
    assert fused_offset_for(offsets, "mean_score", 2) == 0.0  # no K <= 2 calibrated
    assert fused_offset_for(offsets, "max_score", 3) == 0.0
    assert fused_offset_for(offsets, None, 3) == 0.0


def test_fused_offset_measures_the_shift_of_the_impostor_tail() -> None:
    rng = np.random.default_rng(0)
    single = rng.normal(0.1, 0.1, 200_000)
    fused = rng.normal(0.15, 0.1, 200_000)  # fusion moved impostors up by 0.05
    measured = fused_offset(single, fused, threshold=0.4)
    assert measured.offset == pytest.approx(0.05, abs=0.01)
    assert measured.pair_rate == pytest.approx(float((single >= 0.4).mean()))
    # a threshold above every impostor: the rate is raised until both tails hold MIN_TAIL scores
    assert fused_offset(single, fused, threshold=2.0).pair_rate == pytest.approx(25 / 200_000)
    with pytest.raises(ValueError, match="at least 25"):
        fused_offset(single[:10], fused, threshold=0.4)


def test_person_scores_are_each_persons_best_photo() -> None:
    templates = [np.stack([axis(0), axis(1)]), np.stack([axis(2)])]
    probe = (axis(1) * 0.6 + axis(2) * 0.8)[None]
    assert person_scores(probe, templates) == pytest.approx(np.array([[0.6, 0.8]]))


def test_wilson_interval() -> None:
    low, high = wilson_interval(0, 90)
    assert low == 0.0 and high == pytest.approx(0.0409, abs=5e-4)
    low, high = wilson_interval(1, 90)
    assert low == pytest.approx(0.00196, abs=5e-4) and high == pytest.approx(0.0603, abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)


def test_probe_cache_keys_by_digest_and_model_version(tmp_path: Path) -> None:
    cache = ProbeCache(tmp_path, model_version="m-1", min_face_px=40)
    vector = np.arange(4, dtype=np.float32)
    cache.put(file_digest(b"photo a"), (vector, {"face_px": 80.0}))
    cache.put(file_digest(b"photo b"), None)
    cache.save()
    again = ProbeCache(tmp_path, model_version="m-1", min_face_px=40)
    found = again.get(file_digest(b"photo a"))
    assert found is not None and np.array_equal(found[0], vector) and found[1] == {"face_px": 80.0}
    assert again.get(file_digest(b"photo b")) is None and file_digest(b"photo c") not in again
    assert len(ProbeCache(tmp_path, model_version="m-2", min_face_px=40)) == 0  # another model: other file
    assert len(ProbeCache(tmp_path, model_version="m-1", min_face_px=60)) == 0  # another face size too
    (tmp_path / "door-probes-m-1-min40.npz").write_bytes(b"not an npz")
    assert len(ProbeCache(tmp_path, model_version="m-1", min_face_px=40)) == 0  # unreadable: starts empty


# --- against the database ---------------------------------------------------------------------------


@pytest.fixture
def fresh_caches() -> None:
    CALIBRATIONS.clear()
    GALLERY_SIZES.clear()


def enrol_people(count: int, model_version: str = SFACE, dim: int = 128) -> list[Person]:
    people = []
    for i in range(count):
        person = Person.objects.create(name=f"P{i}")
        FaceEmbedding.objects.create(person=person, model_version=model_version, embedding=axis(i, dim).tolist())
        people.append(person)
    return people


@pytest.mark.django_db
def test_the_matcher_uses_the_threshold_of_the_live_gallery_size(fresh_caches: None) -> None:
    store_threshold(
        model_version=SFACE, threshold=0.40, target_fmr=1e-3,
        details={"by_gallery_size": {"thresholds": {"2": 0.50, "20": 0.60}}},
    )  # fmt: skip
    enrol_people(2)
    assert threshold_for(SFACE) == pytest.approx(0.50)
    enrol_people(4)  # 6 people: a saved gallery vector clears the count at once in this process
    assert threshold_for(SFACE) == pytest.approx(0.50 + 0.10 * math.log(3) / math.log(10), abs=1e-6)
    result = match_decide_many([axis(0)], model_version=SFACE, doors=[None])[0]
    assert result.threshold == pytest.approx(threshold_for(SFACE))  # what the event records
    # people of another model version do not count
    enrol_people(30, model_version="facenet-casia-20180408", dim=512)
    assert threshold_for(SFACE) == pytest.approx(0.50 + 0.10 * math.log(3) / math.log(10), abs=1e-6)
    # a damaged calibration falls back to its base threshold
    ModelCalibration.objects.filter(model_version=SFACE).update(details={"by_gallery_size": [1, 2]})
    CALIBRATIONS.clear()
    assert threshold_for(SFACE) == pytest.approx(0.40)
    # a door's own threshold is used as it is
    assert threshold_for(SFACE, Door.objects.create(name="vault", match_threshold=0.9)) == 0.9


@pytest.mark.django_db
def test_fused_offsets_are_stored_kept_and_applied_to_fused_matches_only(fresh_caches: None) -> None:
    with pytest.raises(CalibrationError):  # offsets are relative to a stored calibration
        store_fused_offsets(model_version=SFACE, rule="quality_embedding", offsets={3: 0.02}, source={})
    store_threshold(model_version=SFACE, threshold=0.45, target_fmr=1e-3)
    with pytest.raises(ValueError, match="K >= 2"):
        store_fused_offsets(model_version=SFACE, rule="quality_embedding", offsets={1: 0.02}, source={})
    with pytest.raises(ValueError, match="K >= 2"):
        store_fused_offsets(model_version=SFACE, rule="quality_embedding", offsets={3: 0.9}, source={})
    store_fused_offsets(model_version=SFACE, rule="quality_embedding", offsets={3: 0.04}, source={"test": 1})
    store_threshold(model_version=SFACE, threshold=0.46, target_fmr=1e-3, details={"source": "again"})
    assert ModelCalibration.objects.get(model_version=SFACE).details["fused_offsets"] == {
        "quality_embedding": {"3": 0.04}
    }
    CALIBRATIONS.clear()
    assert threshold_for(SFACE) == pytest.approx(0.46)
    assert threshold_for(SFACE, probes_fused=3, fusion="quality_embedding") == pytest.approx(0.50)
    # a rule without stored offsets takes the built-in one measured for the site's person score
    builtin = BUILTIN_FUSED_OFFSETS.get((SFACE, "best_photo"), {}).get("max_score", {}).get(3, 0.0)
    assert threshold_for(SFACE, probes_fused=3, fusion="max_score") == pytest.approx(0.46 + builtin)
    # a measured negative offset is kept but never makes a track laxer than one face
    store_fused_offsets(model_version=SFACE, rule="mean_score", offsets={3: -0.03}, source={})
    CALIBRATIONS.clear()
    assert threshold_for(SFACE, probes_fused=3, fusion="mean_score") == pytest.approx(0.46)

    ada = enrol_people(1)[0]
    # a track of three faces 0.48 from Ada: above the one-face threshold, below the fused one
    near = (0.48 * axis(0) + math.sqrt(1 - 0.48**2) * axis(5)).astype(np.float32)
    one, three = tracks_match(
        [[near], [near, near, near]], model_version=SFACE, doors=[None, None], rule=FusionRule.QUALITY_EMBEDDING
    )
    assert (one.matched, one.person_id, one.threshold) == (True, ada.pk, pytest.approx(0.46))
    assert (three.matched, three.threshold) == (False, pytest.approx(0.50))


@pytest.mark.django_db
@pytest.mark.parametrize("scoring", ["best_photo", "mean_template"])
def test_built_in_fused_offsets_apply_for_the_person_score_they_were_measured_with(
    fresh_caches, settings, scoring: str
) -> None:
    settings.RECOGNITION_PERSON_SCORE = scoring
    builtin = BUILTIN_FUSED_OFFSETS[(SFACE, scoring)]
    assert builtin, "the default model ships measured offsets for both person scores"
    for rule in FusionRule:
        expected = BUILTIN_THRESHOLDS[SFACE] + max(builtin.get(str(rule), {}).get(3, 0.0), 0.0)
        assert threshold_for(SFACE, probes_fused=3, fusion=str(rule)) == pytest.approx(expected)
        assert threshold_for(SFACE, probes_fused=1, fusion=str(rule)) == BUILTIN_THRESHOLDS[SFACE]
    # the setting's threshold is offset the same way; a door's own threshold is used as it is
    settings.RECOGNITION_DEFAULT_THRESHOLD = 0.5
    rule = str(TRACK_FUSION_RULE)
    assert threshold_for(SFACE, probes_fused=3, fusion=rule) == pytest.approx(0.5 + builtin[rule][3])
    door = Door.objects.create(name="vault", match_threshold=0.6)
    assert threshold_for(SFACE, door, probes_fused=3, fusion=rule) == 0.6
    # a model without measured offsets gets none
    assert threshold_for("facenet-vggface2", probes_fused=3, fusion=rule) == pytest.approx(0.5)


@pytest.mark.django_db
def test_only_offsets_measured_with_the_sites_person_score_are_stored(fresh_caches, settings) -> None:
    from recognition.door_evaluation import DoorReport, door_fused_offsets_store

    def report(person_score: str, offset: float) -> DoorReport:
        return DoorReport(
            model_version=SFACE, threshold=0.476, min_margin=0.05, probes_per_attempt=3, fusion="quality_embedding",
            top1=1.0, enrolled_rejected=0.0, strangers_accepted=0.0, wrong_person_admitted=0.0,
            failure_to_detect=0.0, failure_to_enrol=0.0, ms_per_probe=1.0, person_score=person_score,
            fused_offset_measured={"offset": offset},
        )  # fmt: skip

    settings.RECOGNITION_PERSON_SCORE = "best_photo"
    store_threshold(model_version=SFACE, threshold=0.45, target_fmr=1e-3)
    stored = door_fused_offsets_store([report("mean_template", 0.04), report("best_photo", 0.01)])
    assert stored == {"quality_embedding": {3: 0.01}}
    details = ModelCalibration.objects.get(model_version=SFACE).details
    assert details["fused_offsets"] == {"quality_embedding": {"3": 0.01}}
    assert details["fused_offsets_source"]["quality_embedding"]["person_score"] == "best_photo"
