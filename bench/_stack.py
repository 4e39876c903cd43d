"""Shared setup of the bench scripts: services, database, enrolled people, simulated devices, children.

Postgres is always the embedded one (pgvector); the MQTT broker and the Celery broker are the embedded
ones or the machine's real Mosquitto / Redis / RabbitMQ. Call :func:`services_start` before anything
imports Django settings, then :func:`django_ready`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from accessctl.project import embedded  # noqa: E402
from tests.waiting import wait_until  # noqa: E402, F401  (_stack.wait_until in the benches)

logger = logging.getLogger(__name__)

MOSQUITTO = ("127.0.0.1", 1883)
REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def port_open(address: tuple[str, int]) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(address, timeout=1.0):
        return True
    return False


@dataclass
class Services:
    """What :func:`services_start` started (stopped by :meth:`stop`) and where everything is."""

    work: Path
    children: list[embedded.ChildService]
    mqtt: str
    celery: str
    run_id: str

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def services_start(
    work: Path,
    *,
    mqtt: str = "embedded",
    celery: str = "embedded",
    db_name: str = "accessctl_bench",
    redis_db: int = 13,
) -> Services:
    """Start the embedded services asked for and point the environment (settings) at all of them."""
    for name, address, wanted in (("mosquitto", MOSQUITTO, mqtt == "mosquitto"),
                                  ("redis", REDIS, celery == "redis"),
                                  ("rabbitmq", RABBITMQ, celery == "rabbitmq")):  # fmt: skip
        if wanted and not port_open(address):
            raise SystemExit(f"{name} is not listening on {address[0]}:{address[1]}")
    run_id = uuid.uuid4().hex[:6]
    pg = embedded.start_postgres(ROOT / "var" / "bench" / "pg")
    pg.ensure_database(db_name)
    children: list[embedded.ChildService] = []
    env = {
        "ACCESSCTL_PGDATA": str(pg.pgdata),
        "ACCESSCTL_DB_NAME": db_name,
        "ACCESSCTL_VAR_DIR": str(work),
        "MQTT_CLIENT_ID": f"accessctl-bench-bridge-{run_id}",  # server client ids start with accessctl-
        "ACCESSCTL_LOG_LEVEL": "WARNING",
        "DJANGO_SETTINGS_MODULE": "accessctl.project.settings",
    }
    if celery == "redis":
        env["REDIS_URL"] = f"redis://{REDIS[0]}:{REDIS[1]}/{redis_db}"
    else:
        password = embedded.secret_file_ensure(work / "valkey-password")
        valkey = embedded.start_valkey(work / "valkey", password=password)
        children.append(valkey)
        env["REDIS_URL"] = embedded.valkey_url(host=valkey.host, port=valkey.port, password=password)
    if celery == "rabbitmq":
        env["CELERY_BROKER_URL"] = f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}//"
    if mqtt == "mosquitto":
        env["MQTT_URL"] = f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"
        # The machine's Mosquitto (a bench of speed, not of access control) has no password file: it
        # checks no login, the observer's included (tests/broker_logins.py); a run names its own.
        from tests.broker_logins import OBSERVER_ENV, OBSERVER_USERNAME

        env.setdefault(OBSERVER_ENV, os.environ.get(OBSERVER_ENV) or f"{OBSERVER_USERNAME}:not-checked")
    else:
        broker = broker_start(work)
        children.append(broker)
        env["MQTT_URL"] = f"mqtt://127.0.0.1:{broker.port}"
    os.environ.update(env)
    return Services(work=work, children=children, mqtt=mqtt, celery=celery, run_id=run_id)


def broker_start(work: Path, port: int | None = None) -> embedded.ChildService:
    """The embedded broker of a bench run: the server and the devices provisioned into ``work``
    (``ACCESSCTL_VAR_DIR``), plus the test-only observer that collects commands (tests/broker_logins)."""
    from tests.broker_logins import OBSERVER_ENV, observer_identity_write

    if OBSERVER_ENV not in os.environ:
        os.environ[OBSERVER_ENV] = ":".join(observer_identity_write(work / "mqtt-observer"))
    return embedded.start_mqtt_broker(
        work / "mqtt", port=port, auth_dir=work / "mqtt-auth", extra_identities_dir=work / "mqtt-observer"
    )


def django_ready() -> None:
    """Set Django up, migrate the bench database and empty the tables a run counts."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", verbosity=0)
    from devices.broker_auth import server_identity_write

    server_identity_write()  # the bridge may log in to the embedded broker
    with connections["owner"].cursor() as cursor:  # the application's role may not truncate the log
        cursor.execute(  # a clean slate: no events, people or gallery left by earlier runs
            "TRUNCATE accessctl_accessevent, recognition_inbounddetection, accessctl_alarm, recognition_faceembedding, "
            "recognition_enrollmentphoto, accessctl_person CASCADE"
        )


