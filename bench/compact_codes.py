"""Accuracy cost of compact embedding codes on LFW, and the size of a halfvec HNSW index in pgvector.

    python bench/compact_codes.py [--models sface-2021dec-int8bq facenet-casia-20180408] [--db]

Uses the LFW embeddings cached by ``recognition.embedding_cache`` (``var/cache/embeddings-<model>.npz``;
run ``manage.py evaluate_lfw`` first). For every codec: bytes per embedding, LFW 10-fold accuracy
(threshold chosen on the other 9 folds) and TAR at FAR 1e-3 over the 6000 pairs, with the first
image of each pair stored compactly and the second a float32 probe ("asym", how a gallery is
searched) and with both stored compactly ("sym"), plus the score error against float32.
PQ codebooks are trained with k-means on the LFW DevTrain images (pairsDevTrain.txt) and saved
under var/models.

``--db`` starts a scratch embedded PostgreSQL + pgvector, loads all cached embeddings of each model
into a table shaped like the gallery (untyped ``vector`` column, partial HNSW per model) and
compares an HNSW index on ``embedding::vector(d)`` with one on ``embedding::halfvec(d)``: index
size, build time, recall@10 against exact float32 search.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faceengine.compact import (  # noqa: E402
    Int8PerDimension,
    ProductQuantizer,
    cosine_rows,
    halfvec_decode,
    halfvec_encode,
    int8_decode,
    int8_encode,
    pq_codebook_path,
)
from recognition.datasets import read_lfw_pairs  # noqa: E402
from recognition.metrics import kfold_accuracy, tar_at_far  # noqa: E402
from tests.faces import LFW_ROOT  # noqa: E402  (ACCESSCTL_LFW, ACCESSCTL_RESEARCH_DATA or var/datasets)

LFW = LFW_ROOT
CACHE = ROOT / "var" / "cache"
MODELS = ROOT / "var" / "models"
FAR = 1e-3
PQ_M = {128: (16, 32, 64), 512: (32, 64, 128)}


def load_cache(model_version: str) -> dict[str, np.ndarray]:
    path = CACHE / f"embeddings-{model_version}.npz"
    data = np.load(path, allow_pickle=False)
    return dict(zip(data["paths"].tolist(), data["embeddings"].astype(np.float32), strict=True))


def pair_paths(pairs_file: Path) -> set[str]:
    return {p for pair in read_lfw_pairs(pairs_file) for p in (pair.path1, pair.path2)}


Reconstruct = Callable[[np.ndarray], np.ndarray]


def codecs_for(model_version: str, train: np.ndarray, *, quick: bool, save: bool) -> list[tuple[str, int, Reconstruct]]:
    d = train.shape[1]
    per_dim = Int8PerDimension.fit(train)
    out: list[tuple[str, int, Reconstruct]] = [
        ("float32", 4 * d, lambda x: x),
        ("halfvec (float16)", 2 * d, lambda x: halfvec_decode(halfvec_encode(x))),
        ("int8, scale per vector", d + 4, lambda x: int8_decode(int8_encode(x))),
        ("int8, scale per dimension", d, lambda x: per_dim.decode(per_dim.encode(x))),
    ]
    for m in PQ_M.get(d, (d // 8, d // 4)):
        for rotate in (False, True):
            path = pq_codebook_path(model_version, m, MODELS, rotated=rotate)
            if path.is_file() and not quick and save:
                pq = ProductQuantizer.load(path, model_version=model_version)
            else:
                t0 = time.perf_counter()
                pq = ProductQuantizer.fit(
                    train,
                    m=m,
                    n_iter=10 if quick else 25,
                    model_version=model_version,
                    trained_on="lfw-devtrain",
                    rotate=rotate,
                )
                print(f"  trained PQ m={m}{' +rot' if rotate else ''} on {train.shape[0]} vectors "
                      f"in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
                if save and not quick:
                    pq.save(path)
            label = f"PQ m={m} x 256{' +rotation' if rotate else ''} (dsub {d // m})"
            out.append((label, m, lambda x, pq=pq: pq.decode(pq.encode(x))))
    return out


def evaluate(model_version: str, *, quick: bool, train_set: str = "devtrain") -> None:
    emb = load_cache(model_version)
    pairs = read_lfw_pairs(LFW / "pairs.txt")
    missing = {p for pair in pairs for p in (pair.path1, pair.path2)} - emb.keys()
    if missing:
        print(f"{model_version}: {len(missing)} pair images not embedded yet; skipped")
        return
    if train_set == "devtrain":
        train_paths = sorted(pair_paths(LFW / "pairsDevTrain.txt") & emb.keys())
    else:  # identities that appear in no test pair (needs the whole of LFW embedded)
        test_people = {p.split("/")[0] for pair in pairs for p in (pair.path1, pair.path2)}
        train_paths = sorted(p for p in emb if p.split("/")[0] not in test_people)
    if len(train_paths) < 1000:
        print(f"{model_version}: only {len(train_paths)} {train_set} training images cached; skipped")
        return
    train = np.stack([emb[p] for p in train_paths])
    a = np.stack([emb[p.path1] for p in pairs])
    b = np.stack([emb[p.path2] for p in pairs])
    labels = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    d = a.shape[1]
    print(f"\n{model_version}: d={d}, {len(pairs)} LFW pairs, PQ/int8 trained on {len(train_paths)} {train_set} images")
    base = cosine_rows(a, b)
    base_acc = kfold_accuracy(base, labels, folds)[0].mean()
    base_tar = tar_at_far(base, labels, FAR)[0]
    header = (
        f"{'codec':<34}{'bytes':>6}{'ratio':>7} | {'asym acc':>9}{'TAR@1e-3':>9}{'|dS| mean/max':>16} | "
        f"{'sym acc':>8}{'TAR@1e-3':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, nbytes, rec in codecs_for(model_version, train, quick=quick, save=train_set == "devtrain"):
        ra, rb = rec(a), rec(b)
        row = f"{name:<34}{nbytes:>6}{4 * d / nbytes:>6.0f}x |"
        for mode, scores in (("asym", cosine_rows(ra, b)), ("sym", cosine_rows(ra, rb))):
            acc = kfold_accuracy(scores, labels, folds)[0]
            tar = tar_at_far(scores, labels, FAR)[0]
            if mode == "asym":
                err = np.abs(scores - base)
                row += f" {acc.mean() * 100:>7.2f}% {tar * 100:>7.2f}% {err.mean():>7.4f}/{err.max():.4f} |"
            else:
                row += f" {acc.mean() * 100:>6.2f}% {tar * 100:>7.2f}%"
        print(row, flush=True)
    print(f"(float32 reference: accuracy {base_acc * 100:.2f}%, TAR@FAR=1e-3 {base_tar * 100:.2f}%)")


# --------------------------------------------------------------------------- pgvector halfvec index


def db_bench(models: list[str], *, queries: int, seed: int = 0) -> None:
    import psycopg

    from accessctl.project import embedded

    tmp = Path(tempfile.mkdtemp(prefix="accessctl-halfvec-bench-"))
    pg = embedded.start_postgres(tmp / "pg")
    pg.ensure_database("bench")
    with psycopg.connect(host=pg.socket_dir, user="postgres", dbname="bench", autocommit=True) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        print(f"\npgvector {version}: HNSW (m=16, ef_construction=64, cosine) on the gallery shape, LFW vectors")
        conn.execute(
            "CREATE TABLE gallery (id bigserial PRIMARY KEY, model_version text NOT NULL, embedding vector NOT NULL)"
        )
        header = (
            f"{'model':<26}{'rows':>7}{'index':>9}{'size':>11}{'build s':>8} | "
            f"{'ef=40: R@1':>10}{'R@10':>8}{'ms':>6} | {'ef=100: R@1':>11}{'R@10':>8}{'ms':>6}"
        )
        print(header)
        print("-" * len(header))
        rng = np.random.default_rng(seed)
        for mv in models:
            emb = load_cache(mv)
            paths = sorted(emb)
            vecs = np.stack([emb[p] for p in paths]).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            d = vecs.shape[1]
            q_idx = rng.choice(len(paths), size=min(queries, len(paths) // 5), replace=False)
            mask = np.ones(len(paths), bool)
            mask[q_idx] = False
            gallery, probes = vecs[mask], vecs[q_idx]
            with conn.cursor().copy("COPY gallery (model_version, embedding) FROM STDIN") as copy:
                for v in gallery:
                    copy.write_row((mv, "[" + ",".join(f"{x:.8g}" for x in v) + "]"))
            ids = np.array(
                [r[0] for r in conn.execute("SELECT id FROM gallery WHERE model_version = %s ORDER BY id", [mv])]
            )
            truth = np.argsort(-(probes @ gallery.T), axis=1)[:, :10]
            truth_ids = ids[truth]
            conn.execute("VACUUM ANALYZE gallery")
            for kind, ops in (("vector", "vector_cosine_ops"), ("halfvec", "halfvec_cosine_ops")):
                name = f"hnsw_{kind}_{d}_{mv.replace('-', '_')}"[:60]
                t0 = time.perf_counter()
                conn.execute(
                    f"CREATE INDEX {name} ON gallery USING hnsw ((embedding::{kind}({d})) {ops}) "
                    f"WITH (m = 16, ef_construction = 64) WHERE model_version = '{mv}'"
                )
                build = time.perf_counter() - t0
                size = conn.execute("SELECT pg_relation_size(%s)", [name]).fetchone()[0]
                sql = (
                    f"SELECT id FROM gallery WHERE model_version = %s "
                    f"ORDER BY embedding::{kind}({d}) <=> %s::{kind}({d}) LIMIT 10"
                )
                literals = ["[" + ",".join(f"{x:.8g}" for x in q) + "]" for q in probes]
                conn.execute("SET enable_seqscan = off")
                for literal in literals[:50]:  # warm the buffer cache
                    conn.execute(sql, [mv, literal]).fetchall()
                cells = []
                for ef in (40, 100):
                    conn.execute(f"SET hnsw.ef_search = {ef}")
                    hits10 = hits1 = 0
                    t0 = time.perf_counter()
                    for qi, literal in enumerate(literals):
                        rows = [r[0] for r in conn.execute(sql, [mv, literal]).fetchall()]
                        hits10 += len(set(rows) & set(truth_ids[qi].tolist()))
                        hits1 += bool(rows) and rows[0] == truth_ids[qi, 0]
                    ms = (time.perf_counter() - t0) / len(literals) * 1000
                    cells.append((hits1 / len(literals), hits10 / (10 * len(literals)), ms))
                plan = conn.execute(
                    f"EXPLAIN SELECT id FROM gallery WHERE model_version = %s "
                    f"ORDER BY embedding::{kind}({d}) <=> %s::{kind}({d}) LIMIT 10",
                    [mv, "[" + ",".join("0" for _ in range(d - 1)) + ",1]"],
                ).fetchall()
                assert any(name in r[0] for r in plan), plan
                (r1a, r10a, msa), (r1b, r10b, msb) = cells
                print(
                    f"{mv:<26}{len(gallery):>7}{kind:>9}{size / 2**20:>8.2f} MiB{build:>8.1f} | "
                    f"{r1a * 100:>9.2f}%{r10a * 100:>7.2f}%{msa:>6.2f} | "
                    f"{r1b * 100:>10.2f}%{r10b * 100:>7.2f}%{msb:>6.2f}",
                    flush=True,
                )
                conn.execute(f"DROP INDEX {name}")
        heap = conn.execute("SELECT pg_table_size('gallery')").fetchone()[0]
        print(f"(table with TOAST, float32, all models: {heap / 2**20:.2f} MiB; {len(probes)} held-out queries)")


def main() -> None:
    global CACHE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="model versions (default: every cached embeddings file)")
    parser.add_argument("--quick", action="store_true", help="fewer k-means iterations, do not save codebooks")
    parser.add_argument("--db", action="store_true", help="also compare vector vs halfvec HNSW indexes in pgvector")
    parser.add_argument("--no-lfw", action="store_true", help="skip the LFW accuracy table")
    parser.add_argument(
        "--train",
        choices=["devtrain", "disjoint"],
        default="devtrain",
        help="PQ/int8 training images: LFW DevTrain (default; codebooks saved) or identities in no test pair",
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE, help="where the embeddings caches are")
    parser.add_argument("--queries", type=int, default=500, help="held-out queries for the index recall")
    args = parser.parse_args()
    CACHE = args.cache_dir
    models = args.models or sorted(p.stem.removeprefix("embeddings-") for p in CACHE.glob("embeddings-*.npz"))
    if not models:
        sys.exit(f"no cached embeddings in {CACHE}; run manage.py evaluate_lfw first")
    if not args.no_lfw:
        for mv in models:
            evaluate(mv, quick=args.quick, train_set=args.train)
    if args.db:
        db_bench(models, queries=args.queries)


if __name__ == "__main__":
    main()
