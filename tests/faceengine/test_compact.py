"""Compact embedding codes: round trips, error bounds, PQ code size, ADC equals decode-then-dot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from faceengine.compact import (
    PQ_MAX_BYTES,
    Int8PerDimension,
    ProductQuantizer,
    cosine_rows,
    halfvec_decode,
    halfvec_encode,
    int8_decode,
    int8_encode,
    kmeans,
    pq_codebook_path,
)


def unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (like face embeddings: identities as clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(n // 8, 1), d))
    x = centres[rng.integers(0, centres.shape[0], n)] + 0.6 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_halfvec_round_trip_error_bound() -> None:
    x = unit_vectors(500, 128)
    codes = halfvec_encode(x)
    assert codes.dtype == np.float16 and codes.nbytes == 500 * 128 * 2
    back = halfvec_decode(codes)
    # float16 has an 11-bit significand: relative error <= 2^-11 for normal numbers
    assert np.all(np.abs(back - x) <= np.abs(x) * 2.0**-11 + 6e-8)
    assert np.max(np.abs(cosine_rows(back, x) - 1.0)) < 1e-6
    with pytest.raises(ValueError, match="float16"):
        halfvec_encode(np.array([1e6, 0.0]))


def test_int8_per_vector_round_trip_error_bound() -> None:
    x = unit_vectors(500, 512, seed=1)
    packed = int8_encode(x)
    assert packed.codes.dtype == np.int8 and packed.nbytes_per_vector == 512 + 4
    back = int8_decode(packed)
    assert np.all(np.abs(back - x) <= packed.scales[:, None] / 2 + 1e-7)
    assert np.all(np.abs(packed.codes).max(axis=1) == 127)  # the peak uses the full range
    assert np.mean(1.0 - cosine_rows(back, x)) < 1e-4
    assert np.array_equal(int8_decode(int8_encode(np.zeros(8))), np.zeros((1, 8)))


def test_int8_matches_the_wire_protocol_encoding() -> None:
    from faceengine.protocol import EmbeddingEncoding, decode_embedding, encode_embedding

    x = unit_vectors(1, 128, seed=2)[0]
    data, scale = encode_embedding([float(v) for v in x], EmbeddingEncoding.INT8)
    packed = int8_encode(x)
    assert scale == pytest.approx(float(packed.scales[0]), rel=1e-6)
    assert np.array_equal(np.frombuffer(data, dtype=np.int8), packed.codes[0])
    wire = np.array(decode_embedding(data, EmbeddingEncoding.INT8, 128, scale))
    assert np.allclose(wire, int8_decode(packed)[0], atol=1e-6)


def test_int8_per_dimension_uses_exactly_d_bytes() -> None:
    train, test = unit_vectors(2000, 128, seed=3), unit_vectors(300, 128, seed=4)
    quant = Int8PerDimension.fit(train)
    packed = quant.encode(test)
    assert packed.nbytes_per_vector == 128 and not packed.per_vector
    back = quant.decode(packed)
    inside = np.abs(test) <= quant.scales[None, :] * 127
    assert np.all(np.abs(back - test)[inside] <= np.broadcast_to(quant.scales / 2 + 1e-7, test.shape)[inside])
    assert np.mean(cosine_rows(back, test)) > 0.999


def test_kmeans_finds_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.normal(size=(50, 2)) for c in centres])
    found, assign = kmeans(x, 3, seed=1)
    assert np.allclose(np.sort(found, axis=0), np.sort(centres, axis=0), atol=0.1)
    assert len(set(assign[:50])) == 1 and len(set(assign)) == 3
    with pytest.raises(ValueError, match="at least"):
        kmeans(x[:2], 3)


@pytest.fixture(scope="module")
def pq_data() -> tuple[ProductQuantizer, np.ndarray]:
    train, test = unit_vectors(3000, 128, seed=5), unit_vectors(400, 128, seed=6)
    pq = ProductQuantizer.fit(train, m=32, n_iter=10, model_version="test-128", trained_on="synthetic")
    return pq, test


def test_pq_code_size_and_round_trip(pq_data: tuple[ProductQuantizer, np.ndarray]) -> None:
    pq, test = pq_data
    codes = pq.encode(test)
    assert codes.dtype == np.uint8 and codes.shape == (400, 32)
    assert pq.nbytes_per_vector == 32 <= PQ_MAX_BYTES
    back = pq.decode(codes)
    assert back.shape == test.shape
    # encoding is a nearest-centroid choice: re-encoding the reconstruction gives the same codes
    assert np.array_equal(pq.encode(back), codes)
    # the reconstruction is close in angle (synthetic data: loose bound; LFW figures in bench/)
    assert np.mean(cosine_rows(back, test)) > 0.8


def test_pq_adc_equals_decode_then_cosine(pq_data: tuple[ProductQuantizer, np.ndarray]) -> None:
    pq, test = pq_data
    codes = pq.encode(test)
    query = test[0] * 3.0  # any norm
    adc = pq.adc_similarity(query, codes)
    direct = cosine_rows(np.broadcast_to(query, test.shape), pq.decode(codes))
    assert np.allclose(adc, direct, atol=1e-5)
    assert np.allclose(pq.code_norms(codes), np.linalg.norm(pq.decode(codes), axis=1), atol=1e-5)
    assert int(np.argmax(adc)) == 0  # the query's own code ranks first


def test_pq_with_rotation_round_trips_and_persists(tmp_path: Path) -> None:
    train, test = unit_vectors(2000, 64, seed=7), unit_vectors(200, 64, seed=8)
    pq = ProductQuantizer.fit(train, m=8, n_iter=8, rotate=True, model_version="rot-64")
    assert pq.rotation is not None and np.allclose(pq.rotation @ pq.rotation.T, np.eye(64), atol=1e-5)
    codes = pq.encode(test)
    assert codes.shape == (200, 8)
    back = pq.decode(codes)
    assert np.allclose(
        pq.adc_similarity(test[3], codes), cosine_rows(np.broadcast_to(test[3], back.shape), back), atol=1e-5
    )
    assert np.allclose(pq.code_norms(codes), np.linalg.norm(back, axis=1), atol=1e-5)
    loaded = ProductQuantizer.load(pq.save(pq_codebook_path("rot-64", 8, tmp_path, rotated=True)))
    assert np.array_equal(loaded.encode(test), codes) and np.allclose(loaded.decode(codes), back)


def test_pq_limits_and_persistence(pq_data: tuple[ProductQuantizer, np.ndarray], tmp_path: Path) -> None:
    pq, test = pq_data
    with pytest.raises(ValueError, match="m must divide"):
        ProductQuantizer.fit(test, m=256)
    with pytest.raises(ValueError, match="m must divide"):
        ProductQuantizer.fit(test, m=48)
    path = pq.save(pq_codebook_path("test-128", pq.m, tmp_path))
    assert path.name == "pq-test-128-m32.npz"
    loaded = ProductQuantizer.load(path, model_version="test-128")
    assert loaded.trained_on == "synthetic" and np.array_equal(loaded.encode(test), pq.encode(test))
    with pytest.raises(ValueError, match="trained for"):
        ProductQuantizer.load(path, model_version="other")
