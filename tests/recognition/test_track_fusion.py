"""Deciding on a track: a detection's track probes are fused into one match (real gallery, real
decision path), the event says how many; a model without a measured threshold decides nothing."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from accessctl.audit import chain_verify
from accessctl.models import AccessEvent, AccessGroup, Door, Person
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.calibration import CALIBRATIONS, store_threshold, threshold_measured
from recognition.detections import detections_decide
from recognition.matcher import match_decide
from recognition.models import FaceEmbedding, InboundDetection
from recognition.track_fusion import FusionRule, fused_embedding, probe_weights, tracks_match

pytestmark = pytest.mark.django_db(transaction=True)

SFACE = "sface-2021dec-int8bq"
FACENET = "facenet-casia-20180408"


@pytest.fixture(autouse=True)
def no_side_effects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)
    CALIBRATIONS.clear()


def axis(i: int, dim: int = 128) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def mix(*parts: tuple[float, int], dim: int = 128) -> np.ndarray:
    v = sum(w * axis(i, dim) for w, i in parts)
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def people(media_root):
    door = Door.objects.create(name="Lab")
    device = device_provision(uid="lab-1", door=door).device
    ada, bob = Person.objects.create(name="Ada"), Person.objects.create(name="Bob")
    group = AccessGroup.objects.create(name="Lab")
    group.people.add(ada, bob)
    group.doors.add(door)
    for person, i in ((ada, 0), (bob, 1)):
        FaceEmbedding.objects.create(person=person, model_version=SFACE, embedding=axis(i).tolist())
        FaceEmbedding.objects.create(person=person, model_version=FACENET, embedding=axis(i, 512).tolist())
    return device, ada, bob


def stage(
    device, vectors: list[np.ndarray], *, model_version: str = SFACE, face_px: list[float] | None = None, **overrides
) -> str:
    now = time.time()
    sizes = face_px or [100.0] * len(vectors)
    probes = tuple(
        p.TrackProbe.with_embedding(values=v.tolist(), encoding="f32", quality={"face_px": px})
        for v, px in zip(vectors[1:], sizes[1:], strict=False)
    )
    det = p.Detection.with_embedding(
        values=vectors[0].tolist(), model_version=model_version, track_probes=probes, device_uid=device.uid,
        detection_id=p.new_id(), captured_at=now, sent_at=now, detector_score=0.99, box=(0, 0, 120, 120),
        quality={"face_px": 120.0},
    )  # fmt: skip
    payload = det.to_dict() | overrides
    InboundDetection.objects.create(
        detection_id=det.detection_id, device_uid=device.uid, device_id=device.pk, door=device.door, payload=payload
    )
    return det.detection_id


# A track of Ada: two good frames and one turned towards Bob's likeness.
ADA_TRACK = [mix((0.8, 0), (0.6, 2)), mix((0.8, 0), (0.6, 3)), mix((0.3, 0), (0.954, 1))]


def test_a_track_is_decided_on_all_its_faces_and_the_event_says_how_many(people) -> None:
    device, ada, _ = people
    # One frame alone decides wrongly (it looks more like Bob)...
    assert match_decide(ADA_TRACK[2], model_version=SFACE).best_person_id != ada.pk
    fused = stage(device, [ADA_TRACK[2], ADA_TRACK[0], ADA_TRACK[1]])
    single = stage(device, [ADA_TRACK[0]])
    assert detections_decide([fused, single]) == ["matched", "matched"]
    events = {str(e.detection_id): e for e in AccessEvent.objects.all()}
    # ... the track (the server's rule: quality-weighted mean embedding, Ada ~0.81) is Ada.
    assert events[fused].person_id == ada.pk and events[fused].probes_fused == 3
    assert events[fused].similarity > 0.75 and events[fused].margin > 0.3
    assert events[single].person_id == ada.pk and events[single].probes_fused == 1
    assert chain_verify().ok  # probes_fused is chained


def test_a_track_face_too_small_is_left_out_of_the_fusion(people) -> None:
    """The main face's rule (RECOGNITION_MIN_FACE_PX) for every face: a tiny one does not count."""
    device, ada, _ = people
    detection_id = stage(device, [ADA_TRACK[0], ADA_TRACK[1], ADA_TRACK[2]], face_px=[120.0, 100.0, 12.0])
    assert detections_decide([detection_id]) == ["matched"]
    event = AccessEvent.objects.get(detection_id=detection_id)
    assert event.person_id == ada.pk and event.probes_fused == 2
    assert event.similarity == pytest.approx(1.6 / np.sqrt(2.56 + 0.72), abs=1e-3)  # the two big faces


