"""Offline allow-list: bytes per person, compile / sign+chunk / push time, revocation latency to 50 devices.

    python bench/allowlist_size.py [--sizes 1000,10000] [--templates 3] [--devices 50] [--json]

Runs on the embedded stack of ``bench/_stack.py`` (PostgreSQL with pgvector, the MQTT broker). People
are synthetic (one door, one group without schedule, ``--templates`` random unit 128-d vectors each in
the default model). For each size it measures ``devices.allowlist.allowlist_compile`` (policy + gallery
read + int8 codes), chunking and signing every chunk (``p.allowlist_chunks`` + ``p.seal``), and a full
``allowlist_push`` until a subscriber on the device's commands topic holds every chunk (sync time,
server side: broker included, device apply not). Then ``--devices`` devices at a second door hold a
list with one person, who is revoked: the time from ``devices.allowlist.revoke`` to each device's
``revoke`` command arriving at the subscriber (p50 / p99 / max). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _stack

MODEL = "sface-2021dec-int8bq"


class Subscriber:
    """Every server command on any device's commands topic: arrival time and size."""

    def __init__(self) -> None:
        from tests.broker_logins import observer_client
        from tests.devices import e2e

        self.received: list[tuple[str, int, float, bytes]] = []
        self.cond = threading.Condition()
        self.client = observer_client(f"bench-allowlist-{uuid.uuid4().hex[:6]}")
        subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: subscribed.set()
        host, port = e2e.mqtt_address()
        self.client.connect(host, port)
        self.client.subscribe("acs/v1/devices/+/commands", qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("could not subscribe to the commands topics")

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        with self.cond:
            self.received.append(
                (message.topic, len(message.payload), time.perf_counter(), bytes(message.payload[:200]))  # type: ignore[attr-defined]
            )
            self.cond.notify_all()

    def wait(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.received) >= count, timeout)

    def clear(self) -> None:
        with self.cond:
            self.received.clear()