@dataclass
class Probe:
    jpeg: bytes
    vector: list[float]


@dataclass
class Site:
    door_id: int
    model_version: str
    probes: list[Probe]
    keys: dict[str, Any]  # device uid -> Ed25519 private key
    passwords: dict[str, str]  # device uid -> broker password


def site_setup(*, devices: int, uid_prefix: str, people: int = 4) -> Site:
    """Enrol ``people`` LFW people at one door and provision ``devices`` devices, each with its own key."""
    from PIL import Image

    from accessctl.models import AccessGroup, Door, Person
    from devices.models import EdgeDevice
    from devices.provisioning import device_provision
    from faceengine import protocol as p
    from faceengine.pipeline import embed_image
    from recognition.engine import active_embedder
    from recognition.models import FaceEmbedding
    from tests import faces
    from tests.devices import e2e

    if not faces.lfw_available():
        raise SystemExit(f"needs LFW photos in {faces.LFW_DIR}")
    door, _ = Door.objects.get_or_create(name="Bench door")
    group, _ = AccessGroup.objects.get_or_create(name="Bench group")
    group.doors.add(door)
    embedder = active_embedder()
    probes: list[Probe] = []
    for name in faces.PEOPLE[:people]:
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
            probes.append(Probe(jpeg=e2e.aligned_crop_jpeg(path), vector=face.embedding.tolist()))
    keys: dict[str, Any] = {}
    passwords: dict[str, str] = {}
    EdgeDevice.objects.filter(uid__startswith=uid_prefix).delete()
    for i in range(devices):
        uid = f"{uid_prefix}{i:03d}"
        provisioned = device_provision(uid=uid, door=door)  # the broker admits it from now on
        keys[uid] = p.load_private_key(provisioned.private_key_pem)
        passwords[uid] = provisioned.mqtt_password
    return Site(door_id=door.pk, model_version=embedder.model_version, probes=probes, keys=keys, passwords=passwords)


def detection_build(site: Site, uid: str, i: int, mode: str, *, track_probes: int = 1) -> Any:
    """Detection ``i`` (a probe of the site) in ``mode``; with ``track_probes`` > 1 (at most 3) it
    carries the person's other probes as the other faces of its track (``track_probes`` on the wire)."""
    import dataclasses

    from faceengine import protocol as p
    from tests.devices import e2e

    n = i % len(site.probes)
    probe = site.probes[n]
    # The probes come in threes per person (site_setup): the others of the same person are its track.
    block = list(range(n - n % 3, min(n - n % 3 + 3, len(site.probes))))
    others = [site.probes[j] for j in block if j != n][: track_probes - 1]
    if mode == "crop":
        detection = e2e.crop_detection(uid, probe.jpeg)
        extra = tuple(p.TrackProbe(quality={"face_px": 120.0}, crop_jpeg=o.jpeg) for o in others)
    else:
        detection = e2e.embedding_detection(uid, probe.vector, site.model_version)
        extra = tuple(p.TrackProbe.with_embedding(values=o.vector, encoding="f32", quality={}) for o in others)
    return dataclasses.replace(detection, track_probes=extra) if extra else detection


