"""Accuracy evaluation: LFW 10-fold verification, an open-set identification benchmark on LFW, and
the genuine/impostor score distributions threshold calibration reads.

The LFW folder is an argument (the management commands ``evaluate_lfw`` and ``calibrate_threshold``
find it with ``recognition.datasets.lfw_locate``: ``--lfw``, ``settings.LFW_DIR``, or a download).
Datasets are read by ``recognition.datasets``, faces detected and embedded once per image by
``recognition.embedding_cache``, and scored by ``recognition.metrics``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceengine.embedder import Embedder
from faceengine.registry import get_embedder
from recognition.datasets import Pair, list_identity_folder, read_lfw_pairs
from recognition.embedding_cache import DetectionCache, detect_images, embed_images
from recognition.metrics import (
    cosine_scores,
    identification_scores,
    kfold_accuracy,
    mean_template,
    roc_auc,
    tar_at_far,
    threshold_for_far,
)

logger = logging.getLogger(__name__)

DEFAULT_FARS = (1e-3, 1e-4)


# --- LFW verification


@dataclass
class VerificationReport:
    backend: str
    model_version: str
    n_pairs: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    fold_thresholds: list[float]
    tar_at_far: dict[str, float]
    threshold_at_far: dict[str, float]
    auc: float
    undetected_images: int
    genuine_mean: float
    impostor_mean: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        tars = ", ".join(
            f"TAR@FAR={far}: {tar * 100:.2f}% (thr {self.threshold_at_far[far]:.4f})"
            for far, tar in self.tar_at_far.items()
        )
        return (
            f"{self.model_version}: LFW accuracy {self.accuracy * 100:.2f}% "
            f"± {self.accuracy_std * 100:.2f} ({self.n_pairs} pairs, 10-fold), {tars}, "
            f"AUC {self.auc:.5f}, undetected images {self.undetected_images}"
        )


def pair_scores(pairs: Sequence[Pair], embeddings: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cosine scores, same-person labels, folds) for the pairs."""
    a = np.stack([embeddings[p.path1] for p in pairs])
    b = np.stack([embeddings[p.path2] for p in pairs])
    labels = np.array([p.same for p in pairs], dtype=bool)
    folds = np.array([p.fold for p in pairs])
    return cosine_scores(a, b), labels, folds


def verification_report(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    *,
    backend: str,
    model_version: str,
    fars: Sequence[float] = DEFAULT_FARS,
    undetected: int = 0,
) -> VerificationReport:
    accs, thrs = kfold_accuracy(scores, labels, folds)
    tars: dict[str, float] = {}
    thr_far: dict[str, float] = {}
    for far in fars:
        tar, thr = tar_at_far(scores, labels, far)
        tars[f"{far:g}"], thr_far[f"{far:g}"] = tar, thr
    return VerificationReport(
        backend=backend,
        model_version=model_version,
        n_pairs=int(scores.size),
        accuracy=float(accs.mean()),
        accuracy_std=float(accs.std()),
        fold_accuracies=accs.tolist(),
        fold_thresholds=thrs.tolist(),
        tar_at_far=tars,
        threshold_at_far=thr_far,
        auc=roc_auc(scores, labels),
        undetected_images=undetected,
        genuine_mean=float(scores[labels].mean()),
        impostor_mean=float(scores[~labels].mean()),
    )


def lfw_embeddings(
    embedder: Embedder,
    relpaths: Sequence[str],
    *,
    lfw_root: str | Path,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], DetectionCache]:
    images = Path(lfw_root) / "images"
    detections = detect_images(images, relpaths, cache_dir=cache_dir, cache_name="detections-lfw")
    emb = embed_images(images, relpaths, embedder, detections=detections, cache_dir=cache_dir)
    return emb, detections


def evaluate_lfw(
    backend: str | None = None,
    *,
    lfw_root: str | Path,
    cache_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    fars: Sequence[float] = DEFAULT_FARS,
    **embedder_options: Any,
) -> VerificationReport:
    """LFW 6000-pair verification: 10-fold accuracy, TAR at FAR over all pairs, AUC."""
    emb = embedder or get_embedder(backend, **embedder_options)
    pairs = read_lfw_pairs(Path(lfw_root) / "pairs.txt")
    relpaths = list(dict.fromkeys([p.path1 for p in pairs] + [p.path2 for p in pairs]))
    embeddings, detections = lfw_embeddings(emb, relpaths, lfw_root=lfw_root, cache_dir=cache_dir)
    undetected = sum(1 for p in relpaths if detections.counts.get(p, 0) == 0)
    scores, labels, folds = pair_scores(pairs, embeddings)
    report = verification_report(
        scores,
        labels,
        folds,
        backend=emb.name,
        model_version=emb.model_version,
        fars=fars,
        undetected=undetected,
    )
    logger.info("%s", report.summary())
    return report


