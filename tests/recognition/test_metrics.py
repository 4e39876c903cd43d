"""Verification and identification metrics (recognition/metrics.py) on small hand-checked scores."""

from __future__ import annotations

import numpy as np
import pytest

from recognition.metrics import (
    best_accuracy_threshold,
    cosine_scores,
    identification_scores,
    kfold_accuracy,
    roc_auc,
    tar_at_far,
    threshold_for_far,
)

SCORES = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1, 0.75])
LABELS = np.array([True, True, True, True, False, False, False, False])


def test_cosine_scores_are_row_wise() -> None:
    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [-3.0, -4.0]])
    assert cosine_scores(a, b) == pytest.approx([1.0, -1.0])


def test_roc_auc() -> None:
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([True, True, False, False])) == pytest.approx(1.0)
    # one impostor (0.75) above two genuine scores (0.7, 0.4): 2 of 16 pairs ordered wrongly
    assert roc_auc(SCORES, LABELS) == pytest.approx(14 / 16)


def test_threshold_and_tar_at_far() -> None:
    impostors = SCORES[~LABELS]
    assert threshold_for_far(impostors, 0.25) == np.nextafter(0.3, np.inf)  # accepts one of four impostors
    assert threshold_for_far(impostors, 1e-6) == np.nextafter(0.75, np.inf)  # below 1/n: none accepted
    tar, threshold = tar_at_far(SCORES, LABELS, 1e-6)
    assert (tar, threshold) == (0.5, np.nextafter(0.75, np.inf))
    with pytest.raises(ValueError, match="no impostor"):
        threshold_for_far(np.array([]), 0.1)


def test_best_accuracy_and_kfold() -> None:
    threshold, accuracy = best_accuracy_threshold(SCORES, LABELS)
    assert accuracy == pytest.approx(7 / 8) and 0.3 < threshold < 0.4
    accs, thresholds = kfold_accuracy(SCORES, LABELS, np.array([0, 1, 0, 1, 0, 1, 0, 1]))
    assert accs.shape == thresholds.shape == (2,)
    assert np.all((accs >= 0) & (accs <= 1))


def test_identification_scores_take_each_persons_best_entry() -> None:
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    ids = np.array([7, 7, 9])
    best, score = identification_scores(gallery, ids, np.array([[0.0, 1.0], [1.0, 0.0]]))
    assert best.tolist() == [9, 7]
    assert score == pytest.approx([1.0, 1.0])


def test_identification_scores_by_mean_template() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 2.0], [0.8, 0.6]])  # 7: two entries (one not unit), 9: one
    ids = np.array([7, 7, 9])
    probe = np.array([[1.0, 0.0]])
    best, score = identification_scores(gallery, ids, probe)
    assert best.tolist() == [7] and score == pytest.approx([1.0]), "7's best entry"
    best, score = identification_scores(gallery, ids, probe, person_score="mean_template")
    assert best.tolist() == [9] and score == pytest.approx([0.8]), "7's template (1, 1)/sqrt(2) scores 0.707"
    with pytest.raises(ValueError, match="unknown person score"):
        identification_scores(gallery, ids, probe, person_score="median")


def test_pair_rate_for_a_gallery_shrinks_with_its_size() -> None:
    from recognition.metrics import pair_fmr_for_gallery

    one = pair_fmr_for_gallery(0.01, people=1, photos_per_person=1)
    assert one == pytest.approx(0.01)
    # 100 people x 3 photos: 1 - 0.99 ** (1 / 300) ~ 3.35e-5
    assert pair_fmr_for_gallery(0.01, people=100) == pytest.approx(3.35e-5, rel=1e-3)
    assert pair_fmr_for_gallery(0.01, people=10_000) < pair_fmr_for_gallery(0.01, people=1_000)
    with pytest.raises(ValueError, match="target"):
        pair_fmr_for_gallery(0.0, people=10)


def test_thresholds_for_gallery_sizes_rise_with_the_gallery_and_say_what_is_not_resolvable() -> None:
    from recognition.metrics import thresholds_for_gallery_sizes

    rng = np.random.default_rng(0)
    impostors = rng.normal(0.0, 0.1, 1_000_000)
    found = thresholds_for_gallery_sizes(impostors, target_acceptance=0.01, sizes=(100, 1_000, 10_000))
    assert found[100] < found[1_000]
    assert found[10_000] is None  # needs a pair rate of ~3.4e-7: a million pairs cannot say
    # At the 100-people threshold, a simulated stranger meets 300 impostor photos and passes ~1 % of the time.
    trials = rng.normal(0.0, 0.1, (20_000, 300)).max(axis=1)
    assert float((trials >= found[100]).mean()) == pytest.approx(0.01, abs=0.004)


def test_template_impostor_scores_compare_photos_with_other_peoples_templates() -> None:
    from recognition.evaluation import template_impostor_scores

    e = np.eye(4)
    # a: three photos (a template), b: three photos (a template), c: one photo (none)
    vectors = np.stack([e[0], e[0], e[1], e[2], e[2], e[2] * 3, e[3]])
    owner = np.array(["a", "a", "a", "b", "b", "b", "c"])
    scores = template_impostor_scores(vectors, owner)
    # a's photos vs b's template (e2): 0, 0, 0; b's photos vs a's template (2e0 + e1)/sqrt(5): 0 x 3;
    # c's photo (e3) vs both: 0, 0 -> 8 scores, never a photo against its own person
    assert scores.shape == (8,) and np.allclose(scores, 0.0)
    probe_like_a = np.stack([vectors[0], vectors[1], vectors[2], e[0]])
    scores = template_impostor_scores(probe_like_a, np.array(["a", "a", "a", "d"]))
    assert scores.tolist() == pytest.approx([2 / np.sqrt(5)]), "d's photo against a's template"
    assert template_impostor_scores(vectors[:3], owner[:3]).size == 0, "only a's photos: no impostor"
