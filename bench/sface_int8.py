"""SFace float (``sface``, the shipped file as onnxruntime runs it) against its int8 edge variant
(``sface-int8``, ``manage.py model_quantize``): LFW accuracy, TAR at FAR, the door threshold, how
often the two decide a pair alike, and ms per face at batch 1 and 8 on N threads.

Accuracy is the repository's evaluation (``recognition.evaluation``: 10-fold LFW verification,
TAR@FAR over all pairs; ``--identification`` adds the open-set benchmark whose unknown-acceptance
rate of 1 % gave sface's door threshold, over all 13,233 photos). The door threshold is also measured
on the evaluated photos alone: every pair of photos of two different people (~29 M with all 6,000
pairs' photos) as impostors, the threshold that lets a stranger match a gallery of 423 (or 1,000)
people x 3 photos 1 % (0.1 %) of the time (``recognition.metrics.thresholds_for_gallery_sizes``).
Both models embed the same crops: faces are found once per photo (``--detector mtcnn``: the
evaluation's own detector and cache; ``yunet``: YuNet, the edge agent's, ~10x cheaper, cached
separately) and aligned with the ArcFace template.
``--per-fold K`` keeps the first K same and K different pairs of each fold (300: all 6,000).

Speed: each model's onnxruntime session with N intra-op threads (not spinning), batches of real
aligned LFW crops, models interleaved round by round; the minimum over the rounds is printed (the
least disturbed by other processes) beside the median, wall and CPU time. Also timed:
``sface-as-stored``, the shipped file's graph as stored (its int8 weights dequantised on every run,
as this code ran it before ``fold_weights``; the same vectors).

Run: ``.venv/bin/python bench/sface_int8.py [--per-fold 300] [--detector yunet] [--threads 2]
[--identification] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")

from tests.faces import LFW_DIR  # noqa: E402

BACKENDS = ("sface", "sface-int8")
#: people in the door's gallery (3 photos each): 423 as the identification benchmark (sface's 0.476)
GALLERY_SIZES = (423, 1000)


def cross_person_scores(vectors: np.ndarray, owners: np.ndarray, block: int = 1024) -> np.ndarray:
    """Cosine scores of every pair of images of two different people (float32)."""
    out = []
    for start in range(0, len(vectors), block):
        sims = vectors[start : start + block] @ vectors.T
        rows = np.arange(start, min(start + block, len(vectors)))
        upper = np.arange(len(vectors))[None, :] > rows[:, None]
        out.append(sims[upper & (owners[rows][:, None] != owners[None, :])].astype(np.float32))
    return np.concatenate(out)


def subset(pairs: list, per_fold: int) -> list:
    kept, seen = [], {}
    for p in pairs:
        key = (p.fold, p.same)
        if seen.get(key, 0) < per_fold:
            kept.append(p)
            seen[key] = seen.get(key, 0) + 1
    return kept


def yunet_detections(relpaths: list[str], cache_dir: Path, threads: int) -> None:
    """Fill ``cache_dir/detections-lfw.npz`` with YuNet's central face of each photo, so that the
    evaluation's functions (which detect only what the cache lacks) use YuNet's landmarks."""
    from faceengine.yunet import YunetDetector
    from recognition.embedding_cache import DetectionCache, load_rgb, select_central_face

    path = cache_dir / "detections-lfw.npz"
    cache = DetectionCache.load(path)
    detector = YunetDetector(score_threshold=0.5, num_threads=threads)
    todo = [r for r in dict.fromkeys(relpaths) if r not in cache.counts]
    for rel in todo:
        rgb = load_rgb(LFW_DIR / rel)
        h, w = rgb.shape[:2]
        faces = detector.detect(rgb)
        cache.sizes[rel], cache.counts[rel] = (w, h), len(faces)
        face = select_central_face(faces, w, h) if faces else None
        cache.boxes[rel] = face.box if face else np.zeros(4, np.float32)
        cache.scores[rel] = face.score if face else 0.0
        cache.landmarks[rel] = face.landmarks if face else np.zeros((5, 2), np.float32)
    if todo:
        cache.save(path)


def speed(embedders: dict, crops: np.ndarray, rounds: int) -> dict[str, dict[str, float]]:
    """ms per face (wall and CPU) at batch 1 and 8, interleaved; min and median over the rounds."""
    times: dict[tuple[str, int], list[tuple[float, float]]] = {(n, b): [] for n in embedders for b in (1, 8)}
    for emb in embedders.values():
        emb.embed(crops[:8])
    for r in range(rounds):
        for batch in (1, 8):
            x = crops[(r * 8) % (len(crops) - 8) :][:batch]
            for name, emb in embedders.items():
                wall, cpu = time.perf_counter(), time.process_time()
                emb.embed(x)
                times[(name, batch)].append(
                    ((time.perf_counter() - wall) * 1000 / batch, (time.process_time() - cpu) * 1000 / batch)
                )
    out: dict[str, dict[str, float]] = {}
    for (name, batch), runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        out.setdefault(name, {}).update(
            {
                f"ms_b{batch}_min": round(min(walls), 2),
                f"ms_b{batch}_median": round(statistics.median(walls), 2),
                f"cpu_ms_b{batch}_min": round(min(cpus), 2),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-fold", type=int, default=300)
    parser.add_argument("--detector", choices=["mtcnn", "yunet"], default="mtcnn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30, help="speed rounds")
    parser.add_argument("--identification", action="store_true", help="also the open-set benchmark (all LFW)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: var/cache/bench-sface-int8")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import django

    django.setup()
    from django.conf import settings

    from faceengine.pipeline import crop_for
    from faceengine.registry import get_embedder
    from recognition.datasets import list_identity_folder, read_lfw_pairs
    from recognition.embedding_cache import detect_images, embed_images, load_rgb
    from recognition.evaluation import identification_benchmark, pair_scores, verification_report
    from recognition.metrics import threshold_for_far, thresholds_for_gallery_sizes

    lfw_root = LFW_DIR.parent
    cache_dir = (args.cache_dir or Path(settings.VAR_DIR) / "cache" / "bench-sface-int8") / args.detector
    cache_dir.mkdir(parents=True, exist_ok=True)
    pairs = subset(read_lfw_pairs(lfw_root / "pairs.txt"), args.per_fold)
    relpaths = list(dict.fromkeys([p.path1 for p in pairs] + [p.path2 for p in pairs]))
    everyone = [f for files in list_identity_folder(LFW_DIR).values() for f in files]
    if args.detector == "yunet":
        yunet_detections(everyone if args.identification else relpaths, cache_dir, args.threads)
    detections = detect_images(LFW_DIR, relpaths, cache_dir=cache_dir, cache_name="detections-lfw")
    embedders = {name: get_embedder(name, num_threads=args.threads, allow_spinning=False) for name in BACKENDS}
    report: dict[str, object] = {"pairs": len(pairs), "images": len(relpaths), "detector": args.detector}
    embeddings, scores = {}, {}
    for name, emb in embedders.items():
        embeddings[name] = embed_images(LFW_DIR, relpaths, emb, detections=detections, cache_dir=cache_dir)
        s, labels, folds = pair_scores(pairs, embeddings[name])
        scores[name] = s
        rep = verification_report(s, labels, folds, backend=emb.name, model_version=emb.model_version)
        report[name] = {
            "model_version": emb.model_version,
            "lfw_accuracy": round(rep.accuracy * 100, 2),
            "lfw_accuracy_std": round(rep.accuracy_std * 100, 2),
            "tar_at_far": {k: round(v * 100, 2) for k, v in rep.tar_at_far.items()},
            "threshold_at_far": {k: round(v, 4) for k, v in rep.threshold_at_far.items()},
            "auc": round(rep.auc, 5),
        }
        print(rep.summary(), file=sys.stderr, flush=True)
    a, b = (np.stack([embeddings[n][p] for p in relpaths]) for n in BACKENDS)
    cos = np.sum(a * b, axis=1)
    labels = np.array([p.same for p in pairs], dtype=bool)
    same = {}
    for name in BACKENDS:  # each model at its own 1:1 threshold for FAR 1e-3
        same[name] = scores[name] >= threshold_for_far(scores[name][~labels], 1e-3)
    report["agreement"] = {
        "embedding_cosine_mean": round(float(cos.mean()), 5),
        "embedding_cosine_min": round(float(cos.min()), 5),
        "pair_decisions_alike": round(float(np.mean(same[BACKENDS[0]] == same[BACKENDS[1]])) * 100, 2),
    }
    owners = np.array([rel.split("/")[0] for rel in relpaths])
    for name in BACKENDS:
        imp = cross_person_scores(np.stack([embeddings[name][p] for p in relpaths]), owners)
        report[name]["door_threshold"] = {  # type: ignore[index]
            f"strangers_{acceptance:g}": {
                str(size): round(thr, 4) if thr is not None else None
                for size, thr in thresholds_for_gallery_sizes(
                    imp, target_acceptance=acceptance, sizes=GALLERY_SIZES, photos_per_person=3
                ).items()
            }
            for acceptance in (0.01, 0.001)
        }
        report[name]["door_threshold"]["impostor_pairs"] = int(imp.size)  # type: ignore[index]
    if args.identification:
        for name, emb in embedders.items():
            ident = identification_benchmark(embedder=emb, lfw_root=lfw_root, cache_dir=cache_dir)
            report[name]["identification"] = {  # type: ignore[index]
                "rank1": round(ident.rank1 * 100, 2),
                "dir_at_fpir": {k: round(v * 100, 2) for k, v in ident.dir_at_fpir.items()},
                "threshold_at_fpir": {k: round(v, 4) for k, v in ident.threshold_at_fpir.items()},
            }
            print(ident.summary(), file=sys.stderr, flush=True)
    crops = np.stack(
        [
            crop_for(load_rgb(LFW_DIR / rel), detections.face(rel) or detections.fallback_face(rel), "arcface112")
            for rel in relpaths[:64]
        ]
    )
    # the shipped file as onnxruntime ran it before the weights were folded at load (same vectors)
    stored = get_embedder("sface", num_threads=args.threads, allow_spinning=False, fold_weights=False)
    timed = {**embedders, "sface-as-stored": stored}
    report["speed"] = {"threads": args.threads, "rounds": args.rounds, **speed(timed, crops, args.rounds)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
