"""The embedder of a version being promoted is loaded before the switch (recognition/embedder_preload.py):
what is preloaded when, in the cache the switch then uses, never blocking the caller, a failed load
retried, a target retired before its switch dropped. The promoted version is the static int8 sface
(``sface-2021dec-int8qdq``), its weights copied per test (a fresh instance in faceengine's cache
each time, a file that can be damaged): a real version that builds in well under a second."""

from __future__ import annotations

import functools
import io
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceengine import protocol as p
from faceengine import registry
from faceengine.backends.sface import SFACE_MODEL_VERSION, SFaceInt8Embedder
from faceengine.embedder import Embedder
from recognition import engine, tasks
from recognition.detections import probe_vector
from recognition.embedder_preload import EmbedderPreloader, preload_versions, promotion_target
from recognition.engine import active_embedder, version_embedder
from recognition.gallery_migration import gallery_migration_pause, gallery_migration_start
from recognition.model_registry import model_version_register, model_version_retire, model_version_transition
from recognition.models import GalleryMigration, ModelCalibration, ModelVersion
from tests.waiting import wait_until

QDQ = "sface-2021dec-int8qdq"
Phase = GalleryMigration.State


def _qdq_registered(tmp_path: Path) -> Path:
    """QDQ signed and calibrated (what a promotion needs), its weights a copy in ``tmp_path``."""
    copy = tmp_path / "face_recognition_sface_2021dec_int8qdq.onnx"
    shutil.copyfile(SFaceInt8Embedder.default_path(), copy)
    model_version_register(backend="sface-int8", model_version=QDQ, options={"model_path": str(copy)})
    ModelCalibration.objects.update_or_create(model_version=QDQ, defaults={"threshold": 0.4, "target_fmr": 1e-3})
    return copy


def _promote(tmp_path: Path) -> GalleryMigration:
    _qdq_registered(tmp_path)
    return gallery_migration_start(model=ModelVersion.objects.get(model_version=QDQ))


def _cached(version: str) -> list[Embedder]:
    return [e for e in list(registry._instances.values()) if e.model_version == version]


@pytest.mark.django_db
def test_the_target_is_a_promotion_under_way_until_it_switches(tmp_path: Path) -> None:
    assert promotion_target() is None and preload_versions() == [SFACE_MODEL_VERSION]
    migration = _promote(tmp_path)
    assert migration.state == Phase.QUEUED and promotion_target() == QDQ
    assert preload_versions() == [SFACE_MODEL_VERSION, QDQ]
    for state, target in ((Phase.RUNNING, QDQ), (Phase.DONE, QDQ), (Phase.PAUSED, None), (Phase.FAILED, None)):
        GalleryMigration.objects.filter(pk=migration.pk).update(state=state)
        assert promotion_target() == target, state
    # A gallery built without activation (for shadow decisions, for devices) is not a promotion.
    GalleryMigration.objects.filter(pk=migration.pk).update(state=Phase.DONE, activate=False)
    assert promotion_target() is None
    # Switched: nothing is about to become active; the active version is the one to keep.
    GalleryMigration.objects.filter(pk=migration.pk).update(activate=True)
    model_version_transition(model=ModelVersion.objects.get(model_version=QDQ), to_state="active")
    assert promotion_target() is None and preload_versions() == [QDQ]


def _detection(mode: str) -> p.Detection:
    now = time.time()
    common = {"device_uid": "dock-1", "detection_id": p.new_id(), "captured_at": now, "sent_at": now,
              "detector_score": 0.9, "box": (0, 0, 120, 120), "quality": {"face_px": 120.0}}  # fmt: skip
    if mode == "crop":
        return p.Detection.with_crop(jpeg=b"\xff\xd8\xff\xe0stub", **common)
    return p.Detection.with_embedding(values=[0.1] * 128, model_version=SFACE_MODEL_VERSION, **common)


@pytest.mark.django_db
def test_only_a_process_that_embeds_door_crops_loads_the_target_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine, "_door_crop_at", None)  # this process has decided no crop-mode detection
    monkeypatch.setattr("recognition.embedder_preload._not_ahead", set())
    _promote(tmp_path)
    caplog.set_level(logging.INFO, logger="recognition.embedder_preload")
    versions = functools.partial(preload_versions, crops_within_s=3600)
    preloader = EmbedderPreloader(interval_s=60, retry_s=60, versions=versions)
    assert versions() == [] and versions() == []
    assert preloader.check() == [] and preloader.loaded == {}
    assert caplog.text.count(f"{QDQ} is not loaded ahead: this process embedded no door crop") == 1  # said once
    assert preload_versions(crops_within_s=0) == [SFACE_MODEL_VERSION, QDQ]  # 0: every decision process

    # An embedding-mode detection is decided in its device's version: it does not count.
    probe_vector(_detection("embedding"), "")
    assert versions() == []
    # A door's crop embedded by the server (the decision's own path) does.
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    vector, version = probe_vector(_detection("crop"), jpeg.getvalue())
    assert version == SFACE_MODEL_VERSION and vector.shape == (128,)
    assert versions() == [SFACE_MODEL_VERSION, QDQ]
    assert QDQ in preloader.check() and QDQ in preloader.loaded
    # After the window (here an hour) without a crop, neither the target nor, once switched, the new
    # active version is loaded ahead: the process loads one if a crop comes.
    monkeypatch.setattr(engine, "_door_crop_at", time.monotonic() - 3601)
    assert versions() == []