@dataclass
class Commands:
    """Collects the signed commands sent to a set of devices; counts duplicates; ignores other traffic."""

    host: str
    port: int
    server_public_key: str
    uids: set[str]
    received_at: dict[str, float] = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    foreign: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        from tests.broker_logins import observer_client

        self.client = observer_client(f"bench-listener-{uuid.uuid4().hex[:8]}")  # reads every device's commands
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe("acs/v1/devices/+/commands", qos=1)
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, client: Any, userdata: object, message: Any) -> None:
        from faceengine import protocol as p

        uid = message.topic.split("/")[3] if message.topic.count("/") == 4 else ""
        if uid not in self.uids:
            self.foreign += 1
            return
        try:
            command = p.open_message(message.topic, message.payload, self.server_public_key)
        except p.ProtocolError:
            logger.warning("command on %s does not verify", message.topic)
            return
        key = getattr(command, "detection_id", None) or command.command_id
        with self._lock:
            self.counts[key] += 1
            self.received_at.setdefault(key, time.monotonic())

    def have(self, ids: list[str]) -> int:
        with self._lock:
            return sum(1 for i in ids if i in self.received_at)

    def wait_all(self, ids: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.have(ids) == len(ids):
                return True
            time.sleep(0.2)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def device_clients(site: Site, uids: list[str], host: str, port: int) -> dict[str, Any]:
    """One MQTT connection per simulated device, as real door devices have (each logs in as itself)."""
    from tests.broker_logins import device_client

    clients = {}
    for uid in uids:
        client = device_client(uid, site.passwords[uid])
        client.max_inflight_messages_set(100)
        client.connect(host, port)
        client.loop_start()
        clients[uid] = client
    return clients


def reasons(ids: list[str]) -> Counter:
    """Reason codes of the decision events of ``ids``."""
    from accessctl.models import AccessEvent

    return Counter(AccessEvent.objects.filter(detection_id__in=ids).values_list("reason", flat=True))


def events_check(ids: list[str]) -> dict[str, int]:
    """Lost / duplicated accounting for ``ids``: events per detection, leftovers, unexpected replays."""
    from django.db.models import Count

    from accessctl.models import AccessEvent
    from recognition.models import InboundDetection

    per_id = dict(AccessEvent.objects.filter(detection_id__in=ids).values_list("detection_id").annotate(n=Count("id")))
    return {
        "detections": len(ids),
        "with_event": len(per_id),
        "lost": len(ids) - len(per_id),
        "duplicated": sum(n - 1 for n in per_id.values() if n > 1),
        "still_staged": InboundDetection.objects.filter(detection_id__in=ids).count(),
    }


@contextlib.contextmanager
def children(
    work: Path, *, workers: int = 1, bridges: int = 1, shared_group: str | None = None, run_id: str = ""
) -> Iterator[list[Any]]:
    """The Celery worker and ``bridges`` MQTT bridges as child processes (ready when the block starts)."""
    from tests.devices import e2e

    env = {**os.environ, "ACCESSCTL_LOG_LEVEL": "INFO"}  # children announce readiness at INFO
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        procs = [stack.enter_context(e2e.child_process(e2e.worker_argv(workers, "bench"), env, "ready.",
                                                       logs / "worker.log"))]  # fmt: skip
        for i in range(bridges):
            argv = [*e2e.bridge_argv(), "--client-id", f"accessctl-bench-bridge-{run_id}-{i}"]
            if shared_group:
                argv += ["--shared-group", shared_group]
            procs.append(stack.enter_context(e2e.child_process(argv, env, "bridge connected", logs / f"bridge{i}.log")))
        yield procs


def _process_role(proc: Any) -> str | None:
    """Which part of the stack a process is, from its command line (None: not ours)."""
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except Exception:
        return None
    if name.startswith("postgres") or "/postgres" in cmd:
        return "postgres"
    if "valkey" in cmd or "redis-server" in cmd:
        return "valkey"
    if "celery" in cmd:
        if " -Q gallery" in cmd or " -Q shadow" in cmd:  # a background worker (main and pool alike)
            return "gallery worker" if " -Q gallery" in cmd else "shadow worker"
        try:
            parent_is_celery = "celery" in " ".join(proc.parent().cmdline())
        except Exception:
            parent_is_celery = False
        return "celery pool" if parent_is_celery else "celery main"
    if "mqtt_bridge" in cmd:
        return "bridge"
    if "amqtt" in cmd or "embedded_mqtt" in cmd or "mqtt_broker" in cmd or name == "mosquitto":
        return "mqtt broker"
    if name == "beam.smp" and "rabbit" in cmd:
        return "rabbitmq"
    return None


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds (user + system) so far per stack role, and ``bench client`` for this process."""
    import psutil

    out: Counter = Counter()
    me = psutil.Process()
    out["bench client"] = sum(me.cpu_times()[:2])
    for proc in psutil.process_iter():
        role = _process_role(proc)
        if role is None:
            continue
        with contextlib.suppress(psutil.Error):
            out[role] += sum(proc.cpu_times()[:2])
    return dict(out)


def cpu_report(before: dict[str, float], after: dict[str, float], count: int) -> str:
    """CPU milliseconds per item per role between two snapshots, busiest first."""
    used = {role: after.get(role, 0.0) - before.get(role, 0.0) for role in after}
    total = sum(used.values())
    parts = [f"{role} {1000 * sec / count:.1f}" for role, sec in sorted(used.items(), key=lambda kv: -kv[1])]
    return f"CPU ms per decision: total {1000 * total / count:.1f} = " + ", ".join(parts)
