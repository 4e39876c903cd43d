"""LFW verification with crops aligned from YuNet's landmarks against MTCNN's (same embedder).

Both detectors run on each LFW photo (250x250, as distributed); the central face
(``recognition.embedding_cache.select_central_face``) is aligned with the ArcFace 5-point template
from that detector's landmarks and embedded; the pairs are scored with the repository's metrics
(``recognition.evaluation.verification_report``: 10-fold accuracy, TAR at FAR, AUC). A photo where
a detector finds no face gets that detector's median face (the rule of ``DetectionCache``).

``--per-fold K`` keeps the first K same and K different pairs of each of the 10 folds (50: a
1,000-pair subset; 300: the full 6,000-pair protocol).
Run: ``.venv/bin/python bench/yunet_lfw.py [--per-fold 50] [--embedder sface]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")

from tests.faces import LFW_DIR  # noqa: E402


def subset(pairs: list, per_fold: int) -> list:
    kept, seen = [], {}
    for p in pairs:
        key = (p.fold, p.same)
        if seen.get(key, 0) < per_fold:
            kept.append(p)
            seen[key] = seen.get(key, 0) + 1
    return kept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-fold", type=int, default=50)
    parser.add_argument("--embedder", default="sface")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from faceengine.detector import DetectedFace, FaceDetector
    from faceengine.pipeline import crop_for
    from faceengine.registry import get_embedder
    from faceengine.yunet import YunetDetector
    from recognition.datasets import read_lfw_pairs
    from recognition.embedding_cache import load_rgb, select_central_face
    from recognition.evaluation import verification_report

    pairs = subset(read_lfw_pairs(LFW_DIR.parent / "pairs.txt"), args.per_fold)
    relpaths = list(dict.fromkeys([p.path1 for p in pairs] + [p.path2 for p in pairs]))
    detectors = {
        "mtcnn": FaceDetector(num_threads=args.threads),
        "yunet": YunetDetector(score_threshold=0.5, num_threads=args.threads),
    }
    embedder = get_embedder(args.embedder, num_threads=args.threads)
    faces: dict[str, dict[str, DetectedFace | None]] = {k: {} for k in detectors}
    ms: dict[str, list[float]] = {k: [] for k in detectors}
    images = {}
    for rel in relpaths:
        rgb = load_rgb(LFW_DIR / rel)
        images[rel] = rgb
        h, w = rgb.shape[:2]
        for name, det in detectors.items():
            t0 = time.perf_counter()
            found = det.detect(rgb)
            ms[name].append((time.perf_counter() - t0) * 1000)
            faces[name][rel] = select_central_face(found, w, h) if found else None

    report: dict[str, object] = {"pairs": len(pairs), "images": len(relpaths), "embedder": args.embedder}
    embeddings: dict[str, dict[str, np.ndarray]] = {}
    for name in detectors:
        found = [f for f in faces[name].values() if f is not None]
        median_lm = np.median([f.landmarks for f in found], axis=0)
        median_box = np.median([f.box for f in found], axis=0)
        embeddings[name] = {}
        for rel in relpaths:
            face = faces[name][rel] or DetectedFace(box=median_box, score=0.0, landmarks=median_lm)
            embeddings[name][rel] = embedder.embed(crop_for(images[rel], face, embedder.input_kind))[0]
    # cross: the first photo of each pair aligned from MTCNN (the server's enrolment), the second
    # from YuNet (the edge agent's probe)
    variants = {
        "mtcnn": (embeddings["mtcnn"], embeddings["mtcnn"]),
        "yunet": (embeddings["yunet"], embeddings["yunet"]),
        "cross_mtcnn_enrol_yunet_probe": (embeddings["mtcnn"], embeddings["yunet"]),
    }
    for name, (first, second) in variants.items():
        a = np.stack([first[p.path1] for p in pairs])
        b = np.stack([second[p.path2] for p in pairs])
        scores = np.sum(a * b, axis=1)
        labels = np.array([p.same for p in pairs], dtype=bool)
        folds = np.array([p.fold for p in pairs])
        undetected = {d: sum(1 for f in faces[d].values() if f is None) for d in detectors}
        rep = verification_report(scores, labels, folds, backend=embedder.name, model_version=embedder.model_version)
        report[name] = {
            "accuracy": rep.accuracy,
            "accuracy_std": rep.accuracy_std,
            "tar_at_far": rep.tar_at_far,
            "auc": rep.auc,
            "genuine_mean": rep.genuine_mean,
            "impostor_mean": rep.impostor_mean,
        }
        print(name, rep.summary(), file=sys.stderr, flush=True)
    report["undetected"] = undetected
    report["detect_ms_median"] = {d: float(np.median(v)) for d, v in ms.items()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