def test_the_rules_differ_where_it_matters(people) -> None:
    _, ada, bob = people
    (mean,) = tracks_match([ADA_TRACK], model_version=SFACE, doors=[None], rule=FusionRule.MEAN_SCORE)
    (best,) = tracks_match([ADA_TRACK], model_version=SFACE, doors=[None], rule=FusionRule.MAX_SCORE)
    (avg,) = tracks_match([ADA_TRACK], model_version=SFACE, doors=[None], rule=FusionRule.MEAN_EMBEDDING)
    assert mean.person_id == ada.pk and best.person_id == bob.pk and avg.person_id == ada.pk
    # Quality weighting: the frame turned towards Bob's likeness counts most when it is the best measured one.
    (weighted,) = tracks_match(
        [ADA_TRACK], model_version=SFACE, doors=[None], weights=[[0.05, 0.05, 1.0]], rule=FusionRule.QUALITY_SCORE
    )
    assert weighted.best_person_id == bob.pk


def test_a_track_of_one_face_is_matched_as_a_single_detection(people) -> None:
    for rule in FusionRule:
        (result,) = tracks_match([[ADA_TRACK[0]]], model_version=SFACE, doors=[None], rule=rule)
        assert result == match_decide(ADA_TRACK[0], model_version=SFACE)


def test_a_stranger_track_stays_unknown(people) -> None:
    stranger = [mix((0.3, 0), (0.95, 5)), mix((0.25, 1), (0.97, 6)), mix((0.2, 0), (0.98, 7))]
    (result,) = tracks_match([stranger], model_version=SFACE, doors=[None])
    assert result.reason == "unknown_face" and result.person_id is None


def test_score_means_never_accept_what_no_single_face_would(people) -> None:
    """Each face is below the threshold (0.476) for Ada: a mean of similarities stays below it; an
    averaged embedding can rise above it (the noise of the faces cancels, the likeness adds up):
    the reason embedding averaging lets more strangers in (see TRACK_FUSION_RULE's figures)."""
    look_alike = [mix((0.45, 0), (0.89, 5)), mix((0.45, 0), (0.89, 6)), mix((0.45, 0), (0.89, 7))]
    assert all(not match_decide(v, model_version=SFACE).matched for v in look_alike)
    (mean,) = tracks_match([look_alike], model_version=SFACE, doors=[None], rule=FusionRule.MEAN_SCORE)
    (avg,) = tracks_match([look_alike], model_version=SFACE, doors=[None], rule=FusionRule.MEAN_EMBEDDING)
    assert mean.reason == "unknown_face" and avg.reason == "matched"


def test_fusion_helpers() -> None:
    v = fused_embedding([axis(0), axis(1)], [3.0, 1.0])
    assert v[0] == pytest.approx(3 / np.sqrt(10)) and np.linalg.norm(v) == pytest.approx(1.0)
    assert probe_weights([None, {"face_px": 0.0}])[0] == 1.0
    assert probe_weights([{"face_px": 0.0}])[0] > 0  # a badly measured face still counts a little
    good = {"face_px": 160.0, "score": 1.0, "sharpness": 200.0, "frontal": 1.0}
    assert probe_weights([good])[0] > probe_weights([good | {"frontal": 0.1}])[0]


def test_a_corrupt_track_probe_denies_the_detection_with_an_audit_record(people) -> None:
    """A probe the bridge would refuse (all-zero embedding) found staged anyway: recorded, denied."""
    device, _, _ = people
    zero = base64.b64encode(b"\x00" * 4 * 128).decode()
    detection_id = stage(device, [ADA_TRACK[0], ADA_TRACK[1]])
    row = InboundDetection.objects.get(detection_id=detection_id)
    row.payload["track_probes"][0]["embedding"] = zero
    row.save()
    assert detections_decide([detection_id]) == ["bad_embedding"]
    event = AccessEvent.objects.get(detection_id=detection_id)
    assert event.decision == "deny" and event.person_id is None and "error" in event.details


# -- a model without a measured door threshold ------------------------------------------------


def test_a_model_without_a_measured_threshold_does_not_decide_at_a_door(people) -> None:
    device, ada, _ = people
    assert not threshold_measured(FACENET) and threshold_measured(SFACE)
    detection_id = stage(device, [axis(0, 512)], model_version=FACENET)
    assert detections_decide([detection_id]) == ["model_not_calibrated"]
    event = AccessEvent.objects.get(detection_id=detection_id)
    # Denied and audited: who it looked like is on record, never granted.
    assert (event.decision, event.person_id, event.model_version) == ("deny", None, FACENET)
    assert event.similarity == pytest.approx(1.0) and event.details["best_person_id"] == ada.pk
    assert chain_verify().ok


def test_a_measured_threshold_lets_the_model_decide(people) -> None:
    device, ada, _ = people
    store_threshold(model_version=FACENET, threshold=0.6, target_fmr=0.001)
    CALIBRATIONS.clear()
    detection_id = stage(device, [axis(0, 512)], model_version=FACENET)
    assert detections_decide([detection_id]) == ["matched"]
    assert AccessEvent.objects.get(detection_id=detection_id).person_id == ada.pk


def test_a_door_override_is_a_threshold_chosen_on_purpose(people) -> None:
    device, _, _ = people
    Door.objects.filter(pk=device.door_id).update(match_threshold=0.7)
    detection_id = stage(device, [axis(0, 512)], model_version=FACENET)
    assert detections_decide([detection_id]) == ["matched"]