# --- identification


@dataclass
class IdentificationReport:
    model_version: str
    identities: int
    gallery_entries: int
    known_probes: int
    unknown_probes: int
    rank1: float  # closed-set: best match is the right person (no threshold)
    threshold: float
    detection_identification_rate: float  # right person AND score >= threshold
    unknown_false_accept_rate: float  # unknown probes with best score >= threshold
    dir_at_fpir: dict[str, float]  # DIR at the threshold giving this unknown FAR
    threshold_at_fpir: dict[str, float]
    person_score: str = "best_photo"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        extra = ", ".join(
            f"DIR@FPIR={k}: {v * 100:.2f}% (thr {self.threshold_at_fpir[k]:.4f})" for k, v in self.dir_at_fpir.items()
        )
        return (
            f"{self.model_version}: {self.identities} identities x gallery "
            f"({self.gallery_entries} entries, {self.person_score}), {self.known_probes} known / "
            f"{self.unknown_probes} unknown probes; rank-1 {self.rank1 * 100:.2f}%; at threshold "
            f"{self.threshold:.4f}: identified {self.detection_identification_rate * 100:.2f}%, "
            f"unknown accepted {self.unknown_false_accept_rate * 100:.3f}%; {extra}"
        )


def identification_benchmark(
    backend: str | None = None,
    *,
    lfw_root: str | Path,
    cache_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    min_images: int = 5,
    gallery_size: int = 3,
    threshold: float | None = None,
    fpirs: Sequence[float] = (1e-2, 1e-3),
    person_score: str = "best_photo",
    **embedder_options: Any,
) -> IdentificationReport:
    """Open-set identification on LFW.

    People with >= ``min_images`` images are enrolled with their first ``gallery_size`` images;
    their other images are known probes. Everyone else's images are unknown probes. A person is
    scored by ``person_score`` (the gallery's rules: ``recognition.gallery.PersonScore``). The
    threshold defaults to the LFW-pairs threshold at FAR 1e-3 (what a 1:1 calibration would
    give); DIR at a few unknown-acceptance rates (FPIR) is reported as well.
    """
    emb = embedder or get_embedder(backend, **embedder_options)
    people = list_identity_folder(Path(lfw_root) / "images")
    enrolled = {p: f for p, f in people.items() if len(f) >= min_images}
    relpaths = [f for files in people.values() for f in files]
    embeddings, _ = lfw_embeddings(emb, relpaths, lfw_root=lfw_root, cache_dir=cache_dir)
    names = sorted(enrolled)
    index = {n: i for i, n in enumerate(names)}
    g_vecs, g_ids, k_vecs, k_ids, u_vecs = [], [], [], [], []
    for person, files in people.items():
        if person in enrolled:
            for f in files[:gallery_size]:
                g_vecs.append(embeddings[f])
                g_ids.append(index[person])
            for f in files[gallery_size:]:
                k_vecs.append(embeddings[f])
                k_ids.append(index[person])
        else:
            u_vecs.extend(embeddings[f] for f in files)
    gallery, gallery_ids = np.stack(g_vecs), np.array(g_ids)
    known_ids = np.array(k_ids)
    k_best, k_score = identification_scores(gallery, gallery_ids, np.stack(k_vecs), person_score=person_score)
    _, u_score = identification_scores(gallery, gallery_ids, np.stack(u_vecs), person_score=person_score)
    if threshold is None:
        pairs = read_lfw_pairs(Path(lfw_root) / "pairs.txt")
        scores, labels, _ = pair_scores(pairs, embeddings)
        threshold = threshold_for_far(scores[~labels], 1e-3)
    correct = k_best == known_ids
    dir_at: dict[str, float] = {}
    thr_at: dict[str, float] = {}
    for fpir in fpirs:
        thr = threshold_for_far(u_score, fpir)
        dir_at[f"{fpir:g}"] = float(np.mean(correct & (k_score >= thr)))
        thr_at[f"{fpir:g}"] = thr
    report = IdentificationReport(
        model_version=emb.model_version,
        identities=len(names),
        gallery_entries=int(gallery.shape[0]),
        known_probes=int(known_ids.size),
        unknown_probes=int(u_score.size),
        rank1=float(correct.mean()),
        threshold=float(threshold),
        detection_identification_rate=float(np.mean(correct & (k_score >= threshold))),
        unknown_false_accept_rate=float(np.mean(u_score >= threshold)),
        dir_at_fpir=dir_at,
        threshold_at_fpir=thr_at,
        person_score=person_score,
    )
    logger.info("%s", report.summary())
    return report


