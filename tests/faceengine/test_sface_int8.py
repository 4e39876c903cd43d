"""The int8 edge variant of SFace (backend ``sface-int8``) and the quantisation tool that makes it
(faceengine/backends/sface.py, faceengine/quantization.py)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceengine import quantization
from faceengine.backends.sface import (
    SFACE_INT8_FILE,
    SFACE_INT8_MODEL_VERSION,
    SFACE_INT8_SHA256,
    SFaceEmbedder,
    SFaceInt8Embedder,
    _cpu_flags,
    int8_kernels_saturate,
)
from faceengine.embedder import EmbedderConfigError
from faceengine.registry import available_backends, get_embedder
from tests.faces import LFW_DIR

pytest.importorskip("onnxruntime")

# two people, two photos each, and a third person once
LFW_FACES = (
    "Abel_Pacheco/Abel_Pacheco_0001.jpg",
    "Abel_Pacheco/Abel_Pacheco_0004.jpg",
    "Dean_Barker/Dean_Barker_0001.jpg",
    "Colin_Powell/Colin_Powell_0001.jpg",
    "Colin_Powell/Colin_Powell_0002.jpg",
)


def _aligned(rel: str) -> np.ndarray:
    from faceengine.alignment import align_arcface
    from faceengine.yunet import detect_faces

    rgb = np.asarray(Image.open(LFW_DIR / rel).convert("RGB"))
    faces = detect_faces(rgb, num_threads=1)
    return align_arcface(rgb, quantization.central_face(faces, rgb.shape[1], rgb.shape[0]).landmarks)


def test_the_shipped_int8_file_is_the_registered_one_with_its_calibration_recorded() -> None:
    assert "sface-int8" in available_backends()
    assert hashlib.sha256(SFACE_INT8_FILE.read_bytes()).hexdigest() == SFACE_INT8_SHA256
    assert SFACE_INT8_FILE.stat().st_size < 12_000_000
    assert (SFACE_INT8_FILE.parent / "LICENSE").is_file() and (SFACE_INT8_FILE.parent / "NOTICE").is_file()
    meta = quantization.model_metadata(SFACE_INT8_FILE)
    assert meta["accessctl.quantization.recipe"] == quantization.RECIPE
    assert len(meta["accessctl.quantization.calibration_sha256"]) == 64
    from faceengine.backends.sface import SFACE_SHA256

    assert meta["accessctl.quantization.source_sha256"] == SFACE_SHA256


def test_int8_backend_loads_and_embeds_like_the_float_one() -> None:
    emb = get_embedder("sface-int8", num_threads=1)
    assert isinstance(emb, SFaceInt8Embedder)
    assert (emb.model_version, emb.dim, str(emb.input_kind)) == (SFACE_INT8_MODEL_VERSION, 128, "arcface112")
    assert emb.model_version != SFaceEmbedder.model_version  # its vectors are never compared with sface's
    crop = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    out = emb.embed(np.stack([crop, crop]))
    assert out.shape == (2, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


@pytest.mark.dataset("lfw")
def test_int8_decides_the_sample_faces_as_the_float_model() -> None:
    crops = np.stack([_aligned(rel) for rel in LFW_FACES])
    f = get_embedder("sface", num_threads=1).embed(crops)
    q = get_embedder("sface-int8", num_threads=1).embed(crops)
    assert np.min(np.sum(f * q, axis=1)) > 0.95  # each face: the two vectors point the same way
    owners = [rel.split("/")[0] for rel in LFW_FACES]
    threshold = 0.3644  # sface's 1:1 threshold at FAR 1e-3 on LFW (recognition/calibration.py)
    for vectors in (f, q):
        sims = vectors @ vectors.T
        for i in range(len(owners)):
            for j in range(i + 1, len(owners)):
                assert (sims[i, j] >= threshold) == (owners[i] == owners[j]), (owners[i], owners[j])
    # the two models' pair scores differ by little
    assert np.abs(np.triu(f @ f.T - q @ q.T)).max() < 0.06


def test_int8_kernels_are_used_only_where_they_compute_what_was_calibrated(tmp_path: Path) -> None:
    """x86 without VNNI: uint8 x int8 products summed into 16 bits saturate (vpmaddubsw), and the
    vectors drift from the calibrated ones (cosine to float down to 0.89 on the sample faces, on an
    AVX2-only machine): the quantised graph then runs its arithmetic in float."""
    avx2 = frozenset({"sse4_2", "avx2", "fma"})
    assert int8_kernels_saturate(machine="x86_64", cpu_flags=avx2)
    assert int8_kernels_saturate(machine="x86_64", cpu_flags=avx2 | {"avx512f", "avx512bw"})  # Skylake-SP
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert not int8_kernels_saturate(machine="x86_64", cpu_flags=avx2 | {vnni}), vnni
    assert not int8_kernels_saturate(machine="aarch64", cpu_flags=frozenset())  # ARM: widening int8 dot
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512_vnni\n\n")
    assert _cpu_flags(cpuinfo) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert _cpu_flags(tmp_path / "absent") is None

    embedder = SFaceInt8Embedder(num_threads=1)
    saturate = int8_kernels_saturate()
    assert embedder.int8_kernels is not saturate
    options = embedder._session.get_session_options()
    if saturate:
        assert options.get_session_config_entry("session.disable_quant_qdq") == "1"
    else:  # never set: onnxruntime's int8 kernels
        with pytest.raises(Exception, match="disable_quant_qdq"):
            options.get_session_config_entry("session.disable_quant_qdq")
    assert not SFaceEmbedder(num_threads=1).__dict__.get("int8_kernels")  # the float model: nothing to choose


def test_float_sface_with_folded_weights_computes_what_the_stored_graph_does() -> None:
    """Dequantising the weights once at load changes nothing but the speed (same model version)."""
    crops = np.random.default_rng(1).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    folded = SFaceEmbedder(num_threads=1)
    stored = SFaceEmbedder(num_threads=1, fold_weights=False)
    assert folded.model_version == stored.model_version
    import onnx

    from faceengine.backends.sface import load_fixed_model

    graph = onnx.load_from_string(load_fixed_model(SFaceEmbedder.default_path(), fold_weights=True)).graph
    assert "DequantizeLinear" not in {node.op_type for node in graph.node}
    assert np.abs(folded.embed(crops) - stored.embed(crops)).max() < 1e-5


def test_a_tampered_int8_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / SFACE_INT8_FILE.name
    shutil.copyfile(SFACE_INT8_FILE, evil)
    data = bytearray(evil.read_bytes())
    data[len(data) // 2] ^= 0x01
    evil.write_bytes(bytes(data))
    monkeypatch.setattr(SFaceInt8Embedder, "default_path", classmethod(lambda cls: evil))
    with pytest.raises(EmbedderConfigError, match="sha256"):
        SFaceInt8Embedder(num_threads=1)
    monkeypatch.setattr(SFaceInt8Embedder, "default_path", classmethod(lambda cls: tmp_path / "missing.onnx"))
    with pytest.raises(EmbedderConfigError, match="not found"):
        SFaceInt8Embedder(num_threads=1)


def _write_crops(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        sub = folder / f"p{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(sub / f"{i:03d}.png")


def test_calibration_set_is_a_deterministic_sample_with_a_digest_of_its_files(tmp_path: Path) -> None:
    _write_crops(tmp_path, 9)
    first = quantization.calibration_crops(tmp_path, count=4)
    again = quantization.calibration_crops(tmp_path, count=4)
    assert first.files == again.files and first.sha256 == again.sha256 and len(first.files) == 4
    assert first.crops.shape == (4, 112, 112, 3)  # 112x112 images are aligned crops already
    assert list(first.files) == sorted(first.files)
    # a changed file changes the digest
    target = tmp_path / first.files[0]
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(target)
    assert quantization.calibration_crops(tmp_path, count=4).sha256 != first.sha256
    assert quantization.evenly_spaced(["a", "b"], 5) == ["a", "b"]
    assert quantization.evenly_spaced([str(i) for i in range(10)], 3) == ["0", "3", "6"]


def test_calibration_refuses_a_folder_without_faces(tmp_path: Path) -> None:
    with pytest.raises(quantization.QuantizationError, match="does not exist"):
        quantization.calibration_crops(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "x" / "grey.jpg")
    with pytest.raises(quantization.QuantizationError, match="no face found"):
        quantization.calibration_crops(tmp_path, count=3)
    with pytest.raises(quantization.QuantizationError, match="positive"):
        quantization.calibration_crops(tmp_path, count=0)


@pytest.mark.slow
def test_quantisation_is_deterministic(tmp_path: Path) -> None:
    """Same source and calibration faces: the same bytes (~1 min: two quantisations of SFace)."""
    _write_crops(tmp_path / "faces", 6)
    calibration = quantization.calibration_crops(tmp_path / "faces", count=6)
    a = quantization.sface_quantize(
        source=SFaceEmbedder.default_path(), calibration=calibration, output=tmp_path / "a.onnx"
    )
    b = quantization.sface_quantize(
        source=SFaceEmbedder.default_path(), calibration=calibration, output=tmp_path / "b.onnx"
    )
    assert a.sha256 == b.sha256 and a.ops.get("QuantizeLinear", 0) > 0
    assert quantization.model_metadata(tmp_path / "a.onnx")["accessctl.quantization.calibration_sha256"] == (
        calibration.sha256
    )
