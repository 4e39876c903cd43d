"""Sustained load: many simulated door devices publishing signed detections for minutes.

Each of ``--devices`` devices is provisioned with its own Ed25519 key and its own MQTT connection and
publishes ``--rate`` detections per second (evenly spaced, random phase), mostly in embedding mode,
``--crop-share`` of them in crop mode (the worker embeds the face). Measured from the devices' side:
decisions per second, publish -> signed door command latency (p50/p99), and the exactly-once check:
every detection id has exactly one AccessEvent, nothing is left staged, and each got exactly one command.

Usage: .venv/bin/python bench/load_test.py [--duration 180] [--rate 0.2] [--devices 50]
       [--broker embedded|mosquitto] [--celery-broker embedded|redis|rabbitmq] [--workers 2]

Through the multi-process topology of deploy/topology.py instead (its database, RabbitMQ, Redis,
Mosquitto, bridges, workers, web), SIGKILLing some of its processes mid-run and starting them again:
       bench/load_test.py --topology var/topology --rate 2 --crop-share 0 --duration 30
       [--kill bridge-1,worker-1,web-1 --kill-at 10 --restart-after 2] [--json figures.json]
(start the topology with TOPOLOGY_OBSERVER_DIR set: the bench reads the commands as the test observer.)
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import logging
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
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
    parser.add_argument("--topology", type=Path, help="run through deploy/topology.py's processes in this run dir")
    parser.add_argument("--kill", default="", help="topology: processes to SIGKILL mid-run (bridge-1,worker-1,...)")
    parser.add_argument("--kill-at", type=float, default=10.0, help="topology: seconds into publishing")
    parser.add_argument(
        "--restart-after", type=float, default=2.0, help="topology: seconds down before restart (<0: never)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if args.topology:
        services, addresses = None, topology_enter(args.topology.resolve())
        run_id = time.strftime("%H%M%S")
    else:
        work = Path(tempfile.mkdtemp(prefix="accessctl-load-"))
        services = _stack.services_start(work, mqtt=args.broker, celery=args.celery_broker, db_name="accessctl_load")
        run_id = services.run_id
    try:
        _stack.django_ready()
        from devices.broker_auth import broker_reload
        from devices.commands import server_public_key_b64
        from faceengine import protocol as p
        from tests.devices import e2e

        prefix = f"load{run_id}-"
        print(f"setting up: enrolling LFW people, provisioning {args.devices} devices ({prefix}*) ...", flush=True)
        site = _stack.site_setup(devices=args.devices, uid_prefix=prefix)
        uids = sorted(site.keys)
        if args.topology:
            broker_reload()  # Mosquitto reads the new devices (and the observer) now
            time.sleep(1.0)
            (host, port), listen = addresses
            running = contextlib.nullcontext()
        else:
            host, port = e2e.mqtt_address()
            listen = (host, port)
            running = _stack.children(work, workers=args.workers, run_id=run_id)
        where = (
            f"topology {args.topology}: Mosquitto, RabbitMQ, Redis, PostgreSQL"
            if args.topology
            else f"MQTT {args.broker}, Celery broker {args.celery_broker}, worker concurrency {args.workers}"
        )
        chaos = Chaos(args.topology, [n for n in args.kill.split(",") if n], args.kill_at, args.restart_after)
        with running:
            commands = _stack.Commands(*listen, server_public_key_b64(), set(uids))
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
                f"({where})",
                flush=True,
            )
            sent_at: dict[str, float] = {}
            modes: dict[str, str] = {}
            cpu_before = _stack.cpu_snapshot()
            started = time.monotonic()
            chaos.start(started)
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
            chaos.join()
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
        for line in chaos.log:
            print(f"  fault: {line}")
        ok = drained and check["lost"] == 0 and check["duplicated"] == 0 and commands_dup == 0 and chaos.ok
        print("  OK: zero lost, zero duplicated" if ok else "  FAILED")
        if args.json:
            figures = {
                "sent": len(ids), "decided": check["with_event"], "answered": len(decided_times),
                "lost": check["lost"], "duplicated": check["duplicated"], "still_staged": check["still_staged"],
                "commands_repeated": commands_dup, "drained": drained,
                "seconds": round(published - started, 1),
                "decisions_per_s": round(len(decided_times) / (end - started), 1),
                "p50_ms": round(statistics.median(all_lat), 1) if all_lat else None,
                "p99_ms": round(_stack.percentile(all_lat, 99), 1) if all_lat else None,
                "max_ms": round(max(all_lat), 1) if all_lat else None,
                "reasons": dict(reasons), "faults": chaos.log, "faults_ok": chaos.ok, "ok": ok,
            }  # fmt: skip
            args.json.write_text(json.dumps(figures, indent=2))
        return 0 if ok else 1
    finally:
        if services is not None:
            services.stop()


def topology_enter(run_dir: Path) -> tuple[tuple[str, int], tuple[str, int]]:
    """Take deploy/topology.py's settings (its topology.env) and write this run's observer identity
    into its observer folder; returns the devices' and the observer's broker addresses."""
    from tests.broker_logins import OBSERVER_ENV, observer_identity_write

    state = json.loads((run_dir / "topology.json").read_text())
    for line in (run_dir / "topology.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            os.environ[key] = shlex.split(value)[0] if value else ""
    os.environ["ACCESSCTL_LOG_LEVEL"] = "WARNING"
    if not state.get("observer_dir"):
        raise SystemExit("start the topology with TOPOLOGY_OBSERVER_DIR set (the bench listens as the test observer)")
    os.environ[OBSERVER_ENV] = ":".join(observer_identity_write(Path(state["observer_dir"])))
    return ("127.0.0.1", state["mqtt_device_port"]), ("127.0.0.1", state["observer_port"])


class Chaos:
    """SIGKILLs topology processes ``at`` seconds into the run and starts them again ``down`` seconds later."""

    def __init__(self, run_dir: Path | None, names: list[str], at: float, down: float) -> None:
        self.run_dir, self.names, self.at, self.down = run_dir, names, at, down
        self.log: list[str] = []
        self.ok = True
        self._thread: threading.Thread | None = None

    def _topology(self, *args: str) -> None:
        script = Path(__file__).resolve().parent.parent / "deploy" / "topology.py"
        done = subprocess.run([sys.executable, str(script), "--run-dir", str(self.run_dir), *args],
                              capture_output=True, text=True)  # fmt: skip
        self.log += [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode:
            self.ok = False
            self.log.append(f"topology {args[0]} failed: {done.stderr.strip()[-500:]}")

    def _run(self, started: float) -> None:
        time.sleep(max(0.0, started + self.at - time.monotonic()))
        self.log.append(f"t={time.monotonic() - started:.1f}s kill {', '.join(self.names)}")
        self._topology("kill", *self.names)
        if self.down < 0:
            self.log.append("not started again")
            return
        time.sleep(self.down)
        self.log.append(f"t={time.monotonic() - started:.1f}s start {', '.join(self.names)}")
        self._topology("start", *self.names)
        self.log.append(f"t={time.monotonic() - started:.1f}s all up again")

    def start(self, started: float) -> None:
        if self.names and self.run_dir:
            self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
            self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


if __name__ == "__main__":
    sys.exit(main())