def synthetic_people(door_name: str, count: int, templates: int, rng: np.random.Generator) -> list[int]:
    """A door in fail mode allowlist, one group, ``count`` people with ``templates`` random unit vectors each
    (in the default model, bulk-created: no signals); returns the door id, then the people ids."""
    from accessctl.models import AccessGroup, Door, Person
    from recognition.models import FaceEmbedding

    door = Door.objects.create(name=door_name, fail_mode=Door.FailMode.ALLOWLIST, timezone="Europe/Berlin")
    group = AccessGroup.objects.create(name=f"{door_name} group")
    group.doors.add(door)
    people = Person.objects.bulk_create([Person(name=f"{door_name} {i}") for i in range(count)], batch_size=2000)
    through = AccessGroup.people.through
    through.objects.bulk_create([through(accessgroup_id=group.pk, person_id=p.pk) for p in people], batch_size=5000)
    vectors = rng.normal(size=(count * templates, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rows = [
        FaceEmbedding(person_id=people[i // templates].pk, model_version=MODEL, embedding=vectors[i].tolist())
        for i in range(count * templates)
    ]
    FaceEmbedding.objects.bulk_create(rows, batch_size=2000)
    return [door.pk, *(p.pk for p in people)]


def _device(uid: str, door_id: int):
    return device_provisioned(uid, door_id)[0]


def device_provisioned(uid: str, door_id: int):
    """A device of the door, online in the synthetic people's model; and its provisioning (key, password)."""
    from accessctl.models import Door
    from devices.models import EdgeDevice
    from devices.provisioning import device_provision

    provisioned = device_provision(uid=uid, door=Door.objects.get(pk=door_id))
    device = provisioned.device
    EdgeDevice.objects.filter(pk=device.pk).update(model_version=MODEL, status=EdgeDevice.Status.ONLINE)
    device.refresh_from_db()
    return device, provisioned


def measure_size(size: int, templates: int, subscriber: Subscriber, rng: np.random.Generator) -> dict[str, float]:
    from accessctl.models import Door
    from devices import allowlist as al
    from devices.commands import server_private_key
    from faceengine import protocol as p

    door_id, *_ = synthetic_people(f"Door {size}", size, templates, rng)
    device = _device(f"bench-al-{size}", door_id)
    door = Door.objects.get(pk=door_id)
    t0 = time.perf_counter()
    compiled = al.allowlist_compile(device, door)
    compile_s = time.perf_counter() - t0
    header = p.AllowlistHeader(
        version=1, base_version=None, issued_at=float(compiled.issued_at), expires_at=float(compiled.expires_at),
        model_version=compiled.model_version, dim=compiled.dim, threshold=compiled.threshold, margin=compiled.margin,
        liveness_required=compiled.liveness_required, liveness_threshold=compiled.liveness_threshold,
        windows=compiled.windows, door=compiled.door, total_entries=len(compiled.entries),
    )  # fmt: skip
    t1 = time.perf_counter()
    chunks = p.allowlist_chunks(header, compiled.entries)
    key = server_private_key()
    sealed = [
        p.seal(
            p.Command(device_uid=device.uid, command=p.CommandKind.ALLOWLIST, command_id=p.new_id(),
                      issued_at=time.time(), reason="allowlist", data=chunk.to_dict()),
            key,
        )
        for chunk in chunks
    ]  # fmt: skip
    sign_chunk_s = time.perf_counter() - t1
    wire = sum(len(raw) for raw in sealed)
    subscriber.clear()
    t2 = time.perf_counter()
    result = al.allowlist_push(device, force=True)
    push_return_s = time.perf_counter() - t2
    if not subscriber.wait(result.chunks, timeout=120):
        raise SystemExit(f"only {len(subscriber.received)} of {result.chunks} chunks arrived")
    sync_s = max(at for _, _, at, _ in subscriber.received) - t2
    return {
        "people": size,
        "templates_per_person": templates,
        "entries": len(compiled.entries),
        "chunks": len(chunks),
        "data_bytes": result.bytes,
        "wire_bytes": wire,
        "bytes_per_person": round(result.bytes / size, 1),
        "wire_bytes_per_person": round(wire / size, 1),
        "compile_s": round(compile_s, 3),
        "sign_chunk_s": round(sign_chunk_s, 3),
        "compile_sign_chunk_s": round(compile_s + sign_chunk_s, 3),
        "push_s": round(push_return_s, 3),
        "sync_s": round(sync_s, 3),
    }


def measure_revocation(devices: int, subscriber: Subscriber, rng: np.random.Generator) -> dict[str, float]:
    from accessctl.models import Person
    from devices import allowlist as al

    door_id, person_id, *_ = synthetic_people("Revocation door", 10, 3, rng)
    fleet = [_device(f"bench-rv-{i:03d}", door_id) for i in range(devices)]
    for device in fleet:
        al.allowlist_push(device)
    uid = str(Person.objects.get(pk=person_id).uid)
    subscriber.wait(devices, timeout=60)
    time.sleep(0.5)
    subscriber.clear()
    started = time.perf_counter()
    records = al.revoke([uid], reason="suspended")
    returned_s = time.perf_counter() - started
    if not subscriber.wait(devices, timeout=60):
        raise SystemExit(f"only {len(subscriber.received)} of {devices} revocations arrived")
    latencies = sorted(at - started for _, _, at, _ in subscriber.received)
    return {
        "revocation_devices": len(records),
        "revocation_publish_s": round(returned_s, 4),
        "revocation_p50_s": round(_stack.percentile(latencies, 50), 4),
        "revocation_p99_s": round(_stack.percentile(latencies, 99), 4),
        "revocation_max_s": round(latencies[-1], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--templates", type=int, default=3)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="only the JSON object (default: also progress)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accessctl-bench-allowlist-"))
    services = _stack.services_start(work, celery="embedded")
    try:
        _stack.django_ready()
        import logging

        logging.getLogger("devices").setLevel(logging.WARNING)
        from django.db import connections

        with connections["owner"].cursor() as cursor:
            cursor.execute("TRUNCATE devices_edgedevice, accessctl_door, accessctl_accessgroup CASCADE")
        rng = np.random.default_rng(11)
        subscriber = Subscriber()
        out: dict[str, object] = {"sizes": []}
        for size in (int(s) for s in args.sizes.split(",")):
            if not args.json:
                print(f"allow-list of {size} people ...", file=sys.stderr, flush=True)
            out["sizes"].append(measure_size(size, args.templates, subscriber, rng))  # type: ignore[union-attr]
        if not args.json:
            print(f"revocation to {args.devices} devices ...", file=sys.stderr, flush=True)
        out.update(measure_revocation(args.devices, subscriber, rng))
        first = out["sizes"][0]  # type: ignore[index]
        out["allowlist_bytes_per_person"] = first["bytes_per_person"]
        for entry in out["sizes"]:  # type: ignore[union-attr]
            out[f"sync_s_{entry['people']}"] = entry["sync_s"]
        print(json.dumps(out, indent=None if args.json else 2))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
