"""End-to-end decision latency and throughput on embedded defaults.

Starts its own embedded PostgreSQL (var/bench/pg), Valkey and MQTT broker, the bridge and a Celery
worker as child processes, enrols LFW people, provisions a device and then measures, from the
device's point of view, publish -> signed door command received:

- latency p50/p99 for one detection at a time, in crop mode and in embedding mode;
- sustained decisions per second when detections arrive faster than they are decided
  (embedding mode), with a check that every detection ended in exactly one AccessEvent.

Usage: .venv/bin/python bench/decision_latency.py [--latency-count 100] [--burst 2000] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accessctl import embedded  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def services_start(work: Path) -> list[embedded.ChildService]:
    pg = embedded.start_postgres(ROOT / "var" / "bench" / "pg")
    pg.ensure_database("accessctl_bench")
    valkey = embedded.start_valkey(work / "valkey")
    broker = embedded.start_mqtt_broker(work / "mqtt")
    os.environ.update(
        {
            "ACCESSCTL_PGDATA": str(pg.pgdata),
            "ACCESSCTL_DB_NAME": "accessctl_bench",
            "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0",
            "MQTT_URL": f"mqtt://127.0.0.1:{broker.port}",
            "ACCESSCTL_VAR_DIR": str(work),
            "MQTT_CLIENT_ID": "bench-bridge",
            "ACCESSCTL_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "accessctl.settings",
        }
    )
    return [valkey, broker]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-count", type=int, default=100)
    parser.add_argument("--burst", type=int, default=2000, help="detections for the throughput run")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker concurrency")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accessctl-bench-"))
    children = services_start(work)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(  # a clean slate: no events, people or gallery left by earlier runs
            "TRUNCATE accessctl_accessevent, devices_inbounddetection, accessctl_alarm, recognition_faceembedding, "
            "recognition_enrollmentphoto, accessctl_person CASCADE"
        )

    from PIL import Image

    from accessctl.models import AccessEvent, AccessGroup, Door, Person
    from devices.commands import server_public_key_b64
    from devices.models import EdgeDevice
    from devices.provisioning import device_provision
    from edge_agent import protocol as p
    from recognition.engine import active_embedder
    from recognition.models import FaceEmbedding
    from recognition.pipeline import embed_image
    from tests import faces
    from tests.devices import e2e

    print("setting up: enrolling LFW people ...", flush=True)
    door, _ = Door.objects.get_or_create(name="Bench door")
    group, _ = AccessGroup.objects.get_or_create(name="Bench group")
    group.doors.add(door)
    embedder = active_embedder()
    probes: list[tuple[bytes, list[float]]] = []
    for name in faces.PEOPLE[:4]:
        person, created = Person.objects.get_or_create(name=name.replace("_", " "))
        group.people.add(person)
        paths = faces.face_paths(name, 6)
        for path in paths[:3] if created else []:
            with Image.open(path) as image:
                face = embed_image(image.convert("RGB"), embedder=embedder, max_faces=1)[0]
            FaceEmbedding.objects.create(
                person=person, model_version=face.model_version, embedding=face.embedding.tolist()
            )
        for path in paths[3:]:
            with Image.open(path) as image:
                face = embed_image(image.convert("RGB"), embedder=embedder, max_faces=1)[0]
            probes.append((e2e.aligned_crop_jpeg(path), face.embedding.tolist()))
    EdgeDevice.objects.filter(uid="bench-cam").delete()
    provisioned = device_provision(uid="bench-cam", door=door)
    key = p.load_private_key(provisioned.private_key_pem)
    model_version = embedder.model_version

    env = {**os.environ, "ACCESSCTL_LOG_LEVEL": "INFO"}  # children announce readiness at INFO
    logs = work / "logs"
    logs.mkdir()
    host, port = e2e.mqtt_address()
    with (
        e2e.child_process(e2e.worker_argv(args.workers, "bench"), env, "ready.", logs / "worker.log"),
        e2e.child_process(e2e.bridge_argv(), env, "bridge connected", logs / "bridge.log"),
    ):
        listener = e2e.CommandListener(host, port, server_public_key_b64())
        client = e2e.publisher()
        topic = p.detections_topic("bench-cam")

        def send(det: p.Detection) -> float:
            raw = p.seal(det, key)
            started = time.monotonic()
            client.publish(topic, raw, qos=1)
            return started

        def build(i: int, mode: str) -> p.Detection:
            jpeg, vector = probes[i % len(probes)]
            if mode == "crop":
                return e2e.crop_detection("bench-cam", jpeg)
            return e2e.embedding_detection("bench-cam", vector, model_version)

        # Warm-up (connections, model, caches).
        for i in range(5):
            det = build(i, "crop")
            send(det)
            listener.wait(det.detection_id, 60)

        print(f"\nlatency, one detection at a time (n={args.latency_count}), publish -> command received:")
        for mode in ("crop", "embedding"):
            samples = []
            for i in range(args.latency_count):
                det = build(i, mode)
                started = send(det)
                listener.wait(det.detection_id, 30)
                samples.append((listener.received_at[det.detection_id] - started) * 1000)
            print(
                f"  {mode:9s}  p50 {statistics.median(samples):6.1f} ms   p99 {percentile(samples, 99):6.1f} ms"
                f"   max {max(samples):6.1f} ms"
            )

        print(f"\nthroughput, embedding mode, {args.burst} detections published back to back:")
        before = AccessEvent.objects.count()
        dets = [build(i, "embedding") for i in range(args.burst)]
        sealed = [p.seal(d, key) for d in dets]
        started = time.monotonic()
        for raw in sealed:
            client.publish(topic, raw, qos=1)
        published = time.monotonic()
        last = dets[-1].detection_id
        deadline = time.monotonic() + 600
        while len([d for d in dets if d.detection_id in listener.commands]) < len(dets) and time.monotonic() < deadline:
            time.sleep(0.2)
        done = max(listener.received_at.get(d.detection_id, 0) for d in dets)
        got = sum(1 for d in dets if d.detection_id in listener.commands)
        ids = [d.detection_id for d in dets]
        events = AccessEvent.objects.filter(detection_id__in=ids)
        distinct = events.values("detection_id").distinct().count()
        print(f"  published in {published - started:.2f} s; decided in {done - started:.2f} s")
        print(f"  sustained: {got / (done - started):.0f} decisions/s (worker concurrency {args.workers})")
        print(
            f"  events: {events.count()} for {len(ids)} detections ({distinct} distinct) -> "
            f"lost {len(ids) - distinct}, duplicated {events.count() - distinct}; commands received {got}"
        )
        print(f"  all events in the log: {AccessEvent.objects.count() - before} new, last id {last}")
        listener.close()
        client.loop_stop()
    for child in children:
        child.stop()


if __name__ == "__main__":
    main()
