"""Fault recovery figures: bigger versions of tests/reliability/test_faults.py.

For each scenario a burst of signed detections from several devices is published while a fault is
injected; the script then waits until every detection has an AccessEvent and prints how many were
decided before the fault, how long recovery took, and the exactly-once accounting.

- ``worker``: kill -9 of the Celery worker (main process and pool) mid-burst, restarted at once; the
  inbound sweep (Celery beat in production, every 15 s) runs every 2 s here with a 3 s retry age, in
  every scenario.
- ``bridge``: kill -9 of the MQTT bridge mid-burst, restarted after 2 s (persistent session).
- ``broker``: the embedded MQTT broker restarts mid-burst.

The devices run the edge agent's own MQTT link (``edge_agent.mqtt.EdgeLink``: spool, and
detections without an answer after 3 s are signed again and re-sent, until 15 s).
- ``db``: immediate shutdown of PostgreSQL for ``--db-down`` seconds mid-burst.

Usage: .venv/bin/python bench/faults.py [--scenario all|worker|bridge|broker|db] [--burst 300]
       [--broker embedded|mosquitto] [--celery-broker embedded|redis|rabbitmq]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _stack

RATE = 50.0  # detections per second published during a burst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["all", "worker", "bridge", "broker", "db"], default="all")
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--db-down", type=float, default=10.0, help="seconds the database stays down")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded")
    parser.add_argument("--celery-broker", choices=["embedded", "redis", "rabbitmq"], default="embedded")
    args = parser.parse_args()

    os.environ["ACCESSCTL_INBOUND_RETRY_AFTER_S"] = "3"
    work = Path(tempfile.mkdtemp(prefix="accessctl-faults-"))
    services = _stack.services_start(work, mqtt=args.broker, celery=args.celery_broker, db_name="accessctl_faults")
    ok = True
    try:
        _stack.django_ready()
        scenarios = ["worker", "bridge", "broker", "db"] if args.scenario == "all" else [args.scenario]
        if args.broker == "mosquitto" and "broker" in scenarios:
            print("(skipping the broker scenario: the machine's Mosquitto is not ours to restart)")
            scenarios.remove("broker")
        site = _stack.site_setup(devices=args.devices, uid_prefix=f"flt{services.run_id}-")
        print(
            f"burst {args.burst} detections from {args.devices} devices at {RATE:.0f}/s; MQTT {args.broker}, "
            f"Celery broker {args.celery_broker}; figures measured on a shared, loaded machine (pessimistic)\n"
        )
        for number, name in enumerate(scenarios):
            ok = run_scenario(name, site, services, args, work / f"run{number}") and ok
    finally:
        services.stop()
    return 0 if ok else 1


def run_scenario(name: str, site: _stack.Site, services: _stack.Services, args: argparse.Namespace, work: Path) -> bool:
    from django.db import connection

    from devices.commands import server_public_key_b64
    from recognition.tasks import inbound_sweep
    from tests.devices import e2e
    from tests.reliability import rig

    work.mkdir(parents=True)
    host, port = e2e.mqtt_address()
    env = {**os.environ, "ACCESSCTL_LOG_LEVEL": "INFO", "MQTT_CLIENT_ID": f"accessctl-flt-{services.run_id}-{name}"}
    children = rig.Children(env, work)
    broker_holder: dict[str, object] = {}
    children.start_worker()
    children.start_bridge()
    uids = sorted(site.keys)
    commands = _stack.Commands(host, port, server_public_key_b64(), set(uids))
    devices = {
        uid: rig.AgentDevice(uid, site.keys[uid], host, port, spool_dir=work / "spool" / uid,
                             server_public_key=server_public_key_b64(), password=site.passwords[uid],
                             decision_timeout_s=3.0, resend_window_s=15.0)
        for uid in uids
    }  # fmt: skip
    sent: dict[str, str] = {}
    marks: dict[str, float] = {}

    def decided() -> int:
        try:
            return _stack.events_check(list(sent))["with_event"]
        except Exception:  # the database may be down right now
            connection.close()
            return -1

    def inject_worker() -> None:
        children.kill("worker")
        marks["fault"] = time.monotonic()
        children.start_worker()
        marks["back"] = time.monotonic()

    def inject_bridge() -> None:
        children.kill("bridge")
        marks["fault"] = time.monotonic()
        time.sleep(2.0)
        children.start_bridge()
        marks["back"] = time.monotonic()

    def inject_broker() -> None:

        broker = next(c for c in services.children if c.name == "mqtt-broker")
        broker.stop()
        marks["fault"] = time.monotonic()
        time.sleep(1.0)
        restarted = _stack.broker_start(services.work, port=port)
        services.children[services.children.index(broker)] = restarted
        broker_holder["broker"] = restarted
        marks["back"] = time.monotonic()

    def inject_db() -> None:
        from accessctl.project import embedded

        pg = embedded.start_postgres(_stack.ROOT / "var" / "bench" / "pg")
        rig.postgres_ctl(pg, "-w", "-m", "immediate", "stop")
        marks["fault"] = time.monotonic()
        time.sleep(args.db_down)
        rig.postgres_start(pg)
        marks["back"] = time.monotonic()

    inject: Callable[[], None] = {"worker": inject_worker, "bridge": inject_bridge, "broker": inject_broker,
                                  "db": inject_db}[name]  # fmt: skip
    fault_at = args.burst // 4 if name == "worker" else args.burst // 3
    injector: threading.Thread | None = None
    started = time.monotonic()
    for i in range(args.burst):
        uid = uids[i % len(uids)]
        detection = _stack.detection_build(site, uid, i, "embedding")
        sent[detection.detection_id] = uid
        devices[uid].send(detection)
        if i == fault_at:
            marks["decided_before"] = decided()
            injector = threading.Thread(target=inject)
            injector.start()
        time.sleep(max(0.0, started + (i + 1) / RATE - time.monotonic()))
    if injector:
        injector.join()
    ids = list(sent)

    def recovered() -> bool:
        try:
            inbound_sweep()  # what Celery beat runs every 15 s in production
        except Exception:
            connection.close()
        return decided() == len(ids)

    done = _stack.wait_until(recovered, 90, step=1.0)
    finished = time.monotonic()
    # A command published while the broker was down is lost; the device asks again and gets it.
    answered = _stack.wait_until(lambda: all(i in commands.received_at for i in ids), 30, step=0.5)
    answered_at = time.monotonic()
    resent = sum(device.link.resent for device in devices.values())
    time.sleep(2.0)
    check = _stack.events_check(ids)
    reasons = _stack.reasons(ids)
    commands_dup = sum(c - 1 for i, c in commands.counts.items() if i in sent and c > 1)
    print(f"[{name}] {len(ids)} detections; {marks.get('decided_before', 0)} decided when the fault hit")
    print(
        f"  back {marks['back'] - marks['fault']:.1f}s after the fault; every detection decided "
        f"{finished - marks['back']:.1f}s after that" + ("" if done else " -- NOT RECOVERED")
    )
    print(f"  {resent} detections re-sent by the devices (no answer within 3 s)")
    print(
        f"  lost {check['lost']}, duplicated {check['duplicated']}, still staged {check['still_staged']}; "
        f"door commands for {sum(1 for i in ids if i in commands.received_at)} detections "
        f"({'all' if answered else 'NOT all'} answered {answered_at - marks['back']:.1f}s after the fault ended; "
        f"{commands_dup} answers sent again for re-sends)"
    )
    print("  reasons: " + ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()) + "\n")
    commands.close()
    for device in devices.values():
        device.close()
    children.close()
    return done and check["lost"] == 0 and check["duplicated"] == 0


if __name__ == "__main__":
    sys.exit(main())
