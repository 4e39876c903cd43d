"""How long a /metrics scrape takes with a realistic registry, and what the metrics cost a decision.

Starts the embedded PostgreSQL (var/bench/pg), Valkey and MQTT broker (``bench/_stack.py``), then:

1. Scrape: ``--devices`` devices (online, with heartbeats), a gallery of ``--gallery`` embeddings,
   staged detections, open alarms, bridge and worker heartbeats, and metric files written by
   ``--processes`` child processes that stay alive during the scrapes (every label of every counter
   and histogram, as a site that has run a while has: live processes' files are read on every
   scrape); then ``--scrapes`` GETs of /metrics through the Django stack (token auth, middleware).
   The first scrape counts the gallery; later ones use its cached count. Then the children end
   (their files go into the archive) and the scrape is timed again (``after_exit``).
2. Cost per decision: the whole in-process detection path, signed embedding-mode detection ->
   ``devices.ingest.detection_ingest`` (verify, stage) -> ``recognition.detections.detections_decide``
   (gallery search, policy, event), one detection at a time, in alternating blocks with the metric
   calls on and replaced by no-ops; CPU time of this process (``time.process_time``: the bridge's and
   the worker's Python work, without PostgreSQL's) per detection, and the overhead in percent.

Prints one JSON object. Usage: .venv/bin/python bench/metrics_scrape.py [--devices 50] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _stack

SFACE = "sface-2021dec-int8bq"
TOKEN = "bench-metrics-token-0123456789"  # noqa: S105 (a bench-only token)

_CHILD = """
import django; django.setup()
from accessctl import metrics
from accessctl.codes import Decision, Reason
from accessctl.models import Alarm
for decision in Decision:
    for reason in Reason:
        metrics.DECISIONS.labels(str(decision), str(reason)).inc()
for mode in metrics.MODES:
    metrics.DECISION_LATENCY.labels(mode).observe(0.08)
for step in ("wait", "stage", "enqueue"):
    metrics.BRIDGE_LAG.labels(step).observe(0.003)
metrics.GALLERY_SEARCH.labels("sface-2021dec-int8bq").observe(0.004)
for outcome in ("succeeded", "failed", "retry", "refused"):
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
for kind in Alarm.Kind:
    metrics.ALARMS_RAISED.labels(str(kind)).inc()
