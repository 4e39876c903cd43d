"""Accuracy evaluation: LFW 10-fold verification, TAR@FAR, ROC, threshold calibration helpers,
and an open-set identification benchmark.

Detections and embeddings are cached per image under ``var/cache`` (npz), so reruns and other
backends only redo what is missing. Everything here is plain functions over numpy arrays; the
management commands ``evaluate_lfw`` and ``calibrate_threshold`` are thin wrappers.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from faceengine.detector import DetectedFace, detect_faces
from faceengine.embedder import Embedder
from faceengine.pipeline import crop_for
from faceengine.registry import get_embedder

logger = logging.getLogger(__name__)

# ../shared/data/lfw beside the checkout (research data, read in place), or ACCESSCTL_LFW.
DEFAULT_LFW_ROOT = Path(
    os.environ.get("ACCESSCTL_LFW") or Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw"
)
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[1] / "var" / "cache"
DEFAULT_FARS = (1e-3, 1e-4)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _progress(iterable: Sequence[Any], *, desc: str, unit: str) -> Iterable[Any]:
    from accessctl.progress import progress_bar  # a bar on a terminal, nothing otherwise

    return progress_bar(iterable, desc=desc, unit=unit, total=len(iterable))


# --------------------------------------------------------------------------- LFW layout


@dataclass(frozen=True)
class Pair:
    path1: str  # relative to the images folder: "<Name>/<Name>_0001.jpg"
    path2: str
    same: bool
    fold: int


def lfw_relpath(name: str, number: int) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_lfw_pairs(pairs_path: str | Path) -> list[Pair]:
    """Parse the standard ``pairs.txt`` (header "folds n", then per fold n same + n different)."""
    lines = Path(pairs_path).read_text().split("\n")
    header = lines[0].split()
    folds, per = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
    pairs: list[Pair] = []
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    if len(rows) != folds * per * 2:
        raise ValueError(f"{pairs_path}: expected {folds * per * 2} pairs, found {len(rows)}")
    for i, row in enumerate(rows):
        fold = i // (2 * per)
        if len(row) == 3:
            pairs.append(Pair(lfw_relpath(row[0], row[1]), lfw_relpath(row[0], row[2]), True, fold))
        elif len(row) == 4:
            pairs.append(Pair(lfw_relpath(row[0], row[1]), lfw_relpath(row[2], row[3]), False, fold))
        else:
            raise ValueError(f"{pairs_path}: bad line {row}")
    return pairs


def list_identity_folder(root: str | Path) -> dict[str, list[str]]:
    """``root/<person>/*.jpg`` -> {person: [relative paths, sorted]} (people with >= 1 image)."""
    root = Path(root)
    people: dict[str, list[str]] = {}
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(
            f"{person_dir.name}/{f.name}" for f in person_dir.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if files:
            people[person_dir.name] = files
    return people


# --------------------------------------------------------------------------- detection cache


def select_central_face(faces: Sequence[DetectedFace], width: int, height: int) -> DetectedFace:
    """Largest face near the centre (Sandberg's rule: box area - 2 x squared centre offset)."""
    cx, cy = width / 2.0, height / 2.0

    def key(f: DetectedFace) -> float:
        bx, by = (f.box[0] + f.box[2]) / 2.0, (f.box[1] + f.box[3]) / 2.0
        return f.area - 2.0 * ((bx - cx) ** 2 + (by - cy) ** 2)

    return max(faces, key=key)


@dataclass
class DetectionCache:
    """Chosen face per image (relative path): box (4,), score, landmarks (5, 2), faces found."""

    boxes: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> DetectionCache:
        cache = cls()
        if not path.is_file():
            return cache
        with np.load(path, allow_pickle=False) as data:  # read each array once (npz decompresses per access)
            paths, boxes, scores = data["paths"].tolist(), data["boxes"], data["scores"]
            landmarks, counts, sizes = data["landmarks"], data["counts"], data["sizes"]
        for i, key in enumerate(paths):
            cache.boxes[key] = boxes[i]
            cache.scores[key] = float(scores[i])
            cache.landmarks[key] = landmarks[i]
            cache.counts[key] = int(counts[i])
            cache.sizes[key] = (int(sizes[i][0]), int(sizes[i][1]))
        return cache

    def save(self, path: Path) -> None:
        keys = sorted(self.counts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
        np.savez(
            tmp,
            paths=np.array(keys),
            boxes=np.array([self.boxes[k] for k in keys], dtype=np.float32).reshape(-1, 4),
            scores=np.array([self.scores[k] for k in keys], dtype=np.float32),
            landmarks=np.array([self.landmarks[k] for k in keys], dtype=np.float32).reshape(-1, 5, 2),
            counts=np.array([self.counts[k] for k in keys], dtype=np.int32),
            sizes=np.array([self.sizes[k] for k in keys], dtype=np.int32).reshape(-1, 2),
        )
        tmp.replace(path)

    def face(self, key: str) -> DetectedFace | None:
        if self.counts.get(key, 0) == 0:
            return None
        return DetectedFace(box=self.boxes[key], score=self.scores[key], landmarks=self.landmarks[key])

    def fallback_face(self, key: str) -> DetectedFace:
        """For an image without detection: the dataset-median face, scaled to its size."""
        found = [k for k, c in self.counts.items() if c > 0]
        if not found:
            raise ValueError("no detections at all to derive a fallback face from")
        wh = np.array([self.sizes[k] for k in found], dtype=np.float64)
        rel_boxes = np.array([self.boxes[k] for k in found]) / np.tile(wh, 2)
        rel_lms = np.array([self.landmarks[k] for k in found]) / wh[:, None, :]
        w, h = self.sizes[key]
        box = np.median(rel_boxes, axis=0) * np.array([w, h, w, h])
        lms = np.median(rel_lms, axis=0) * np.array([w, h])
        return DetectedFace(box=box.astype(np.float32), score=0.0, landmarks=lms.astype(np.float32))


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def detect_images(
    root: str | Path,
    relpaths: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    cache_name: str = "detections",
    save_every: int = 1000,
) -> DetectionCache:
    """MTCNN on each image (skipping cached ones); keeps the central face per image."""
    root = Path(root)
    cache_path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"{cache_name}.npz"
    cache = DetectionCache.load(cache_path)
    todo = [p for p in dict.fromkeys(relpaths) if p not in cache.counts]
    if todo:
        logger.info("detecting faces in %d images (%d cached)", len(todo), len(cache.counts))
    for i, rel in enumerate(_progress(todo, desc="detect faces", unit="img")):
        rgb = load_rgb(root / rel)
        h, w = rgb.shape[:2]
        faces = detect_faces(rgb)
        cache.sizes[rel] = (w, h)
        cache.counts[rel] = len(faces)
        if faces:
            face = select_central_face(faces, w, h)
            cache.boxes[rel], cache.scores[rel], cache.landmarks[rel] = face.box, face.score, face.landmarks
        else:
            cache.boxes[rel] = np.zeros(4, np.float32)
            cache.scores[rel] = 0.0
            cache.landmarks[rel] = np.zeros((5, 2), np.float32)
        if (i + 1) % save_every == 0:
            cache.save(cache_path)
    if todo:
        cache.save(cache_path)
    return cache


# --------------------------------------------------------------------------- embeddings cache


def embed_images(
    root: str | Path,
    relpaths: Sequence[str],
    embedder: Embedder,
    *,
    detections: DetectionCache,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    save_every: int = 2000,
) -> dict[str, np.ndarray]:
    """Embedding per image (the central face; dataset-median fallback when none was detected),
    cached in ``<cache_dir>/embeddings-<model_version>.npz``."""
    root = Path(root)
    cache_path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"embeddings-{embedder.model_version}.npz"
    out: dict[str, np.ndarray] = {}
    if cache_path.is_file():
        data = np.load(cache_path, allow_pickle=False)
        out = dict(zip(data["paths"].tolist(), data["embeddings"], strict=True))

    def save() -> None:
        keys = sorted(out)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(f"{cache_path.stem}.tmp{os.getpid()}.npz")
        np.savez(tmp, paths=np.array(keys), embeddings=np.stack([out[k] for k in keys]))
        tmp.replace(cache_path)

    todo = [p for p in dict.fromkeys(relpaths) if p not in out]
    if todo:
        logger.info("embedding %d images with %s (%d cached)", len(todo), embedder.model_version, len(out))
    done_since_save = 0
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in _progress(batches, desc=f"embed {embedder.name}", unit="batch"):
        crops = []
        for rel in batch:
            face = detections.face(rel) or detections.fallback_face(rel)
            crops.append(crop_for(load_rgb(root / rel), face, embedder.input_kind))
        for rel, vec in zip(batch, embedder.embed(np.stack(crops)), strict=True):
            out[rel] = vec
        done_since_save += len(batch)
        if done_since_save >= save_every:
            save()
            done_since_save = 0
    if todo:
        save()
    return {p: out[p] for p in relpaths}


# --------------------------------------------------------------------------- metrics


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


# --------------------------------------------------------------------------- LFW verification


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
    lfw_root: str | Path = DEFAULT_LFW_ROOT,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], DetectionCache]:
    images = Path(lfw_root) / "images"
    detections = detect_images(images, relpaths, cache_dir=cache_dir, cache_name="detections-lfw")
    emb = embed_images(images, relpaths, embedder, detections=detections, cache_dir=cache_dir)
    return emb, detections


def evaluate_lfw(
    backend: str | None = None,
    *,
    lfw_root: str | Path = DEFAULT_LFW_ROOT,
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


# --------------------------------------------------------------------------- identification


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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        extra = ", ".join(
            f"DIR@FPIR={k}: {v * 100:.2f}% (thr {self.threshold_at_fpir[k]:.4f})" for k, v in self.dir_at_fpir.items()
        )
        return (
            f"{self.model_version}: {self.identities} identities x gallery "
            f"({self.gallery_entries} entries), {self.known_probes} known / "
            f"{self.unknown_probes} unknown probes; rank-1 {self.rank1 * 100:.2f}%; at threshold "
            f"{self.threshold:.4f}: identified {self.detection_identification_rate * 100:.2f}%, "
            f"unknown accepted {self.unknown_false_accept_rate * 100:.3f}%; {extra}"
        )


def identification_scores(
    gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Best-matching identity and its score for every probe (max over a person's entries)."""
    sims = probes @ gallery.T  # unit vectors -> cosine
    ids = np.unique(gallery_ids)
    per_id = np.full((probes.shape[0], ids.size), -np.inf)
    for j, pid in enumerate(ids):
        per_id[:, j] = sims[:, gallery_ids == pid].max(axis=1)
    best = per_id.argmax(axis=1)
    return ids[best], per_id[np.arange(probes.shape[0]), best]


def identification_benchmark(
    backend: str | None = None,
    *,
    lfw_root: str | Path = DEFAULT_LFW_ROOT,
    cache_dir: str | Path | None = None,
    embedder: Embedder | None = None,
    min_images: int = 5,
    gallery_size: int = 3,
    threshold: float | None = None,
    fpirs: Sequence[float] = (1e-2, 1e-3),
    **embedder_options: Any,
) -> IdentificationReport:
    """Open-set identification on LFW.

    People with >= ``min_images`` images are enrolled with their first ``gallery_size`` images;
    their other images are known probes. Everyone else's images are unknown probes. The
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
    k_best, k_score = identification_scores(gallery, gallery_ids, np.stack(k_vecs))
    _, u_score = identification_scores(gallery, gallery_ids, np.stack(u_vecs))
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
    )
    logger.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------- calibration data


@dataclass
class ScoreDistributions:
    model_version: str
    genuine: np.ndarray
    impostor: np.ndarray
    source: str

    def threshold_for_fmr(self, target_fmr: float) -> float:
        return threshold_for_far(self.impostor, target_fmr)

    def fnmr_at(self, threshold: float) -> float:
        return float(np.mean(self.genuine < threshold))


def lfw_pair_distributions(
    embedder: Embedder, *, lfw_root: str | Path = DEFAULT_LFW_ROOT, cache_dir: str | Path | None = None
) -> ScoreDistributions:
    """Genuine/impostor cosine scores of the 6000 LFW pairs."""
    pairs = read_lfw_pairs(Path(lfw_root) / "pairs.txt")
    relpaths = list(dict.fromkeys([p.path1 for p in pairs] + [p.path2 for p in pairs]))
    embeddings, _ = lfw_embeddings(embedder, relpaths, lfw_root=lfw_root, cache_dir=cache_dir)
    scores, labels, _ = pair_scores(pairs, embeddings)
    return ScoreDistributions(embedder.model_version, scores[labels], scores[~labels], "lfw-pairs")


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
    return ScoreDistributions(embedder.model_version, gen, impostor, str(root))
