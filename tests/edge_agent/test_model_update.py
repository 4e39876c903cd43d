"""Model updates on the device (edge_agent/model_update.py) with real files: a bundle server that checks
the device's signed requests and answers ranges, the real sface weights, a validly signed model with
shuffled weights (loads, answers garbage), one flipped byte, a foreign signature, a cut download."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.model_update import CHOSEN_FILE, SampleCrops, download_file, self_test
from edge_agent.relay import SimulatedRelay
from edge_agent.vision import FaceCandidate, LocalEmbedder, YunetDetector, prepare
from faceengine import protocol as p
from faceengine.backends.sface import SFACE_MODEL_VERSION, default_model_path
from faceengine.protocol.model_download import request_token_split, request_token_verify
from faceengine.protocol.model_manifest import ModelManifest, manifest_sign, model_files_describe
from tests.edge_agent.conftest import Keys, make_config
from tests.faces import LFW_DIR

pytestmark = pytest.mark.dataset("lfw")

NEW = "sface-rollout-test"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def faces() -> list[FaceCandidate]:
    """Aligned faces of six different LFW people (YuNet landmarks), as the agent keeps them."""
    from PIL import Image

    detector = YunetDetector(min_face_px=20, threads=1)
    out = []
    for person in sorted(d for d in LFW_DIR.iterdir() if d.is_dir())[:40]:
        image = sorted(person.glob("*.jpg"))[0]
        rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.uint8)
        found = prepare(rgb, detector.detect(rgb), min_face_px=20, min_score=0.5)
        if found:
            out.append(found[0])
        if len(out) == 6:
            break
    assert len(out) == 6
    return out


@pytest.fixture(scope="module")
def one_person() -> list[FaceCandidate]:
    """Six photos of one person: the samples of a door one person uses all day."""
    from PIL import Image

    detector = YunetDetector(min_face_px=20, threads=1)
    out = []
    for image in sorted((LFW_DIR / "Colin_Powell").glob("*.jpg"))[:10]:
        rgb = np.asarray(Image.open(image).convert("RGB"), dtype=np.uint8)
        out += prepare(rgb, detector.detect(rgb), min_face_px=20, min_score=0.5)[:1]
    return out[:6]


@pytest.fixture(scope="module")
def garbage_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sface with every large float tensor shuffled: a valid ONNX file that loads and embeds garbage."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(default_model_path()))
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32 and values.size > 1000:
            shuffled = rng.permutation(values.ravel()).reshape(values.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(shuffled, init.name))
    path = tmp_path_factory.mktemp("garbage") / "sface-garbage.onnx"
    onnx.save(model, str(path))
    return path


class BundleServer:
    """What the server's download endpoint does, for the agent's side: the device-signed token
    checked (device key, path, expiry, nonce once), ``Range`` answered with 206. ``cut_first``:
    the first full response stops after half the file (a dropped connection)."""

    def __init__(self, folder: Path, device_public: str) -> None:
        self.folder, self.device_public = folder, device_public
        self.nonces: set[str] = set()
        self.log: list[tuple[int, str | None]] = []
        self.cut_first = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                try:
                    token = request_token_split(self.headers.get("Authorization"))
                    request_token_verify(token, outer.device_public, method="GET", path=self.path)
                    if token.nonce in outer.nonces:
                        raise p.ProtocolError(p.Reason.REPLAY, "nonce")
                    outer.nonces.add(token.nonce)
                except p.ProtocolError:
                    outer.log.append((401, None))
                    self.send_error(401)
                    return
                data = (outer.folder / self.path.rsplit("/", 1)[-1]).read_bytes()
                wanted = self.headers.get("Range")
                start = int(wanted.split("=")[1].rstrip("-")) if wanted else 0
                body = data[start:]
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                outer.log.append((206 if wanted else 200, wanted))
                if outer.cut_first and not wanted:
                    outer.cut_first = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/bundles/{NEW}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys) -> Iterator[BundleServer]:
    folder = tmp_path / "served"
    folder.mkdir()
    server = BundleServer(folder, keys.device_public)
    yield server
    server.close()


def offer(
    keys: Keys,
    folder: Path,
    weights: Path,
    *,
    url: str,
    signer: str | None = None,
    agents: str = ">=0.1.0",
    version: str = NEW,
) -> p.Command:
    """A signed offer of ``weights`` as ``version`` (the file copied into the served ``folder``)."""
    shutil.copyfile(weights, folder / "sface-new.onnx")
    manifest = ModelManifest(
        model_version=version, backend="sface", files=model_files_describe([folder / "sface-new.onnx"]), dim=128,
        input_kind="arcface112", input_size=112, licence="Apache-2.0", agent_versions=agents,
        issued_at=int(time.time()),
    )  # fmt: skip
    sig = manifest_sign(manifest, signer or keys.server_private)
    return p.Command(
        device_uid="door-test-1", command=p.CommandKind.MODEL_OFFER, command_id=p.new_id(), issued_at=time.time(),
        reason="model_rollout", data={"manifest": {"manifest": manifest.to_dict(), "sig": sig}, "url": url},
    )  # fmt: skip


def make_agent(tmp_path: Path, keys: Keys, faces: list[FaceCandidate]) -> EdgeAgent:
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    config.detection.mode = "embedding"
    config.models.dir = tmp_path / "models"
    agent = EdgeAgent(
        config, camera=None, detector=None, relay=SimulatedRelay(), embedder=LocalEmbedder("sface", threads=1)
    )
    running = agent.embedder
    assert running is not None
    for face in faces:  # as if sent: with the running model's vector
        agent.samples.add(face, running.embed(face), running.model_version)
    return agent


def two_bundles_taken(tmp_path: Path, keys: Keys, faces: list[FaceCandidate], bundle: BundleServer) -> tuple[str, str]:
    """A device configured with sface that took bundle A, then bundle B, and stopped; (A, B)."""
    first, second = "sface-rollout-a", "sface-rollout-b"
    agent = make_agent(tmp_path, keys, faces)
    try:
        updater = agent.model_updater
        assert updater is not None
        for version in (first, second):
            assert updater.offer(offer(keys, bundle.folder, default_model_path(), url=bundle.url, version=version))
        assert model_of(agent, faces[0]) == second
    finally:
        agent.stop()
    return first, second


def model_of(agent: EdgeAgent, face: FaceCandidate) -> str:
    detection = agent.build_detection(face, captured_at=time.time())
    assert detection.embedding is not None
    return str(detection.model_version)


# --------------------------------------------------------------------------- tests


@pytest.mark.slow  # ~7 s on the loaded 2-core machine; the switch and rollback tests run the self-test too
def test_self_test_passes_real_models_and_catches_one_that_loads_but_answers_garbage(
    faces, one_person, garbage_weights
) -> None:
    good = self_test(LocalEmbedder("sface", threads=1), faces, dim=128)
    assert good.ok, good
    garbage = LocalEmbedder("sface", threads=1, options={"model_path": str(garbage_weights)}, model_version="x")
    bad = self_test(garbage, faces, dim=128)
    assert not bad.ok and bad.reason == "self_test_collapsed", bad
    assert self_test(LocalEmbedder("sface", threads=1), faces[:2], dim=128).reason == "self_test_no_samples"
    # one person all day: alike to any good model; the running model's view sets the bar
    sface = LocalEmbedder("sface", threads=1)
    assert not self_test(sface, one_person, dim=128).ok
    assert self_test(sface, one_person, dim=128, reference=sface).ok
    assert self_test(garbage, one_person, dim=128, reference=sface).reason == "self_test_collapsed"
    assert self_test(LocalEmbedder("sface", threads=1), faces, dim=512).reason == "self_test_wrong_dim"


def test_an_offer_is_downloaded_verified_self_tested_and_switched_atomically_and_kept_over_a_restart(
    tmp_path: Path, keys: Keys, faces, bundle: BundleServer
) -> None:
    agent = make_agent(tmp_path, keys, faces)
    try:
        assert model_of(agent, faces[0]) == SFACE_MODEL_VERSION
        updater = agent.model_updater
        assert updater is not None
        assert updater.offer(offer(keys, bundle.folder, default_model_path(), url=bundle.url))
        assert model_of(agent, faces[0]) == NEW  # the next detection carries the new version
        hb = agent.heartbeat()
        assert (hb.model_version, hb.model_update_version, hb.model_update_state) == (NEW, NEW, "switched")
        assert updater.timings["switch_ms"] < 5.0, updater.timings
        chosen = json.loads((tmp_path / "models" / CHOSEN_FILE).read_text())
        assert chosen["previous"] == SFACE_MODEL_VERSION
    finally:
        agent.stop()
    again = make_agent(tmp_path, keys, faces)  # a restart keeps the choice (its bundle verified again)
    try:
        assert model_of(again, faces[0]) == NEW
        assert again.model_updater is not None and again.model_updater.status.state == "switched"
        # a rollback command: back to the configured model at once, and the choice forgotten
        assert again.model_updater.rollback(reason="rollback_command")
        assert model_of(again, faces[0]) == SFACE_MODEL_VERSION
        assert not (tmp_path / "models" / CHOSEN_FILE).exists()
        assert again.heartbeat().model_update_state == "rolled_back"
    finally:
        again.stop()


def test_a_rollback_returns_to_the_earlier_bundle_and_keeps_it_over_restarts(
    tmp_path: Path, keys: Keys, faces, bundle: BundleServer
) -> None:
    """Configured sface, then bundle A, then bundle B: a rollback goes back to A (not to the
    configured model, whose gallery the server may have retired), also after a restart, and a
    restart after the rollback starts A again."""
    first, second = two_bundles_taken(tmp_path, keys, faces, bundle)
    models = tmp_path / "models"
    chosen = json.loads((models / CHOSEN_FILE).read_text())
    assert chosen["previous"] == first and chosen["previous_signed"]["manifest"]["model_version"] == first
    assert {d.name for d in (models / "bundles").iterdir()} == {first, second}  # A's files kept
    again = make_agent(tmp_path, keys, faces)
    try:
        updater = again.model_updater
        assert updater is not None and model_of(again, faces[0]) == second
        assert updater.previous is not None and updater.previous.model_version == first  # loaded, verified
        assert updater.rollback(reason="rollback_command")
        assert model_of(again, faces[0]) == first
        chosen = json.loads((models / CHOSEN_FILE).read_text())
        assert chosen["signed"]["manifest"]["model_version"] == first and chosen["previous_signed"] is None
        assert {d.name for d in (models / "bundles").iterdir()} == {first}
    finally:
        again.stop()
    third = make_agent(tmp_path, keys, faces)
    try:
        assert model_of(third, faces[0]) == first
        assert third.model_updater is not None and third.model_updater.previous is not None
        assert third.model_updater.previous.model_version == SFACE_MODEL_VERSION  # the configured one
    finally:
        third.stop()


def test_an_earlier_bundle_altered_on_disk_is_not_loaded_as_the_rollback_target(
    tmp_path: Path, keys: Keys, faces, bundle: BundleServer
) -> None:
    first, second = two_bundles_taken(tmp_path, keys, faces, bundle)
    stored = tmp_path / "models" / "bundles" / first / "sface-new.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    again = make_agent(tmp_path, keys, faces)
    try:
        assert model_of(again, faces[0]) == second
        updater = again.model_updater
        assert updater is not None and updater.previous is not None
        assert updater.previous.model_version == SFACE_MODEL_VERSION  # not the altered bundle
        assert updater.rollback(reason="rollback_command") and model_of(again, faces[0]) == SFACE_MODEL_VERSION
        assert not (tmp_path / "models" / CHOSEN_FILE).exists()
    finally:
        again.stop()


def test_one_flipped_byte_or_a_foreign_signature_is_refused_and_the_running_model_stays(
    tmp_path: Path, keys: Keys, faces, bundle: BundleServer
) -> None:
    agent = make_agent(tmp_path, keys, faces)
    try:
        updater = agent.model_updater
        assert updater is not None
        command = offer(keys, bundle.folder, default_model_path(), url=bundle.url)
        served = bundle.folder / "sface-new.onnx"
        data = bytearray(served.read_bytes())
        data[len(data) // 3] ^= 0x01
        served.write_bytes(bytes(data))
        assert not updater.offer(command)
        assert (updater.status.state, updater.status.reason) == ("failed", "bad_file")
        assert model_of(agent, faces[0]) == SFACE_MODEL_VERSION
        assert not any((tmp_path / "models" / "bundles" / NEW).glob("*.onnx"))  # the bad file is not kept

        requests = len(bundle.log)
        other, _ = p.generate_keypair()
        assert not updater.offer(offer(keys, bundle.folder, default_model_path(), url=bundle.url, signer=other))
        assert (updater.status.state, updater.status.reason) == ("failed", "bad_signature")
        assert len(bundle.log) == requests  # nothing downloaded for a manifest the server did not sign
        assert not updater.offer(offer(keys, bundle.folder, default_model_path(), url=bundle.url, agents=">=99"))
        assert (updater.status.state, updater.status.reason) == ("failed", "incompatible_agent")
        assert len(bundle.log) == requests  # nor for one this agent may not load
        assert model_of(agent, faces[0]) == SFACE_MODEL_VERSION
    finally:
        agent.stop()


def test_a_model_that_fails_its_self_test_is_rolled_back_within_the_target_while_the_door_decides(
    tmp_path: Path, keys: Keys, faces, bundle: BundleServer, garbage_weights: Path
) -> None:
    agent = make_agent(tmp_path, keys, faces)
    try:
        updater = agent.model_updater
        assert updater is not None
        agent.command_listeners.clear()
        decided: list[str] = []
        stop = threading.Event()

        def door() -> None:  # a face every 100 ms keeps being decided (old model) while the update runs
            while not stop.wait(0.1):
                decided.append(model_of(agent, faces[1]))

        thread = threading.Thread(target=door)
        thread.start()
        try:
            started = time.monotonic()
            updater.receive(offer(keys, bundle.folder, garbage_weights, url=bundle.url))
            assert updater.wait_idle(60)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            thread.join()
        assert (updater.status.state, updater.status.reason) == ("failed", "self_test_collapsed")
        # the 10 s target for a failed update is measured by bench/model_update.py, not here
        # (a timed assertion fails on a loaded machine without telling anything about the code)
        assert decided and set(decided) == {SFACE_MODEL_VERSION}
        assert model_of(agent, faces[0]) == SFACE_MODEL_VERSION
        assert not (tmp_path / "models" / CHOSEN_FILE).exists()
        print(f"failed update: {elapsed:.2f} s, timings {updater.timings}, {len(decided)} detections meanwhile")
    finally:
        agent.stop()


def test_after_a_restart_an_offer_waits_for_faces_to_self_test_then_switches(
    tmp_path: Path, keys: Keys, faces, bundle: BundleServer
) -> None:
    """The samples live in memory only: a device that has seen no face since it started verifies the
    offer and waits (not failed, so the operator need not offer it again); it switches once enough
    faces were sent. A rollback drops a waiting offer."""
    agent = make_agent(tmp_path, keys, [])
    try:
        updater = agent.model_updater
        assert updater is not None
        agent.command_listeners.clear()
        assert not updater.offer(offer(keys, bundle.folder, default_model_path(), url=bundle.url))
        assert (updater.status.state, updater.status.reason) == ("verified", "waiting_for_faces")
        assert agent.heartbeat().model_update_reason == "waiting_for_faces"
        for face in faces[:2]:
            agent.send_candidate(face, captured_at=time.time())
        assert updater.wait_idle(30) and model_of(agent, faces[0]) == SFACE_MODEL_VERSION  # 2 of 3 faces
        agent.send_candidate(faces[2], captured_at=time.time())
        assert updater.wait_idle(60)
        assert updater.status.state == "switched" and model_of(agent, faces[0]) == NEW
    finally:
        agent.stop()

    shutil.rmtree(tmp_path / "models")  # a device that never took the offer
    restarted = make_agent(tmp_path, keys, [])
    try:
        updater = restarted.model_updater
        assert updater is not None
        assert not updater.offer(offer(keys, bundle.folder, default_model_path(), url=bundle.url))
        assert not updater.rollback(reason="rollback_command")  # nothing to roll back to; the offer is dropped
        for face in faces[:4]:
            restarted.send_candidate(face, captured_at=time.time())
        assert updater.wait_idle(30) and model_of(restarted, faces[0]) == SFACE_MODEL_VERSION
    finally:
        restarted.stop()


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path: Path, keys: Keys, bundle: BundleServer) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes())
    shutil.copyfile(source, bundle.folder / "weights.bin")
    bundle.cut_first = True
    private = keys.device_private

    def authorize(path: str) -> str:
        from faceengine.protocol.model_download import request_token_sign

        return request_token_sign(device_uid="door-test-1", path=path, private_key=private)

    dest = tmp_path / "got.bin"
    download_file(bundle.url + "weights.bin", dest, size=300_000, authorize=authorize, timeout_s=5)
    assert dest.read_bytes() == source.read_bytes()
    assert [status for status, _ in bundle.log] == [200, 206]
    assert bundle.log[1][1] == "bytes=150000-"


def test_samples_are_kept_per_sent_face_in_memory_only(tmp_path: Path, keys: Keys, faces) -> None:
    agent = make_agent(tmp_path, keys, [])
    try:
        assert len(agent.samples) == 0
        agent.send_candidate(faces[0], captured_at=time.time())
        assert agent.samples.snapshot() == [faces[0]]
        kept = agent.samples.vectors(SFACE_MODEL_VERSION)  # the running model's vector: the self-test's reference
        assert kept is not None and kept.shape == (1, 128)
        assert agent.samples.vectors("another-model") is None
        assert not list((tmp_path / "models").rglob("*.jpg"))
        assert isinstance(agent.samples, SampleCrops)
    finally:
        agent.stop()


def test_a_crop_mode_agent_reports_that_it_cannot_take_an_offer(tmp_path: Path, keys: Keys, bundle) -> None:
    agent = EdgeAgent(make_config(tmp_path, keys, "mqtt://127.0.0.1:1"), camera=None, detector=None,
                      relay=SimulatedRelay())  # fmt: skip
    try:
        assert agent.model_updater is None
        agent._on_command(offer(keys, bundle.folder, default_model_path(), url=bundle.url), b"")
        hb = agent.heartbeat()
        assert (hb.model_update_version, hb.model_update_state, hb.model_update_reason) == (
            NEW, "failed", "not_embedding_mode"
        )  # fmt: skip
        assert bundle.log == []  # nothing downloaded
    finally:
        agent.stop()
