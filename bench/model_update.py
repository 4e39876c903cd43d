"""Device model updates (edge_agent/model_update.py) timed on this machine: a good update and a failed one.

    python bench/model_update.py [--lfw DIR] [--threads 2] [--faces 6] [--to sface|facenet-casia]

An agent in embedding mode (sface) with the last ``--faces`` LFW faces as its self-test samples is
offered, over a local HTTP server, (1) a bundle of ``--to`` (download, ``bundle_verify``, load
beside, self-test, switch) and (2) sface with shuffled weights, validly signed (it loads and
embeds garbage: the self-test fails and the agent stays on its model). Prints each step's seconds,
the switch (one assignment) and, for the failed one, the time from the offer to the old model
being reported back (the issue's target: <= 10 s), while a door thread decides a face every
100 ms with the running model.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.agent import EdgeAgent
from edge_agent.config import EdgeConfig
from edge_agent.relay import SimulatedRelay
from edge_agent.vision import LocalEmbedder, YunetDetector, prepare
from faceengine import protocol as p
from faceengine.backends import package_data_path
from faceengine.backends.facenet import CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH
from faceengine.backends.sface import default_model_path
from faceengine.protocol.model_manifest import ModelManifest, manifest_sign, model_files_describe


def lfw_faces(lfw: Path, count: int) -> list:
    from PIL import Image

    detector = YunetDetector(min_face_px=20, threads=1)
    out = []
    for person in sorted(d for d in lfw.iterdir() if d.is_dir()):
        rgb = np.asarray(Image.open(sorted(person.glob("*.jpg"))[0]).convert("RGB"), dtype=np.uint8)
        out += prepare(rgb, detector.detect(rgb), min_face_px=20, min_score=0.5)[:1]
        if len(out) == count:
            return out
    raise SystemExit(f"fewer than {count} faces under {lfw}")


def garbage(folder: Path) -> Path:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(default_model_path()))
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32 and values.size > 1000:
            init.CopyFrom(numpy_helper.from_array(rng.permutation(values.ravel()).reshape(values.shape), init.name))
    path = folder / "sface-garbage.onnx"
    onnx.save(model, str(path))
    return path


def offer(server_key: str, served: Path, url: str, version: str, backend: str, weights: Path) -> p.Command:
    target = served / version
    target.mkdir()
    shutil.copyfile(weights, target / weights.name)
    dim, kind, size = (512, "facenet160", 160) if backend == "facenet-casia" else (128, "arcface112", 112)
    manifest = ModelManifest(
        model_version=version, backend=backend, files=model_files_describe([target / weights.name]), dim=dim,
        input_kind=kind, input_size=size, issued_at=int(time.time()),
    )  # fmt: skip
    signed = {"manifest": manifest.to_dict(), "sig": manifest_sign(manifest, server_key)}
    return p.Command(
        device_uid="bench-door", command=p.CommandKind.MODEL_OFFER, command_id=p.new_id(), issued_at=time.time(),
        reason="model_rollout", data={"manifest": signed, "url": f"{url}/{version}/"},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw", type=Path, default=Path("var/datasets/lfw"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--faces", type=int, default=6)
    parser.add_argument("--to", choices=("sface", "facenet-casia"), default="sface")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-model-update-"))
    served = work / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"

    server_key, server_public = p.generate_keypair()
    device_key, _ = p.generate_keypair()
    (work / "device.key").write_text(device_key)
    config = EdgeConfig()
    config.device.uid, config.device.private_key_path = "bench-door", work / "device.key"
    config.device.server_public_key = server_public
    config.mqtt.url = "mqtt://127.0.0.1:1"
    config.spool.dir, config.models.dir = work / "spool", work / "models"
    config.detection.mode, config.detection.threads = "embedding", args.threads
    agent = EdgeAgent(config.validate(), camera=None, detector=None, relay=SimulatedRelay(),
                      embedder=LocalEmbedder("sface", threads=args.threads))  # fmt: skip
    faces = lfw_faces(args.lfw, args.faces)
    running = agent.embedder
    assert running is not None
    for face in faces:  # as if sent: with the running model's vector
        agent.samples.add(face, running.embed(face), running.model_version)
    updater = agent.model_updater
    assert updater is not None
    decided: list[str] = []
    stop = threading.Event()

    def door() -> None:
        while not stop.wait(0.1):
            decided.append(str(agent.build_detection(faces[0], captured_at=time.time()).model_version))

    thread = threading.Thread(target=door, daemon=True)
    thread.start()
    try:
        good = (
            package_data_path(CASIA_DISTRIBUTION, CASIA_RELATIVE_PATH) if args.to == "facenet-casia"
            else default_model_path()
        )  # fmt: skip
        for label, command in (
            ("failed (garbage weights)", offer(server_key, served, url, "sface-garbage", "sface", garbage(work))),
            (f"good ({args.to})", offer(server_key, served, url, f"{args.to}-bench", args.to, good)),
        ):
            before = len(decided)
            started = time.perf_counter()
            switched = updater.offer(command)
            elapsed = time.perf_counter() - started
            print(f"{label:28s} switched={switched!s:5s} {elapsed:6.2f} s offer -> reported; steps {updater.timings}")
            if updater.last_self_test is not None:
                print(f"{'':28s} self-test {updater.last_self_test}")
            print(f"{'':28s} {len(decided) - before} door decisions meanwhile, models {sorted(set(decided[before:]))}")
    finally:
        stop.set()
        thread.join()
        agent.stop()
        httpd.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
