"""Compact codes for face embeddings: float16 (halfvec), 8-bit scalar quantisation, product quantisation.

Embeddings are L2-normalised float32 vectors compared by cosine similarity. Stored compactly:

* ``halfvec``: IEEE float16 per dimension, 2 bytes/dim. pgvector stores and indexes this type
  natively (``embedding::halfvec(d)``), so an HNSW index on it is half the size.
* ``int8`` (per vector): ``round(x / s)`` with ``s = max|x| / 127``, 1 byte/dim + a float32 scale.
  The same encoding as the edge wire protocol's ``int8`` (``faceengine.protocol``).
* ``int8`` (per dimension): one trained scale per dimension (a high percentile of ``|x_j|``,
  clipped), 1 byte/dim and nothing per vector.
* PQ (product quantisation, Jegou et al. 2011): the vector is cut into ``m`` sub-vectors, each
  replaced by the index of its nearest of 256 centroids (k-means per sub-space): ``m`` bytes per
  vector (<= 128). Similarity to a float query is asymmetric (ADC): a table of query/centroid dot
  products per sub-space, then ``m`` look-ups per stored vector; the norm of the reconstruction is
  known from the codes too, so the result is a proper cosine. Optionally a random orthogonal
  rotation is applied first (spreads variance evenly over sub-spaces; helps at 16 bytes).

Everything here is numpy only (no torch, no Django). Codebooks are saved as ``.npz`` under
``var/models`` (``pq-<model_version>-m<m>.npz``), tagged with the model version they were trained
for: a codebook is meaningless for vectors of another model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INT8_MAX = 127
PQ_CENTROIDS = 256  # one byte per sub-vector
PQ_MAX_BYTES = 128


def _as_2d(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    return arr[None] if arr.ndim == 1 else arr


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, d) arrays (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


# --------------------------------------------------------------------------- float16


def halfvec_encode(x: np.ndarray) -> np.ndarray:
    """float16 codes (N, d); 2 bytes per dimension."""
    arr = _as_2d(x)
    if not np.all(np.isfinite(arr)) or np.abs(arr).max(initial=0.0) > np.finfo(np.float16).max:
        raise ValueError("values do not fit float16")
    return arr.astype(np.float16)


def halfvec_decode(codes: np.ndarray) -> np.ndarray:
    return np.asarray(codes, dtype=np.float16).astype(np.float32)


# --------------------------------------------------------------------------- 8-bit scalar


@dataclass(frozen=True)
class Int8Codes:
    codes: np.ndarray  # int8 (N, d)
    scales: np.ndarray  # float32: (N,) one per vector, or (d,) one per dimension (shared, not stored per vector)
    per_vector: bool = True

    @property
    def nbytes_per_vector(self) -> int:
        return self.codes.shape[1] + (4 if self.per_vector else 0)


def int8_encode(x: np.ndarray) -> Int8Codes:
    """Per-vector symmetric 8-bit quantisation: ``x ~= code * scale``, ``scale = max|x| / 127``.

    Error bound: ``|x_j - code_j * scale| <= scale / 2`` for every component.
    """
    arr = _as_2d(x)
    peak = np.abs(arr).max(axis=1)
    scales = np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32)
    codes = np.clip(np.rint(arr / scales[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return Int8Codes(codes, scales)


def int8_decode(packed: Int8Codes) -> np.ndarray:
    scales = packed.scales[:, None] if packed.per_vector else packed.scales[None, :]
    return packed.codes.astype(np.float32) * scales


@dataclass
class Int8PerDimension:
    """8-bit quantisation with one trained scale per dimension: exactly ``d`` bytes per vector.

    ``scales[j] = quantile(|x_j|, q) / 127`` on training vectors; larger values are clipped.
    """

    scales: np.ndarray  # float32 (d,)

    @classmethod
    def fit(cls, train: np.ndarray, *, quantile: float = 0.999) -> Int8PerDimension:
        arr = _as_2d(train)
        peak = np.quantile(np.abs(arr), quantile, axis=0)
        return cls(np.where(peak > 0, peak / INT8_MAX, 1.0).astype(np.float32))

    def encode(self, x: np.ndarray) -> Int8Codes:
        arr = _as_2d(x)
        codes = np.clip(np.rint(arr / self.scales[None, :]), -INT8_MAX, INT8_MAX).astype(np.int8)
        return Int8Codes(codes, self.scales, per_vector=False)

    def decode(self, packed: Int8Codes) -> np.ndarray:
        return packed.codes.astype(np.float32) * self.scales[None, :]


# --------------------------------------------------------------------------- k-means


def kmeans(
    x: np.ndarray, k: int, *, n_iter: int = 25, seed: int = 0, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding; returns (centroids (k, d), assignment (N,)).

    Empty clusters are re-seeded with the points farthest from their centroid.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    rng = np.random.default_rng(seed)
    x_sq = np.einsum("ij,ij->i", x, x)
    centroids = np.empty((k, x.shape[1]))
    centroids[0] = x[rng.integers(n)]
    dist = np.maximum(x_sq - 2 * x @ centroids[0] + centroids[0] @ centroids[0], 0)
    for i in range(1, k):
        total = dist.sum()
        idx = int(rng.choice(n, p=dist / total)) if total > 0 else int(rng.integers(n))
        centroids[i] = x[idx]
        dist = np.minimum(dist, np.maximum(x_sq - 2 * x @ centroids[i] + centroids[i] @ centroids[i], 0))
    assign = np.zeros(n, dtype=np.int64)
    previous = np.inf
    for _ in range(n_iter):
        d2 = x_sq[:, None] - 2 * x @ centroids.T + np.einsum("ij,ij->i", centroids, centroids)[None, :]
        assign = np.argmin(d2, axis=1)
        inertia = float(np.maximum(d2[np.arange(n), assign], 0).sum())
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centroids)
        np.add.at(sums, assign, x)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = np.flatnonzero(~nonempty)
        if empty.size:
            far = np.argsort(-d2[np.arange(n), assign])[: empty.size]
            centroids[empty] = x[far]
        if previous - inertia <= tol * max(previous, 1e-12) and not empty.size:
            break
        previous = inertia
    return centroids.astype(np.float32), assign


# --------------------------------------------------------------------------- product quantisation


@dataclass
class ProductQuantizer:
    """``m`` sub-spaces x 256 centroids: ``m`` bytes per vector."""

    codebooks: np.ndarray  # float32 (m, 256, dsub)
    model_version: str = ""
    trained_on: str = ""
    rotation: np.ndarray | None = None  # float32 (d, d) orthogonal, applied before splitting

    @property
    def m(self) -> int:
        return int(self.codebooks.shape[0])

    @property
    def dsub(self) -> int:
        return int(self.codebooks.shape[2])

    @property
    def dim(self) -> int:
        return self.m * self.dsub

    @property
    def nbytes_per_vector(self) -> int:
        return self.m

    @classmethod
    def fit(
        cls,
        train: np.ndarray,
        *,
        m: int,
        n_iter: int = 25,
        seed: int = 0,
        model_version: str = "",
        trained_on: str = "",
        rotate: bool = False,
    ) -> ProductQuantizer:
        """k-means per sub-space. ``rotate``: first apply a random orthogonal rotation, which spreads
        the variance evenly over the sub-spaces (helps most with few, long sub-vectors)."""
        arr = _as_2d(train)
        d = arr.shape[1]
        if m > PQ_MAX_BYTES or m < 1 or d % m:
            raise ValueError(f"m must divide the dimension {d} and be 1..{PQ_MAX_BYTES}, got {m}")
        dsub = d // m
        rotation = None
        if rotate:
            q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
            rotation = (q * np.sign(np.diag(r))[None, :]).astype(np.float32)
            arr = arr @ rotation
        books = np.empty((m, PQ_CENTROIDS, dsub), dtype=np.float32)
        for j in range(m):
            books[j], _ = kmeans(arr[:, j * dsub : (j + 1) * dsub], PQ_CENTROIDS, n_iter=n_iter, seed=seed + j)
        logger.info("trained PQ m=%d dsub=%d on %d vectors (%s)", m, dsub, arr.shape[0], model_version or "-")
        return cls(books, model_version=model_version, trained_on=trained_on, rotation=rotation)

    def _split(self, x: np.ndarray) -> np.ndarray:
        arr = _as_2d(x)
        if arr.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim}-d vectors, got {arr.shape[1]}")
        if self.rotation is not None:
            arr = arr @ self.rotation
        return arr.reshape(arr.shape[0], self.m, self.dsub)

    def encode(self, x: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
        """uint8 codes (N, m): nearest centroid per sub-vector."""
        sub = self._split(x)
        out = np.empty((sub.shape[0], self.m), dtype=np.uint8)
        c_sq = np.einsum("mkd,mkd->mk", self.codebooks, self.codebooks)
        for start in range(0, sub.shape[0], chunk):
            s = sub[start : start + chunk]
            # |s - c|^2 = |s|^2 - 2 s.c + |c|^2; |s|^2 is constant per row
            d2 = c_sq[None] - 2 * np.einsum("nmd,mkd->nmk", s, self.codebooks)
            out[start : start + chunk] = np.argmin(d2, axis=2).astype(np.uint8)
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64)
        parts = self.codebooks[np.arange(self.m)[None, :], codes]  # (N, m, dsub)
        flat = parts.reshape(codes.shape[0], self.dim)
        return flat if self.rotation is None else flat @ self.rotation.T

    def code_norms(self, codes: np.ndarray) -> np.ndarray:
        """L2 norm of each code's reconstruction, from the codes alone (sub-spaces are orthogonal,
        and so is the rotation)."""
        c_sq = np.einsum("mkd,mkd->mk", self.codebooks, self.codebooks)
        codes = np.asarray(codes, dtype=np.int64)
        return np.sqrt(c_sq[np.arange(self.m)[None, :], codes].sum(axis=1))

    def distance_table(self, query: np.ndarray) -> np.ndarray:
        """(m, 256) dot products of the query's sub-vectors with every centroid."""
        q = self._split(query)[0]
        return np.einsum("md,mkd->mk", q, self.codebooks)

    def adc_similarity(self, query: np.ndarray, codes: np.ndarray, *, cosine: bool = True) -> np.ndarray:
        """Asymmetric similarity of one float query to N stored codes: ``m`` table look-ups each."""
        table = self.distance_table(query)
        codes = np.asarray(codes, dtype=np.int64)
        dots = table[np.arange(self.m)[None, :], codes].sum(axis=1)
        if not cosine:
            return dots
        q_norm = float(np.linalg.norm(np.asarray(query, dtype=np.float64)))
        return dots / np.maximum(q_norm * self.code_norms(codes), 1e-12)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"model_version": self.model_version, "trained_on": self.trained_on, "m": self.m, "dsub": self.dsub}
        rotation = self.rotation if self.rotation is not None else np.zeros((0, 0), np.float32)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, codebooks=self.codebooks, rotation=rotation, meta=np.array(json.dumps(meta)))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, model_version: str | None = None) -> ProductQuantizer:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            rotation = data["rotation"].astype(np.float32) if "rotation" in data and data["rotation"].size else None
            pq = cls(
                data["codebooks"].astype(np.float32),
                meta.get("model_version", ""),
                meta.get("trained_on", ""),
                rotation,
            )
        if model_version is not None and pq.model_version != model_version:
            raise ValueError(f"{path} was trained for {pq.model_version!r}, not {model_version!r}")
        return pq


def pq_codebook_path(
    model_version: str, m: int, models_dir: str | Path | None = None, *, rotated: bool = False
) -> Path:
    """Where the codebook for ``model_version`` with ``m`` sub-spaces is kept (``var/models``)."""
    if models_dir is None:
        models_dir = Path(__file__).resolve().parent.parent / "var" / "models"
    return Path(models_dir) / f"pq-{model_version}-m{m}{'-rot' if rotated else ''}.npz"