@pytest.mark.django_db
def test_a_pass_builds_the_target_in_the_cache_the_switch_then_uses(tmp_path: Path) -> None:
    preloader = EmbedderPreloader(interval_s=60, retry_s=60)
    before = {id(e) for e in _cached(QDQ)}
    assert preloader.check() in ([], [SFACE_MODEL_VERSION])  # no promotion: only the active one (loaded)
    assert {id(e) for e in _cached(QDQ)} == before

    _promote(tmp_path)
    assert QDQ in preloader.check()
    [built] = [e for e in _cached(QDQ) if id(e) not in before]
    assert preloader.check() == []  # built once

    model_version_transition(model=ModelVersion.objects.get(model_version=QDQ), to_state="active")
    assert active_embedder() is built  # the first decision after the switch finds it built


@pytest.mark.django_db
def test_a_target_retired_before_its_switch_is_dropped_from_the_cache(tmp_path: Path) -> None:
    migration = _promote(tmp_path)
    preloader = EmbedderPreloader(interval_s=60, retry_s=60)
    assert QDQ in preloader.check()
    built = preloader.loaded[QDQ]
    gallery_migration_pause(migration=migration)
    preloader.check()
    assert preloader.loaded[QDQ] is built  # paused: its gallery is kept, it may resume
    model_version_retire(model=ModelVersion.objects.get(model_version=QDQ))
    preloader.check()
    assert QDQ not in preloader.loaded and all(e is not built for e in _cached(QDQ))
    assert SFACE_MODEL_VERSION in preloader.loaded  # the active one stays


@pytest.mark.django_db(transaction=True)
def test_the_thread_never_blocks_the_caller_loads_one_at_a_time_and_tries_a_failed_load_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = tmp_path / "face_recognition_sface_2021dec_int8qdq.onnx"
    _promote(tmp_path)
    good = copy.read_bytes()
    copy.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # the target's weights damaged on this server
    gate, loading = threading.Event(), threading.Event()

    def load(version: str) -> Embedder:  # the real load, held until the test lets it go on
        loading.set()
        gate.wait(10)
        return version_embedder(version)

    lock = tmp_path / "embedder-preload.lock"
    preloader = EmbedderPreloader(interval_s=0.1, retry_s=0.3, load=load, lock_path=lock)
    caplog.set_level(logging.INFO, logger="recognition.embedder_preload")
    try:
        preloader.start()
        assert loading.wait(10)
        # The load is under way in the preloader's thread; this thread goes on deciding.
        assert active_embedder().model_version == SFACE_MODEL_VERSION and not gate.is_set()
        # Another process of the machine waits for its turn (it would have built the active one at least).
        other = EmbedderPreloader(interval_s=60, retry_s=60, lock_path=lock)
        assert other.check() == [] and other.loaded == {}
        gate.set()
        assert wait_until(lambda: "could not load sface-2021dec-int8qdq" in caplog.text)
        assert QDQ not in preloader.loaded and preloader._thread is not None and preloader._thread.is_alive()
        copy.write_bytes(good)  # repaired: the next try, retry_s later, builds it
        assert wait_until(lambda: QDQ in preloader.loaded)
        assert f"{QDQ} ready" in caplog.text
    finally:
        preloader.stop(timeout=10)
    assert not preloader._thread.is_alive()


@pytest.mark.django_db(transaction=True)
def test_a_decision_worker_process_starts_the_preloader(settings: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from recognition import embedder_preload

    settings.RECOGNITION_PRELOAD_CHECK_S = 0.1  # type: ignore[attr-defined]
    monkeypatch.setattr(engine, "_door_crop_at", time.monotonic())  # a process that decides crop-mode detections
    tasks._load_model()
    preloader = embedder_preload._preloader
    try:
        assert preloader is not None and preloader._thread is not None and preloader._thread.is_alive()
        window = settings.RECOGNITION_PRELOAD_CROP_WINDOW_S  # type: ignore[attr-defined]
        assert preloader._versions.keywords == {"crops_within_s": window} and window == 24 * 3600
        assert wait_until(lambda: SFACE_MODEL_VERSION in preloader.loaded)
    finally:
        preloader.stop(timeout=10)
        embedder_preload._preloader = None
