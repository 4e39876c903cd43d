"""Sustained load: many simulated door devices publishing signed detections for minutes.

Each of ``--devices`` devices is provisioned with its own Ed25519 key and its own MQTT connection and
publishes ``--rate`` detections per second (evenly spaced, random phase), mostly in embedding mode,
``--crop-share`` of them in crop mode (the worker embeds the face). Measured from the devices' side:
decisions per second, publish -> signed door command latency (p50/p99), and the exactly-once check:
every detection id has exactly one AccessEvent, nothing is left staged, and each got exactly one command.

Usage: .venv/bin/python bench/load_test.py [--duration 180] [--rate 0.2] [--devices 50]
       [--broker embedded|mosquitto] [--celery-broker embedded|redis|rabbitmq] [--workers 2]
"""

from __future__ import annotations

import argparse
import heapq
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _stack

logger = logging.getLogger(__name__)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of publishing")
    parser.add_argument("--rate", type=float, default=0.2, help="detections per second per device")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--crop-share", type=float, default=0.1, help="fraction of detections in crop mode")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker concurrency")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded", help="MQTT broker")
    parser.add_argument("--celery-broker", choices=["embedded", "redis", "rabbitmq"], default="embedded")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds to wait for the backlog")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="accessctl-load-"))
    services = _stack.services_start(work, mqtt=args.broker, celery=args.celery_broker, db_name="accessctl_load")
    try:
        _stack.django_ready()
        from devices.commands import server_public_key_b64
        from faceengine import protocol as p
        from tests.devices import e2e

        prefix = f"load{services.run_id}-"
        print(f"setting up: enrolling LFW people, provisioning {args.devices} devices ({prefix}*) ...", flush=True)
        site = _stack.site_setup(devices=args.devices, uid_prefix=prefix)
        uids = sorted(site.keys)
        host, port = e2e.mqtt_address()
        with _stack.children(work, workers=args.workers, run_id=services.run_id):
            commands = _stack.Commands(host, port, server_public_key_b64(), set(uids))
            clients = _stack.device_clients(site, uids, host, port)
            rng = random.Random(7)
            interval = 1.0 / args.rate
            # Warm-up: one crop and one embedding detection, decided before the clock starts.
            warm = [_stack.detection_build(site, uids[0], 0, mode) for mode in ("crop", "embedding")]
            for det in warm:
                clients[uids[0]].publish(p.detections_topic(uids[0]), p.seal(det, site.keys[uids[0]]), qos=1)
            if not commands.wait_all([d.detection_id for d in warm], 120):
                raise SystemExit("warm-up detections were not decided; see the logs in " + str(work / "logs"))

            print(
                f"publishing for {args.duration:.0f}s: {args.devices} devices x {args.rate}/s = "
                f"{args.devices * args.rate:.1f} detections/s offered, {args.crop_share:.0%} crop mode "
                f"(MQTT {args.broker}, Celery broker {args.celery_broker}, worker concurrency {args.workers})",
                flush=True,
            )
            sent_at: dict[str, float] = {}
            modes: dict[str, str] = {}
            cpu_before = _stack.cpu_snapshot()
            started = time.monotonic()
            due = [(started + rng.random() * interval, uid) for uid in uids]
            heapq.heapify(due)
            n = 0
            next_report = started + 30
            while due:
                at, uid = heapq.heappop(due)
                if at - started > args.duration:
                    continue
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                mode = "crop" if rng.random() < args.crop_share else "embedding"
                det = _stack.detection_build(site, uid, n, mode)
                raw = p.seal(det, site.keys[uid])
                sent_at[det.detection_id] = time.monotonic()
                modes[det.detection_id] = mode
                clients[uid].publish(p.detections_topic(uid), raw, qos=1)
                n += 1
                heapq.heappush(due, (at + interval, uid))
                if time.monotonic() > next_report:
                    next_report += 30
                    done = commands.have(list(sent_at))
                    print(f"  t={time.monotonic() - started:5.0f}s published {n}, decided {done}", flush=True)
            published = time.monotonic()
            ids = list(sent_at)
            drained = _stack.wait_until(lambda: _stack.events_check(ids)["lost"] == 0, args.drain_timeout, step=2.0)
            commands.wait_all(ids, 10)
            cpu_after = _stack.cpu_snapshot()
            time.sleep(2.0)  # let a wrongly repeated command arrive before counting
            check = _stack.events_check(ids)
            reasons = _stack.reasons(ids)
            decided_times = [commands.received_at[i] for i in ids if i in commands.received_at]
            lat = {
                mode: [(commands.received_at[i] - sent_at[i]) * 1000 for i in ids
                       if modes[i] == mode and i in commands.received_at]
                for mode in ("embedding", "crop")
            }  # fmt: skip
            all_lat = lat["embedding"] + lat["crop"]
            commands_dup = sum(c - 1 for i, c in commands.counts.items() if i in sent_at and c > 1)
            commands.close()
            for client in clients.values():
                client.loop_stop()
                client.disconnect()

        end = max(decided_times) if decided_times else published
        print(f"\nresults ({len(ids)} detections in {published - started:.1f}s):")
        print(f"  offered {len(ids) / (published - started):.1f}/s; {len(decided_times)} door commands in "
              f"{end - started:.1f}s -> {len(decided_times) / (end - started):.1f} decisions/s"
              f"{'' if drained else '  (NOT DRAINED)'}")  # fmt: skip
        print(f"  backlog drained {max(0.0, end - published):.1f}s after the last publish")
        print("  " + _stack.cpu_report(cpu_before, cpu_after, max(len(decided_times), 1)))
        for mode, values in (("all", all_lat), *lat.items()):
            if values:
                print(f"  latency {mode:9s} n={len(values):6d}  p50 {statistics.median(values):7.1f} ms  "
                      f"p99 {_stack.percentile(values, 99):7.1f} ms  max {max(values):7.1f} ms")  # fmt: skip
        print(f"  events: {check['with_event']} of {check['detections']} detections -> lost {check['lost']}, "
              f"duplicated {check['duplicated']}, still staged {check['still_staged']}")  # fmt: skip
        print("  reasons: " + ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()))
        print(f"  commands: {len(decided_times)} detections got one, {commands_dup} repeated; "
              f"{commands.foreign} foreign command messages ignored")  # fmt: skip
        late = len(ids) - len(decided_times)
        if late:
            print(f"  {late} detections reached the bridge after the freshness window: denied stale, no command")
        ok = drained and check["lost"] == 0 and check["duplicated"] == 0 and commands_dup == 0
        print("  OK: zero lost, zero duplicated" if ok else "  FAILED")
        return 0 if ok else 1
    finally:
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