# --- calibration data


@dataclass
class ScoreDistributions:
    model_version: str
    genuine: np.ndarray
    impostor: np.ndarray
    source: str
    #: Photos scored against other people's mean templates (:func:`template_impostor_scores`).
    template_impostor: np.ndarray | None = None

    def threshold_for_fmr(self, target_fmr: float) -> float:
        return threshold_for_far(self.impostor, target_fmr)

    def fnmr_at(self, threshold: float) -> float:
        return float(np.mean(self.genuine < threshold))


def lfw_pair_distributions(
    embedder: Embedder, *, lfw_root: str | Path, cache_dir: str | Path | None = None
) -> ScoreDistributions:
    """Genuine/impostor cosine scores of the 6000 LFW pairs."""
    pairs = read_lfw_pairs(Path(lfw_root) / "pairs.txt")
    relpaths = list(dict.fromkeys([p.path1 for p in pairs] + [p.path2 for p in pairs]))
    embeddings, _ = lfw_embeddings(embedder, relpaths, lfw_root=lfw_root, cache_dir=cache_dir)
    scores, labels, _ = pair_scores(pairs, embeddings)
    usable = [r for r in relpaths if r in embeddings]
    templates = template_impostor_scores(
        np.stack([embeddings[r] for r in usable]), np.array([Path(r).parent.name for r in usable])
    )
    return ScoreDistributions(embedder.model_version, scores[labels], scores[~labels], "lfw-pairs", templates)


def folder_distributions(
    root: str | Path,
    embedder: Embedder,
    *,
    cache_dir: str | Path | None = None,
    max_impostor_pairs: int = 2_000_000,
    seed: int = 0,
) -> ScoreDistributions:
    """Genuine (all same-person pairs) and impostor (all, or a random sample of, cross-person
    pairs) scores for a labelled folder ``root/<person>/*.jpg``."""
    root = Path(root)
    people = list_identity_folder(root)
    relpaths = [f for files in people.values() for f in files]
    cache_name = f"detections-{root.name}"
    detections = detect_images(root, relpaths, cache_dir=cache_dir, cache_name=cache_name)
    emb = embed_images(root, relpaths, embedder, detections=detections, cache_dir=cache_dir)
    vecs = np.stack([emb[p] for p in relpaths]).astype(np.float32)
    owner = np.array([i for i, files in enumerate(people.values()) for _ in files])
    genuine: list[np.ndarray] = []
    by_person: dict[int, list[int]] = defaultdict(list)
    for i, o in enumerate(owner):
        by_person[int(o)].append(i)
    for idx in by_person.values():
        if len(idx) > 1:
            sims = vecs[idx] @ vecs[idx].T
            genuine.append(sims[np.triu_indices(len(idx), k=1)])
    n = len(relpaths)
    total_pairs = n * (n - 1) // 2
    rng = np.random.default_rng(seed)
    if total_pairs <= max_impostor_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        i = rng.integers(0, n, size=max_impostor_pairs)
        j = rng.integers(0, n, size=max_impostor_pairs)
    mask = owner[i] != owner[j]
    i, j = i[mask], j[mask]
    impostor = np.concatenate(
        [np.einsum("ij,ij->i", vecs[i[s : s + 100_000]], vecs[j[s : s + 100_000]]) for s in range(0, i.size, 100_000)]
        or [np.zeros(0, np.float32)]
    )
    gen = np.concatenate(genuine) if genuine else np.zeros(0)
    return ScoreDistributions(embedder.model_version, gen, impostor, str(root), template_impostor_scores(vecs, owner))


def template_impostor_scores(vectors: np.ndarray, owner: np.ndarray, *, photos: int = 3) -> np.ndarray:
    """Every photo's cosine with the mean template (of the first ``photos`` photos) of every other
    person who has that many: the scores a stranger gets against enrolled people when people are
    scored by their mean template (``recognition.gallery.PersonScore``). Empty when nobody has that
    many photos."""
    units = np.asarray(vectors, dtype=np.float64)
    units = units / np.linalg.norm(units, axis=1, keepdims=True)
    names, first = np.unique(owner, return_index=True)
    means, holders = [], []
    for name in names[np.argsort(first)]:
        mine = np.flatnonzero(owner == name)
        if mine.size >= photos:
            means.append(mean_template(units[mine[:photos]]))
            holders.append(name)
    if not means:
        return np.zeros(0)
    scores = units @ np.stack(means).T
    return scores[owner[:, None] != np.asarray(holders)[None, :]].astype(np.float32)
