"""Issue 19's figures in one run: the offline door, full sync, revocation, reconciliation.

    python bench/offline_door.py [--json] [--people 1000] [--visitors 20] [--sizes 1000,10000]
                                 [--devices 50] [--threads 2]

On the embedded stack of ``bench/_stack.py`` (PostgreSQL, Valkey, the MQTT broker) with the Celery
worker and the MQTT bridge as child processes:

1. **Full sync** (``sync_s_<size>``): synthetic people (``bench/allowlist_size.py``) at a door in
   fail mode ``allowlist``; one simulated device per size; from ``devices.allowlist.allowlist_push``
   (``full``, ``force``: server compile + sign + push) until the server recorded the device's
   acknowledgement (``DeviceAllowlist.acked_version``, set by the bridge from the device's heartbeat).
   A simulated device is the agent's own classes in this process (``EdgeAgent`` without camera:
   its ``EdgeLink`` over a real MQTT connection logged in as the device, its ``AllowlistStore``
   verifying, decoding and storing the list, its acknowledging heartbeat); not a process per size.
2. **Revocation** (``revocation_p50_s`` / ``p99``): ``--devices`` such simulated devices at one door
   hold a list with 10 people; one of them is suspended through the domain (``Person.save``: the
   signals revoke on commit); the time until each device's ``DeviceRevocation.acknowledged_at``.
3. **Offline door** (``offline_decision_p50_ms`` / ``p90``): a real agent process (``python -m
   edge_agent run``: camera ``inbox:DIR``, MTCNN, crop mode, fail mode ``allowlist``, the sface
   model on ``--threads`` threads, liveness off) holding a ``--people`` list compiled and pushed by
   the server code (LFW people enrolled through the server's model, the rest synthetic); the broker
   is stopped (``--min-cut`` seconds at least); ``--visitors`` LFW photos (pasted into 640x480
   frames; enrolled people and strangers) are dropped into the inbox one at a time and decided
   offline. The latency is the agent's own (face emitted -> relay), from its offline journal
   (``latency_ms``).
4. **Reconciliation** (``reconciled_exactly_once``): the broker restarts; every decision the agent
   journaled reaches the access log exactly once (by detection id) with an ``offline_*`` reason,
   and ``accessctl.audit.chain_verify`` passes.

The machine's load average is printed with the figures (a shared machine inflates them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _stack
import allowlist_size

STRANGERS = ("Jennifer_Aniston", "Serena_Williams", "Hugo_Chavez", "Ariel_Sharon", "Jean_Chretien")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class ListOnlyModel:
    """The face model of a simulated device: it names the model version the device's lists are in;
    a simulated device never sees a face, so it never embeds one."""

    def __init__(self, model_version: str) -> None:
        self.model_version = model_version

    def embed(self, candidate: object) -> np.ndarray:
        raise RuntimeError("a simulated device sees no faces")


class SimDevice:
    """The agent's own link, allow-list store and heartbeat (``EdgeAgent`` without camera) in this
    process, logged in to the broker as the provisioned device."""

    def __init__(self, uid: str, provisioned: Any, work: Path, mqtt_url: str, model_version: str) -> None:
        from devices.commands import server_public_key_b64
        from edge_agent.agent import EdgeAgent
        from edge_agent.config import EdgeConfig
        from edge_agent.relay import SimulatedRelay

        config = EdgeConfig()
        config.device.uid = uid
        config.device.server_public_key = server_public_key_b64()
        config.mqtt.url = mqtt_url
        config.mqtt.username, config.mqtt.password = uid, provisioned.mqtt_password
        config.mqtt.reconnect_min_s, config.mqtt.reconnect_max_s = 0.5, 2.0
        config.spool.dir = work / "sim" / uid
        config.door.fail_mode = "allowlist"
        config.agent.heartbeat_interval_s = 3600.0  # acknowledgements only (sent at once on a change)
        config.validate(need_keys=False)
        self.agent = EdgeAgent(
            config,
            camera=None,
            detector=None,
            relay=SimulatedRelay(),
            private_key=provisioned.private_key_pem,
            allowlist_embedder=ListOnlyModel(model_version),  # type: ignore[arg-type]
        )
        self.agent.start()

    def close(self) -> None:
        self.agent.stop()


def wait_for(predicate: Any, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def wait(predicate: Any, timeout: float, what: str, step: float = 0.02) -> None:
    if not wait_for(predicate, timeout, step):
        raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def acked_version(device_id: int) -> int | None:
    from devices.models import DeviceAllowlist

    return DeviceAllowlist.objects.filter(device_id=device_id).values_list("acked_version", flat=True).first()


def connected(devices: list[SimDevice]) -> bool:
    return all(d.agent.link.connected for d in devices)


# --- 1. full sync ---------------------------------------------------------------------------------


def measure_sync(size: int, args: argparse.Namespace, work: Path, rng: np.random.Generator) -> dict[str, Any]:
    from devices import allowlist as al
    from devices.models import DeviceAllowlist

    door_id, *_ = allowlist_size.synthetic_people(f"Sync door {size}", size, args.templates, rng)
    device, provisioned = allowlist_size.device_provisioned(f"bench-sync-{size}", door_id)
    sim = SimDevice(device.uid, provisioned, work, os.environ["MQTT_URL"], allowlist_size.MODEL)
    try:
        wait(lambda: connected([sim]), 30, "the simulated device's link")
        time.sleep(1.0)  # its first heartbeat is handled (and any automatic first push settles)
        started = dt.datetime.now(dt.UTC)
        t0 = time.perf_counter()
        result = al.allowlist_push(device, full=True, force=True)
        push_s = time.perf_counter() - t0
        if result.refused:
            raise SystemExit(f"the list of {size} was refused: {result.refused}")
        wait(lambda: (acked_version(device.pk) or 0) >= result.version, 300, f"the acknowledgement of {size}")
        state = DeviceAllowlist.objects.get(device=device)
        return {
            "people": size,
            "templates_per_person": args.templates,
            "version": result.version,
            "chunks": result.chunks,
            "bytes": result.bytes,
            "bytes_per_person": round(result.bytes / size, 1),
            "compile_s": round(result.timings.get("compile_s", float("nan")), 3),
            "push_return_s": round(push_s, 3),
            "acked_entries": state.acked_entries,
            "sync_s": round((state.acked_at - started).total_seconds(), 3),
        }
    finally:
        sim.close()


# --- 2. revocation --------------------------------------------------------------------------------


def measure_revocation(args: argparse.Namespace, work: Path, rng: np.random.Generator) -> dict[str, Any]:
    from django.db import transaction

    from accessctl.models import Person
    from devices import allowlist as al
    from devices.models import DeviceRevocation

    door_id, person_id, *_ = allowlist_size.synthetic_people("Revocation door", 10, args.templates, rng)
    fleet = [allowlist_size.device_provisioned(f"bench-rv-{i:03d}", door_id) for i in range(args.devices)]
    sims = [SimDevice(d.uid, prov, work, os.environ["MQTT_URL"], allowlist_size.MODEL) for d, prov in fleet]
    try:
        wait(lambda: connected(sims), 60, "the simulated devices' links")
        versions = {device.pk: al.allowlist_push(device, full=True, force=True).version for device, _ in fleet}
        wait(lambda: all((acked_version(pk) or 0) >= v for pk, v in versions.items()), 120, "every list acknowledged")
        held = sum(1 for sim in sims if sim.agent.allowlist.valid() is not None and len(sim.agent.allowlist.valid()))
        person = Person.objects.get(pk=person_id)
        started = dt.datetime.now(dt.UTC)
        with transaction.atomic():  # the domain's edit; the signals revoke on commit
            person.status = Person.Status.SUSPENDED
            person.save()
        records = DeviceRevocation.objects.filter(device_id__in=list(versions), refs__contains=[str(person.uid)])
        wait(
            lambda: records.filter(acknowledged_at__isnull=False).count() == len(fleet),
            60,
            f"{len(fleet)} revocations acknowledged",
            step=0.05,
        )
        latencies = sorted((at - started).total_seconds() for at in records.values_list("acknowledged_at", flat=True))
        ref = str(person.uid)

        def refused(sim: SimDevice) -> bool:  # revoked, or dropped by a newer version (the recompile)
            held = sim.agent.allowlist.valid()
            return ref in sim.agent.allowlist.revoked or held is None or ref not in held.entries

        refused_on_devices = sum(1 for sim in sims if refused(sim))
        return {
            "revocation_devices": len(fleet),
            "revocation_devices_holding_list": held,
            "revocation_records": len(latencies),
            "revocation_person_refused_on_devices": refused_on_devices,
            "revocation_p50_s": round(_stack.percentile(latencies, 50), 3),
            "revocation_p99_s": round(_stack.percentile(latencies, 99), 3),
            "revocation_max_s": round(latencies[-1], 3),
        }
    finally:
        for sim in sims:
            sim.close()


# --- 3. the offline door (agent process) and 4. reconciliation ------------------------------------


def enrol_visitors(args: argparse.Namespace, door_id: int) -> tuple[list[Path], list[Path]]:
    """Enrol LFW people (3 photos each, through the server's model) in the door's group; their other
    photos are the visitors, with strangers' photos mixed in. Returns (members' photos, strangers')."""
    from PIL import Image

    from accessctl.models import AccessGroup, Person
    from faceengine.pipeline import embed_image
    from recognition.engine import active_embedder
    from recognition.models import FaceEmbedding
    from tests import faces

    if not faces.lfw_available():
        raise SystemExit(f"needs LFW photos in {faces.LFW_DIR}")
    group = AccessGroup.objects.get(doors__id=door_id)
    embedder = active_embedder()
    per_person = max(1, -(-args.visitors // len(faces.PEOPLE)))
    members: list[Path] = []
    for name in faces.PEOPLE:
        person = Person.objects.create(name=name.replace("_", " "))
        paths = faces.face_paths(name, 3 + per_person)
        for path in paths[:3]:
            with Image.open(path) as image:
                face = embed_image(image.convert("RGB"), embedder=embedder, max_faces=1)[0]
            FaceEmbedding.objects.create(
                person=person, model_version=face.model_version, embedding=face.embedding.tolist()
            )
        group.people.add(person)
        members += paths[3:]
    strangers = []
    for name in STRANGERS:
        with contextlib.suppress(Exception):
            strangers += faces.face_paths(name, 1)
    return members, strangers


def agent_config(work: Path, uid: str, provisioned: Any, port: int, threads: int) -> Path:
    from devices.commands import server_public_key_b64

    key = work / "agent" / "device.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(provisioned.private_key_pem)
    os.chmod(key, 0o600)
    config = work / "agent" / "edge.toml"
    config.write_text(
        f"""
[device]
uid = "{uid}"
private_key_path = "{key}"
server_public_key = "{server_public_key_b64()}"
[mqtt]
url = "mqtt://127.0.0.1:{port}"
username = "{uid}"
password = "{provisioned.mqtt_password}"
reconnect_min_s = 1
reconnect_max_s = 2
[camera]
source = "inbox:{work / "agent" / "inbox"}"
max_fps = 10
[detection]
mode = "crop"
threads = {threads}
[liveness]
enabled = false
[spool]
dir = "{work / "agent" / "spool"}"
[door]
fail_mode = "allowlist"
offline_grace_s = 1.0
[agent]
heartbeat_interval_s = 5
"""
    )
    return config


def journal(work: Path) -> list[dict[str, Any]]:
    path = work / "agent" / "spool" / "offline-decisions.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def frame_drop(photo: Path, inbox: Path, index: int) -> None:
    """The photo pasted into an empty 640x480 scene, renamed into the inbox (never read half-written)."""
    from PIL import Image

    scene = Image.new("RGB", (640, 480), (96, 96, 96))
    with Image.open(photo) as face:
        scene.paste(face.convert("RGB"), ((640 - face.width) // 2, (480 - face.height) // 2))
    tmp = inbox.parent / f".{index:04d}.jpg"
    scene.save(tmp, quality=92)
    tmp.replace(inbox / f"{index:04d}.jpg")


def measure_door(args: argparse.Namespace, services: _stack.Services, rng: np.random.Generator) -> dict[str, Any]:
    from accessctl.audit import chain_verify
    from devices import allowlist as al
    from devices.models import DeviceAllowlist
    from recognition.tasks import inbound_sweep
    from tests import faces
    from tests.devices import e2e

    work = services.work
    door_id, *_ = allowlist_size.synthetic_people("Offline door", args.people - len(faces.PEOPLE), args.templates, rng)
    members, strangers = enrol_visitors(args, door_id)
    device, provisioned = allowlist_size.device_provisioned("bench-door-000", door_id)
    _host, port = e2e.mqtt_address()
    config = agent_config(work, device.uid, provisioned, port, args.threads)
    inbox = work / "agent" / "inbox"
    inbox.mkdir(parents=True)
    log = work / "logs" / "agent.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACS_EDGE_")}
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(config)],
            cwd=_stack.ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait(lambda: "connected to " in log.read_text(errors="replace"), 180, "the agent process's link", step=0.5)
        result = al.allowlist_push(device, full=True, force=True)
        if result.refused:
            raise SystemExit(f"the door's list was refused: {result.refused}")
        wait(lambda: (acked_version(device.pk) or 0) >= result.version, 120, "the agent's acknowledgement", step=0.2)
        state = DeviceAllowlist.objects.get(device=device)
        load_before = load()

        # the cut: the broker stops; the door decides alone
        broker = next(c for c in services.children if c.name == "mqtt-broker")
        broker.stop()
        cut_at = time.monotonic()
        wait(lambda: "deciding alone" in log.read_text(errors="replace"), 60, "the agent going offline", step=0.2)
        visitors = [(photo, True) for photo in members[: args.visitors - len(strangers[:2])]]
        visitors += [(photo, False) for photo in strangers[:2]]
        outcomes: list[dict[str, Any]] = []
        for index, (photo, member) in enumerate(visitors):
            before = len(journal(work))
            frame_drop(photo, inbox, index)
            wait(lambda b=before: len(journal(work)) > b, 60, f"visitor {index}'s decision", step=0.05)
            time.sleep(0.3)  # the track of this visitor has ended (empty scene) before the next one
            outcomes.append({"member": member, "decisions": journal(work)[before:]})
        lines = journal(work)
        latencies = [line["latency_ms"] for line in lines if "latency_ms" in line]
        load_after = load()

        # the link returns: every decision journaled reaches the log once
        time.sleep(max(0.0, args.min_cut - (time.monotonic() - cut_at)))  # an outage of realistic length
        bridge_log = work / "logs" / "bridge0.log"
        bridge_connects = bridge_log.read_text(errors="replace").count("bridge connected")
        cut_s = time.monotonic() - cut_at
        restarted = _stack.broker_start(work, port=port)
        services.children[services.children.index(broker)] = restarted
        started = time.monotonic()
        ids = [line["detection_id"] for line in lines]
        marks: dict[str, float] = {}

        def reconciled() -> bool:
            connects = bridge_log.read_text(errors="replace").count("bridge connected")
            if "bridge" not in marks and connects > bridge_connects:
                marks["bridge"] = time.monotonic() - started
            inbound_sweep()  # what Celery beat runs every 15 s
            return _stack.events_check(ids)["with_event"] == len(ids)

        # not fatal: what did not arrive within the wait is reported
        done = wait_for(reconciled, args.reconcile_wait, step=1.0)
        reconcile_s = time.monotonic() - started if done else None
        time.sleep(3.0)  # anything sent twice would land by now
        check = _stack.events_check(ids)
        reasons = _stack.reasons(ids)
        chain = chain_verify()
        offline_reasons = all(str(reason).startswith("offline_") for reason in reasons.elements())
        first_of_member = [o["decisions"][0] for o in outcomes if o["member"] and o["decisions"]]
        first_of_stranger = [o["decisions"][0] for o in outcomes if not o["member"] and o["decisions"]]
        return {
            "door_list_people": state.entry_count,
            "door_list_version": state.version,
            "door_list_bytes": state.bytes,
            "offline_visitors": len(visitors),
            "offline_decisions": len(lines),
            "offline_decisions_with_latency": len(latencies),
            "offline_members_opened": sum(1 for d in first_of_member if d["action"] == "open"),
            "offline_members": len(first_of_member),
            "offline_strangers_denied": sum(1 for d in first_of_stranger if d["action"] != "open"),
            "offline_strangers": len(first_of_stranger),
            "offline_decision_p50_ms": round(_stack.percentile(latencies, 50), 1),
            "offline_decision_p90_ms": round(_stack.percentile(latencies, 90), 1),
            "offline_decision_max_ms": round(max(latencies), 1) if latencies else None,
            "offline_threads": args.threads,
            "load_during_offline": [load_before, load_after],
            "cut_s": round(cut_s, 1),
            "bridge_reconnected_after_s": round(marks["bridge"], 1) if "bridge" in marks else None,
            "agent_gave_up": sum(
                1 for i in ids if f"no answer for detection {i} after" in log.read_text(errors="replace")
            ),
            "reconcile_s": round(reconcile_s, 1) if reconcile_s is not None else None,
            "reconciled_events": check["with_event"],
            "reconciled_lost": check["lost"],
            "reconciled_duplicated": check["duplicated"],
            "reconciled_reasons": dict(reasons),
            "chain_ok": chain.ok,
            "reconciled_exactly_once": bool(
                lines and check["lost"] == 0 and check["duplicated"] == 0 and offline_reasons and chain.ok
            ),
        }
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1000, help="people in the offline door's list")
    parser.add_argument("--visitors", type=int, default=20, help="visitors decided offline (2 of them strangers)")
    parser.add_argument("--sizes", default="1000,10000", help="full sync sizes")
    parser.add_argument("--templates", type=int, default=3)
    parser.add_argument("--devices", type=int, default=50, help="devices a revocation reaches")
    parser.add_argument("--threads", type=int, default=2, help="the agent's model threads")
    parser.add_argument("--min-cut", type=float, default=20.0, help="seconds the broker stays down at least")
    parser.add_argument("--reconcile-wait", type=float, default=90.0, help="seconds to wait for the access log")
    parser.add_argument("--json", action="store_true", help="only the JSON object (default: also progress)")
    args = parser.parse_args()

    def progress(text: str) -> None:
        if not args.json:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="accessctl-bench-offline-door-"))
    services = _stack.services_start(work, db_name="accessctl_bench_offline")
    out: dict[str, Any] = {"load_start": load(), "cpus": os.cpu_count()}
    try:
        _stack.django_ready()
        import logging

        logging.getLogger("devices").setLevel(logging.WARNING)
        logging.getLogger("edge_agent").setLevel(logging.ERROR)
        from django.db import connections

        with connections["owner"].cursor() as cursor:
            cursor.execute("TRUNCATE devices_edgedevice, accessctl_door, accessctl_accessgroup CASCADE")
        rng = np.random.default_rng(19)
        with _stack.children(work, run_id=services.run_id):
            out["sizes"] = []
            for size in (int(s) for s in args.sizes.split(",") if s):
                progress(f"full sync of {size} people ...")
                out["sizes"].append(measure_sync(size, args, work, rng))
                out[f"sync_s_{size}"] = out["sizes"][-1]["sync_s"]
            out["allowlist_bytes_per_person"] = out["sizes"][0]["bytes_per_person"] if out["sizes"] else None
            out["load_after_sync"] = load()
            progress(f"revocation to {args.devices} devices ...")
            out.update(measure_revocation(args, work, rng))
            out["load_after_revocation"] = load()
            progress(f"offline door: {args.people}-person list, {args.visitors} visitors, broker cut ...")
            out.update(measure_door(args, services, rng))
        out["load_end"] = load()
        print(json.dumps(out, indent=None if args.json else 2))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
