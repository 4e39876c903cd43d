"""End-to-end decision latency and throughput on embedded defaults.

Starts its own embedded PostgreSQL (var/bench/pg), Valkey and MQTT broker, the bridge and a Celery
worker as child processes, enrols LFW people, provisions a device (all through ``bench/_stack.py``)
and then measures, from the device's point of view, publish -> signed door command received:

- latency p50/p99 for one detection at a time, in crop mode and in embedding mode, with one face
  and (``--track-probes K``, default 3) with K faces of a track fused (``track_probes``);
- sustained decisions per second when detections arrive faster than they are decided
  (embedding mode), with a check that every detection ended in exactly one AccessEvent.

Usage: .venv/bin/python bench/decision_latency.py [--latency-count 100] [--burst 2000] [--workers 1]
       [--track-probes 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-count", type=int, default=100)
    parser.add_argument("--burst", type=int, default=2000, help="detections for the throughput run")
    parser.add_argument("--workers", type=int, default=1, help="Celery worker concurrency")
    parser.add_argument("--track-probes", type=int, default=3, help="faces per track in the fused runs (1: none)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accessctl-bench-"))
    services = _stack.services_start(work)
    _stack.django_ready()
    from devices.commands import server_public_key_b64
    from faceengine import protocol as p
    from tests.devices import e2e

    print("setting up: enrolling LFW people ...", flush=True)
    site = _stack.site_setup(devices=1, uid_prefix="bench-cam-")
    uid, key = next(iter(site.keys.items()))
    host, port = e2e.mqtt_address()
    with _stack.children(work, workers=args.workers, run_id=services.run_id):
        commands = _stack.Commands(host, port, server_public_key_b64(), {uid})
        client = _stack.device_clients(site, [uid], host, port)[uid]
        topic = p.detections_topic(uid)

        def send_and_wait(i: int, mode: str, k: int = 1) -> float:
            detection = _stack.detection_build(site, uid, i, mode, track_probes=k)
            raw = p.seal(detection, key)
            started = time.monotonic()
            client.publish(topic, raw, qos=1)
            if not commands.wait_all([detection.detection_id], 30):
                raise TimeoutError(f"no decision for {detection.detection_id}")
            return (commands.received_at[detection.detection_id] - started) * 1000

        for i in range(5):  # warm-up: connections, model, caches
            send_and_wait(i, "crop")

        print(f"\nlatency, one detection at a time (n={args.latency_count}), publish -> command received:")
        runs = [(mode, k) for k in sorted({1, args.track_probes}) for mode in ("crop", "embedding")]
        for mode, k in runs:
            samples = [send_and_wait(i, mode, k) for i in range(args.latency_count)]
            print(
                f"  {mode:9s} K={k}  p50 {statistics.median(samples):6.1f} ms"
                f"   p99 {_stack.percentile(samples, 99):6.1f} ms   max {max(samples):6.1f} ms"
            )

        print(f"\nthroughput, embedding mode, {args.burst} detections published back to back:")
        detections = [_stack.detection_build(site, uid, i, "embedding") for i in range(args.burst)]
        sealed = [p.seal(d, key) for d in detections]
        ids = [d.detection_id for d in detections]
        cpu_before = _stack.cpu_snapshot()
        started = time.monotonic()
        for raw in sealed:
            client.publish(topic, raw, qos=1)
        published = time.monotonic()
        commands.wait_all(ids, 600)
        done = max(commands.received_at.get(i, 0.0) for i in ids)
        got = commands.have(ids)
        cpu_after = _stack.cpu_snapshot()
        check = _stack.events_check(ids)
        print(f"  published in {published - started:.2f} s; decided in {done - started:.2f} s")
        print(f"  sustained: {got / (done - started):.0f} decisions/s (worker concurrency {args.workers})")
        print(
            f"  events: {check['with_event']} of {check['detections']} detections -> lost {check['lost']}, "
            f"duplicated {check['duplicated']}, still staged {check['still_staged']}; commands received {got}"
        )
        print("  " + _stack.cpu_report(cpu_before, cpu_after, max(got, 1)))
        commands.close()
        client.loop_stop()
    services.stop()


if __name__ == "__main__":
    main()
