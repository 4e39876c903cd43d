"""Template strategies, fusion rules and fused thresholds compared offline on cached door probes.

``manage.py evaluate_door --cache-dir DIR`` keeps every probe photo's embedding and quality
(``recognition.probe_cache``). This reads that cache and compares, without Django, a database or
any embedding work (seconds):

* per-person templates: ``best`` (max over the person's photos, what the gallery does today),
  ``mean`` (normalised mean), ``both`` (max of the two), ``qmean`` (quality-weighted mean),
  ``avgscore`` (mean of the per-photo similarities);
* the fusion rules of ``recognition.track_fusion`` for K = 3;
* the fused-threshold offset of ``recognition.fused_calibration`` per rule, and the figures at the
  threshold plus that offset.

Protocol (a simulation, not the real enrolment): every identity of DATA whose photos ``[3:]`` are
all in the cache takes part; photos ``[3:6]`` are its gallery (embedded as probes are, no
enrolment gates), photos ``[6:]`` its probes; a split holds out ``--stranger-share`` of the
identities as strangers (all their photos ``[3:]`` are probes, K-windows overlapping); the splits of
``--seeds`` are counted together (attempts are not independent: the Wilson intervals understate
the doubt). ``--exclude`` drops identities (e.g. a suspected duplicate identity). The decision is the
matcher's: best person at or above the threshold, and no second person at or above it within
``--margin``.

    python bench/door_strategies.py --cache var/cache/door-probes-sface-2021dec-int8bq-min40.npz \\
        --data DIR  (celeba-dev layout: <identity>/*.jpg)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faceengine.quality import quality_rank
from recognition.fused_calibration import fused_offset
from recognition.metrics import thresholds_for_gallery_sizes, wilson_interval

STRATEGIES = ("best", "mean", "both", "qmean", "avgscore")
RULES = ("quality_embedding", "mean_embedding", "mean_score", "quality_score", "max_score")
Probe = tuple[np.ndarray, dict[str, float]]


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def weight(quality: dict[str, float]) -> float:
    return max(0.05, quality_rank(quality))


def load(cache: Path, data: Path, exclude: set[str]) -> dict[str, list[Probe]]:
    with np.load(cache, allow_pickle=False) as npz:
        keys, vectors = npz["keys"].tolist(), npz["vectors"]
        qualities, usable = json.loads(str(npz["qualities"])), npz["usable"]
    found = {k: ((vectors[i], qualities[i]) if usable[i] else None) for i, k in enumerate(keys)}
    out: dict[str, list[Probe]] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir() and p.name not in exclude):
        digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jpg"))[3:]]
        if all(d in found for d in digests):
            out[folder.name] = [found[d] for d in digests if found[d] is not None]
    return out


class Gallery:
    """Templates of ``people``, packed so that one product scores every probe against everyone."""

    def __init__(self, photos: list[np.ndarray], weights: list[np.ndarray], strategy: str) -> None:
        rows = []
        for g, w in zip(photos, weights, strict=True):
            mean = unit(g.mean(0))[None]
            rows.append(
                {
                    "best": g,
                    "avgscore": g,
                    "mean": mean,
                    "both": np.vstack([g, mean]),
                    "qmean": unit((g * w[:, None]).sum(0))[None],
                }[strategy]
            )
        sizes = np.array([len(r) for r in rows])
        self.matrix, self.starts, self.sizes = np.vstack(rows), np.r_[0, np.cumsum(sizes)[:-1]], sizes
        self.average = strategy == "avgscore"

    def scores(self, probes: np.ndarray) -> np.ndarray:
        m = probes @ self.matrix.T
        if self.average:
            return np.add.reduceat(m, self.starts, axis=1) / self.sizes
        return np.maximum.reduceat(m, self.starts, axis=1)


def fuse(vectors: np.ndarray, weights: np.ndarray, scores: np.ndarray, gallery: Gallery, rule: str) -> np.ndarray:
    """Fused person scores of one window (``scores``: each probe's person scores)."""
    if rule.endswith("embedding"):
        w = weights if rule == "quality_embedding" else np.ones(len(weights))
        return gallery.scores(unit((vectors * w[:, None]).sum(0))[None])[0]
    if rule == "max_score":
        return scores.max(0)
    w = weights if rule == "quality_score" else np.ones(len(weights))
    return (scores * w[:, None]).sum(0) / w.sum()


def run_split(
    probes: dict[str, list[Probe]], names: list[str], *, seed: int, share: float, k: int, rule: str, strategy: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attempt rows (best, second, best index, expected index or -1) and impostor person scores of
    single probes and of fused windows (for the offset)."""
    shuffled = list(names)
    random.Random(seed).shuffle(shuffled)
    cut = round(len(shuffled) * share)
    strangers, enrolled = sorted(shuffled[:cut]), sorted(shuffled[cut:])
    enrolled = [n for n in enrolled if len(probes[n]) > 3]
    gallery = Gallery(
        [unit(np.stack([v for v, _ in probes[n][:3]])) for n in enrolled],
        [np.array([weight(q) for _, q in probes[n][:3]]) for n in enrolled],
        strategy,
    )
    index = {n: i for i, n in enumerate(enrolled)}
    rows, single, fused = [], [], []
    for name in enrolled + strangers:
        use = probes[name][3:] if name in index else probes[name]
        if len(use) < k:
            continue
        vectors = unit(np.stack([v for v, _ in use]))
        weights = np.array([weight(q) for _, q in use])
        per_probe = gallery.scores(vectors)
        keep = np.arange(len(enrolled)) != index.get(name, -1)
        single.append(per_probe[:, keep].ravel())
        step = k if name in index else 1
        for start in range(len(use) - k + 1):
            window = slice(start, start + k)
            s = per_probe[start] if k == 1 else fuse(vectors[window], weights[window], per_probe[window], gallery, rule)
            fused.append(s[keep])
            if start % step == 0:
                top = np.argsort(-s)[:2]
                rows.append((s[top[0]], s[top[1]], top[0], index.get(name, -1)))
    return np.array(rows), np.concatenate(single), np.concatenate(fused)


def decide(rows: np.ndarray, threshold: float, margin: float) -> dict[str, float | int]:
    s1, s2, best, expected = rows.T
    matched = (s1 >= threshold) & ~((s2 >= threshold) & (s1 - s2 < margin))
    enrolled = expected >= 0
    n_enrolled, n_strangers = int(enrolled.sum()), int((~enrolled).sum())
    return {
        "rejected": int((~matched & enrolled).sum()),
        "strangers": int((matched & ~enrolled).sum()),
        "wrong": int((matched & enrolled & (best != expected)).sum()),
        "n_enrolled": n_enrolled,
        "n_strangers": n_strangers,
    }


def within(d: dict[str, float | int], target: float) -> bool:
    return int(d["strangers"]) <= target * int(d["n_strangers"])


def line(label: str, threshold: float, d: dict[str, float | int]) -> str:
    ne, ns = int(d["n_enrolled"]), int(d["n_strangers"])
    rej, strg, wrong = int(d["rejected"]), int(d["strangers"]), int(d["wrong"])
    lo, hi = wilson_interval(strg, ns)
    return (
        f"{label:34s} t={threshold:.4f}  rejected {rej / ne:6.2%} ({rej}/{ne})  strangers {strg / ns:6.2%} "
        f"[{lo:.2%}, {hi:.2%}] ({strg}/{ns})  wrong {wrong / ne:.3%} ({wrong})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="an evaluate_door probe cache (.npz)")
    parser.add_argument("--data", type=Path, required=True, help="the <identity>/*.jpg folder it was made from")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--stranger-share", type=float, default=0.25)
    parser.add_argument("--threshold", type=float, default=0.476, help="the one-probe threshold (default 0.476)")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--target", type=float, default=0.005, help="strangers accepted to match (default 0.5 %%)")
    parser.add_argument("--exclude", default="", help="identities to leave out, comma-separated")
    args = parser.parse_args()
    probes = load(args.cache, args.data, {n for n in args.exclude.split(",") if n})
    names = sorted(probes)
    print(f"{len(names)} identities, {args.seeds} splits, {args.stranger_share:.0%} strangers, margin {args.margin}")
    grid = np.arange(0.35, 0.85, 0.0025)
    for k, rules in ((1, ("-",)), (3, RULES)):
        for rule in rules:
            for strategy in STRATEGIES:
                runs = [
                    run_split(probes, names, seed=s, share=args.stranger_share, k=k, rule=rule, strategy=strategy)
                    for s in range(args.seeds)
                ]
                rows = np.vstack([r[0] for r in runs])
                label = f"K={k} {rule} {strategy}"
                print(line(label, args.threshold, decide(rows, args.threshold, args.margin)))
                matched = next((t for t in grid if within(decide(rows, t, args.margin), args.target)), None)
                if matched is not None:
                    print(line(f"  at <= {args.target:.1%} strangers", matched, decide(rows, matched, args.margin)))
                if k > 1 and strategy == "best":
                    offset = fused_offset(
                        np.concatenate([r[1] for r in runs]),
                        np.concatenate([r[2] for r in runs]),
                        threshold=args.threshold,
                    )
                    t = args.threshold + offset.offset
                    print(line(f"  fused offset {offset.offset:+.4f}", t, decide(rows, t, args.margin)))
    pairs = []
    for name in names:
        pairs += [(name, v) for v, _ in probes[name]]
    vectors = unit(np.stack([v for _, v in pairs]))
    labels = np.array([n for n, _ in pairs])
    upper = np.triu_indices(len(vectors), 1)
    impostor = (vectors @ vectors.T)[upper][labels[upper[0]] != labels[upper[1]]]
    by_size = thresholds_for_gallery_sizes(impostor, target_acceptance=args.target, sizes=(10, 30, 100, 300, 1000))
    print(f"thresholds by gallery size for {args.target:.1%} strangers ({impostor.size} impostor pairs): {by_size}")


if __name__ == "__main__":
    main()
