"""Verification and identification metrics over similarity scores: ROC, AUC, TAR at FAR, the
threshold for a target FAR, k-fold accuracy, best match per probe. Plain numpy, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, d) arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), accept when ``score >= threshold``; thresholds decreasing."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tar = np.r_[0.0, tp / max(y.sum(), 1)]
    far = np.r_[0.0, fp / max((~y).sum(), 1)]
    thresholds = np.r_[np.inf, s[distinct]]
    return far, tar, thresholds


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    far, tar, _ = roc_curve(scores, labels)
    return float(np.trapezoid(tar, far))


def threshold_for_far(impostor_scores: np.ndarray, target_far: float) -> float:
    """Smallest threshold with empirical FAR <= ``target_far`` (accept when score >= threshold).

    With n impostor scores the resolution is 1/n: a target below 1/n yields a threshold just
    above the highest impostor score (empirical FAR 0).
    """
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    if imp.size == 0:
        raise ValueError("no impostor scores")
    k = int(np.floor(target_far * imp.size))  # number of impostors we may accept
    k = min(k, imp.size - 1)
    return float(np.nextafter(imp[k], np.inf))


def pair_fmr_for_gallery(target_acceptance: float, *, people: int, photos_per_person: int = 3) -> float:
    """The pair false-match rate at which a stranger matches none of ``people`` x
    ``photos_per_person`` gallery photos with probability ``1 - target_acceptance``, taking the
    comparisons as independent: ``1 - (1 - target) ** (1 / (people * photos))``. Photos of one
    person are correlated, so the true stranger acceptance at that threshold is lower (the
    threshold errs on the safe side)."""
    if not 0 < target_acceptance < 1 or people < 1 or photos_per_person < 1:
        raise ValueError("target in (0, 1), people and photos_per_person >= 1")
    return float(-np.expm1(np.log1p(-target_acceptance) / (people * photos_per_person)))


def thresholds_for_gallery_sizes(
    impostor_scores: np.ndarray,
    *,
    target_acceptance: float,
    sizes: Sequence[int] = (100, 1_000, 10_000),
    photos_per_person: int = 3,
) -> dict[int, float | None]:
    """The threshold per gallery size (people) that keeps strangers accepted at ``target_acceptance``
    (:func:`pair_fmr_for_gallery`); None where the impostor scores cannot resolve the pair rate it
    needs (fewer than 1 / rate of them): measure on more pairs before trusting a gallery that big."""
    imp = np.asarray(impostor_scores, dtype=np.float64)
    out: dict[int, float | None] = {}
    for size in sizes:
        fmr = pair_fmr_for_gallery(target_acceptance, people=size, photos_per_person=photos_per_person)
        out[int(size)] = threshold_for_far(imp, fmr) if fmr * imp.size >= 1 else None
    return out


def wilson_interval(successes: int, trials: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); ``(0, 1)`` without trials. Unlike
    ``p +- z * se`` it stays inside [0, 1] and says something at 0 successes (0 of 90 -> up to 4.1 %)."""
    if trials <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError("successes in [0, trials]")
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (round(max(0.0, float(centre - half)), 6), round(min(1.0, float(centre + half)), 6))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, target_far: float) -> tuple[float, float]:
    """(TAR, threshold) at the threshold from :func:`threshold_for_far` on the impostors."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    thr = threshold_for_far(scores[~labels], target_far)
    return float(np.mean(scores[labels] >= thr)), thr


def best_accuracy_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising verification accuracy on these pairs."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    s = np.unique(scores)
    candidates = np.r_[s[0] - 1e-6, (s[:-1] + s[1:]) / 2.0, s[-1] + 1e-6]
    order = np.argsort(scores)
    ss, yy = scores[order], labels[order]
    # rejected = scores < t: count genuine rejected and impostors rejected for every candidate
    idx = np.searchsorted(ss, candidates, side="left")
    gen_below = np.r_[0, np.cumsum(yy)][idx]
    imp_below = np.r_[0, np.cumsum(~yy)][idx]
    correct = (labels.sum() - gen_below) + imp_below
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best] / scores.size)


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracy with the threshold chosen on the other folds; returns (acc, thr)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    folds = np.asarray(folds)
    accs, thrs = [], []
    for f in np.unique(folds):
        test = folds == f
        thr, _ = best_accuracy_threshold(scores[~test], labels[~test])
        accs.append(float(np.mean((scores[test] >= thr) == labels[test])))
        thrs.append(thr)
    return np.array(accs), np.array(thrs)


def mean_template(vectors: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """The normalised mean of the normalised ``vectors`` (a person's template, float32): what
    ``recognition.gallery.PersonScore.MEAN_TEMPLATE`` compares a face with."""
    units = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    total = units.sum(axis=0)
    return (total / np.linalg.norm(total)).astype(np.float32)


def identification_scores(
    gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, *, person_score: str = "best_photo"
) -> tuple[np.ndarray, np.ndarray]:
    """Best-matching identity and its score for every probe: a person's score is their best entry
    (``person_score="best_photo"``) or the cosine with the normalised mean of their normalised
    entries (``"mean_template"``; the gallery's rules, ``recognition.gallery.PersonScore``)."""
    if person_score not in ("best_photo", "mean_template"):
        raise ValueError(f"unknown person score {person_score!r}")
    ids = np.unique(gallery_ids)
    if person_score == "mean_template":
        per_id = probes @ np.stack([mean_template(gallery[gallery_ids == pid]) for pid in ids]).T
    else:
        sims = probes @ gallery.T  # unit vectors -> cosine
        per_id = np.stack([sims[:, gallery_ids == pid].max(axis=1) for pid in ids], axis=1)
    best = per_id.argmax(axis=1)
    return ids[best], per_id[np.arange(probes.shape[0]), best]