import sys
print("ready", flush=True)
sys.stdin.read()  # alive (its files cannot be compacted) until the bench closes its stdin
"""


def _vectors(count: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, 128)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def site_fill(devices: int, gallery: int) -> dict[str, Any]:
    """Devices with heartbeats, a gallery, a few staged detections and open alarms, heartbeats."""
    import uuid

    from django.utils import timezone

    from accessctl.heartbeats import heartbeat_write
    from accessctl.models import AccessGroup, Alarm, Door, Person
    from devices.models import EdgeDevice
    from devices.provisioning import device_provision
    from faceengine import protocol as p
    from recognition.models import FaceEmbedding, InboundDetection

    door, _ = Door.objects.get_or_create(name="Bench door")
    group, _ = AccessGroup.objects.get_or_create(name="Bench group")
    group.doors.add(door)
    EdgeDevice.objects.filter(uid__startswith="scrape-cam-").delete()
    now = timezone.now()
    EdgeDevice.objects.bulk_create(
        EdgeDevice(
            uid=f"scrape-cam-{i:03d}", door=door, public_key="x", status=EdgeDevice.Status.ONLINE, last_seen=now,
            agent_version="1.0.0", model_version=SFACE,
            last_heartbeat={"spool_depth": i % 3, "camera_fps": 15.0, "agent_version": "1.0.0"},
        )
        for i in range(devices)
    )  # fmt: skip
    people = Person.objects.bulk_create(Person(name=f"Bench person {i}") for i in range(max(1, gallery // 4)))
    group.people.add(*people)
    vectors = _vectors(gallery, seed=1)
    FaceEmbedding.objects.bulk_create(
        (
            FaceEmbedding(person=people[i // 4], model_version=SFACE, embedding=vectors[i].tolist())
            for i in range(gallery)
        ),
        batch_size=2000,
    )
    InboundDetection.objects.bulk_create(
        InboundDetection(detection_id=uuid.uuid4(), device_uid="scrape-cam-000", payload={}) for _ in range(5)
    )
    for kind in list(Alarm.Kind)[:3]:
        Alarm.objects.create(kind=kind, details={})
    heartbeat_write(kind="bridge", name="bench-bridge", data={"connected": True, "silent_s": 0.5})
    heartbeat_write(kind="worker", name="bench-worker@host", data={})
    # The device of the decision bench: a real key, its door in the group.
    uid = "scrape-decider"
    EdgeDevice.objects.filter(uid=uid).delete()
    provisioned = device_provision(uid=uid, door=door)
    return {"uid": uid, "key": p.load_private_key(provisioned.private_key_pem), "probe": vectors[0].tolist()}


def scrape_measure(scrapes: int) -> dict[str, Any]:
    from django.test import Client

    from accessctl.metrics import metrics_exposition

    client = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}", REMOTE_ADDR="10.9.8.7", HTTP_HOST="localhost")
    assert client.get("/healthz").status_code == 200  # the process's first request loads the URL configuration
    timings = []
    cpu = []  # this process's CPU per scrape: less skewed than wall time by other work on the machine
    direct = []
    size = series = 0
    first_ms = 0.0
    for i in range(scrapes + 1):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get("/metrics")
        took = (time.perf_counter() - started) * 1000
        took_cpu = (time.process_time() - started_cpu) * 1000
        assert response.status_code == 200, response.status_code
        if i == 0:
            first_ms = took  # counts the gallery
            size = len(response.content)
            series = sum(1 for line in response.content.splitlines() if line and not line.startswith(b"#"))
        else:
            timings.append(took)
            cpu.append(took_cpu)
            started = time.perf_counter()
            metrics_exposition()
            direct.append((time.perf_counter() - started) * 1000)
    return {
        "first_scrape_ms": round(first_ms, 2),
        "scrape_ms_p50": round(statistics.median(timings), 2),
        "scrape_ms_p99": round(_stack.percentile(timings, 99), 2),
        "scrape_ms_max": round(max(timings), 2),
        "scrape_cpu_ms_p50": round(statistics.median(cpu), 2),
        "scrape_cpu_ms_p99": round(_stack.percentile(cpu, 99), 2),
        "exposition_only_ms_p50": round(statistics.median(direct), 2),
        "exposition_only_ms_p99": round(_stack.percentile(direct, 99), 2),
        "exposition_bytes": size,
        "samples": series,
    }


def scrape_parts(rounds: int = 60) -> dict[str, Any]:
    """Where a scrape's time goes: each registered collector, and the processes' files read by
    ours (accessctl.metrics._ProcessFiles) and by prometheus_client's MultiProcessCollector,
    alternating in this process (wall and CPU milliseconds, p50)."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.registry import CollectorRegistry

    from accessctl import metrics

    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]

    def timed(call: Any) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000

    def text_of(collector: Any) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        generate_latest(registry)

    parts: dict[str, list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for name, collect in sorted(metrics._collectors.items()):
            parts.setdefault(f"collector {name}", []).append(timed(lambda c=collect: list(c())))
        parts.setdefault("files: ours", []).append(timed(lambda: list(metrics._ProcessFiles(Path(folder)).collect())))
        parts.setdefault("files: prometheus_client", []).append(
            timed(lambda: list(MultiProcessCollector(None, path=folder).collect()))
        )
        parts.setdefault("files: ours, as text", []).append(timed(lambda: text_of(metrics._ProcessFiles(Path(folder)))))
    return {
        name: {
            "ms_p50": round(statistics.median(w for w, _ in v), 2),
            "cpu_ms_p50": round(statistics.median(c for _, c in v), 2),
        }
        for name, v in parts.items()
    }


def decision_cost(site: dict[str, Any], blocks: int, per_block: int) -> dict[str, Any]:
    """CPU per detection with the metrics on and off (no-op stand-ins), blocks alternating."""
    import devices.ingest as ingest
    import recognition.detections as detections
    import recognition.gallery as gallery
    from accessctl import decisions, metrics
    from faceengine import protocol as p
    from recognition.detections import detections_decide
    from tests.devices import e2e

    staged: list[str] = []
    ingest.decision_enqueue = lambda detection_id, queue=None: staged.append(str(detection_id))  # no broker
    decisions._door_command = lambda event, door, **_: None  # no MQTT command

    class _Off:
        def labels(self, *_: object) -> _Off:
            return self

        def observe(self, *_: object) -> None:
            pass

        def inc(self, *_: object) -> None:
            pass

    real = {
        "decisions_count": metrics.decisions_count,
        "latency": detections._latency_observe,
        "search": gallery.GALLERY_SEARCH,
        "lag": ingest.BRIDGE_LAG,
    }

    def switch(on: bool) -> None:
        metrics.decisions_count = real["decisions_count"] if on else (lambda verdicts: None)
        detections._latency_observe = real["latency"] if on else (lambda prepared: None)
        gallery.GALLERY_SEARCH = real["search"] if on else _Off()
        ingest.BRIDGE_LAG = real["lag"] if on else _Off()

    def one(on: bool) -> None:
        detection = e2e.embedding_detection(site["uid"], site["probe"], SFACE)
        assert ingest.detection_ingest(device_uid=site["uid"], raw=p.seal(detection, site["key"])) == "staged"
        if on:  # what the bridge's other threads record for it: the wait for a thread, the enqueue
            metrics.BRIDGE_LAG.labels("wait").observe(0.0005)
            metrics.BRIDGE_LAG.labels("enqueue").observe(0.002)
        assert detections_decide([staged.pop()]) == ["matched"]

    for _ in range(50):  # warm-up: connections, plans, caches
        one(True)
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for i in range(blocks * per_block * 2):  # on and off alternate detection by detection: drift cancels
        on = i % 2 == 0
        switch(on)
        started = time.process_time()
        one(on)
        cpu[on].append((time.process_time() - started) * 1000)
    switch(True)
    with_ms, without_ms = statistics.fmean(cpu[True]), statistics.fmean(cpu[False])
    # The difference of two noisy means: its standard error, to say whether it means anything.
    noise = (statistics.variance(cpu[True]) / len(cpu[True]) + statistics.variance(cpu[False]) / len(cpu[False])) ** 0.5
    calls_us = _calls_per_decision_us()
    return {
        "detections_per_mode": len(cpu[True]),
        "cpu_ms_per_decision_with_metrics": round(with_ms, 3),
        "cpu_ms_per_decision_without_metrics": round(without_ms, 3),
        "measured_overhead_percent": round((with_ms - without_ms) / without_ms * 100, 2),
        "measured_overhead_standard_error_percent": round(noise / without_ms * 100, 2),
        "metric_calls_per_decision_us": round(calls_us, 1),
        "metric_calls_percent_of_decision_cpu": round(calls_us / 1000 / without_ms * 100, 3),
    }


def _calls_per_decision_us(count: int = 5000) -> float:
    """CPU time of exactly the metric work one embedding-mode decision does (wait, stage and enqueue
    lag; the search; the decision counter and its latency, each after commit), in microseconds."""
    from accessctl import metrics

    started = time.process_time()
    for _ in range(count):
        metrics.BRIDGE_LAG.labels("wait").observe(0.0005)
        metrics.BRIDGE_LAG.labels("stage").observe(0.003)
        metrics.BRIDGE_LAG.labels("enqueue").observe(0.002)
        metrics.GALLERY_SEARCH.labels(SFACE).observe(0.003)
        metrics.decisions_count([("grant", "matched")])  # outside a transaction: at once
        metrics.on_commit(lambda: metrics.decision_latency_observe("embedding", 0.02))
    return (time.process_time() - started) / count * 1e6


def metric_call_cost(count: int = 20000) -> dict[str, float]:
    """Microseconds per counter increment and per histogram observation (multiprocess mode: mmap'd files)."""
    from accessctl import metrics

    counter = metrics.DECISIONS.labels("grant", "matched")
    histogram = metrics.DECISION_LATENCY.labels("embedding")
    started = time.perf_counter()
    for _ in range(count):
        counter.inc()
    inc_us = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for _ in range(count):
        histogram.observe(0.05)
    observe_us = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for _ in range(count):
        metrics.DECISIONS.labels("grant", "matched").inc()
    labelled_us = (time.perf_counter() - started) / count * 1e6
    return {"counter_inc_us": round(inc_us, 2), "histogram_observe_us": round(observe_us, 2),
            "labels_then_inc_us": round(labelled_us, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--gallery", type=int, default=20000, help="embeddings in the gallery")
    parser.add_argument("--processes", type=int, default=8, help="child processes writing metric files")
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=5, help="decision cost: blocks x per-block detections per mode")
    parser.add_argument("--per-block", type=int, default=100, help="detections per block")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accessctl-bench-metrics-"))
    services = _stack.services_start(work)
    os.environ["ACCESSCTL_METRICS_TOKEN"] = TOKEN
    try:
        _stack.django_ready()
        site = site_fill(args.devices, args.gallery)
        children = []
        for _ in range(args.processes):  # each writes its own files, as web, workers and bridge do
            child = subprocess.Popen(
                [sys.executable, "-c", _CHILD], env=dict(os.environ), cwd=_stack.ROOT, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            children.append(child)
        folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        files = len(list(folder.glob("*.db")))
        result: dict[str, Any] = {"devices": args.devices, "gallery": args.gallery, "metric_files": files}
        result.update(scrape_measure(args.scrapes))
        result["parts"] = scrape_parts()
        for child in children:  # they end: their files go into the archive
            assert child.stdin is not None
            child.stdin.close()
            assert child.wait(60) == 0
        after = scrape_measure(max(20, args.scrapes // 4))
        result["after_exit"] = {
            "metric_files": len(list(folder.glob("*.db"))),
            "scrape_ms_p50": after["scrape_ms_p50"],
            "scrape_ms_p99": after["scrape_ms_p99"],
        }
        result["metric_calls"] = metric_call_cost()
        result["decision"] = decision_cost(site, args.blocks, args.per_block)
        result["cpus"] = os.cpu_count()
        result["load_average_1m"] = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
        print(json.dumps(result, indent=2))
    finally:
        services.stop()


if __name__ == "__main__":
    main()
