"""Promotion of a new model version under load: door decisions while the gallery is re-embedded.

Starts its own embedded PostgreSQL, Valkey and MQTT broker, the bridge, a decision worker and the
gallery worker as child processes (``bench/_stack.py``), enrols ``--photos`` accepted LFW enrolment
photos with the active model (sface; real photos in storage, real vectors through the enrolment
pipeline), provisions ``--devices`` simulated devices that send ``--rate`` signed detections per
second in all (embedding mode in the active version, ``--crop-share`` in crop mode) through the real
path (MQTT -> bridge -> worker -> door command), and after ``--steady`` seconds promotes ``--target``
(``recognition.gallery_migration``: rate-limited background build on the gallery worker, then the
switch). It keeps sending until the switch is done and ``--after`` seconds more, then prints:

- detections sent / decided / lost / duplicated (one AccessEvent and one door command each);
- decision latency (publish -> signed door command received) p50/p99, steady vs during the
  migration vs after the switch;
- re-embedding throughput (photos/s) and how long the build and the switch took;
- per ``--window`` seconds of sending: latency p50/p99/max, how long the oldest staged detection
  had waited (what the build's yield, ``DoorsFirst``, looks at), what the database sessions waited
  on (``pg_stat_activity``, sampled every 0.25 s) and the CPU each part of the stack and the whole
  machine used (other people's processes included): where a rise in latency comes from.

Usage: .venv/bin/python bench/model_promotion.py [--photos 40] [--devices 5] [--rate 10]
       [--reembed-rate 0 (settings default) | N] [--target facenet-casia-20180408] [--steady 15] [--after 5]
       [--workers 1] [--window 5] [--broker embedded|mosquitto]
The issue's target: --photos 10000 --devices 50 --rate 50. The behaviour before the yield and the
session priority: ACCESSCTL_GALLERY_WORKER_NICE=0 ACCESSCTL_GALLERY_YIELD_AGE_S=0 (the worker's
nice value weighed nothing in a session of its own, see recognition/worker_priority.py).
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _stack


def _lfw_photos(count: int, skip: set[str]) -> list[tuple[str, Path]]:
    """``count`` LFW photos as (person folder, path), people in name order, not those in ``skip``."""
    from tests import faces

    out: list[tuple[str, Path]] = []
    if count <= 0:
        return out
    for folder in sorted(p for p in faces.LFW_DIR.iterdir() if p.is_dir() and p.name not in skip):
        for path in sorted(folder.glob("*.jpg")):
            out.append((folder.name, path))
            if len(out) == count:
                return out
    return out


def gallery_enrol(photos: list[tuple[str, Path]], group: object) -> tuple[int, int]:
    """Store each photo as an accepted enrolment photo of its person with its active-model vector
    (the enrolment pipeline's analysis); returns (accepted, skipped: no usable face)."""
    from django.core.files.base import ContentFile
    from django.db import transaction

    from accessctl.models import Person
    from recognition.engine import active_embedder
    from recognition.enrollment import photo_embedding_store, photo_version_analyse
    from recognition.models import EnrollmentPhoto

    embedder = active_embedder()
    accepted = skipped = 0
    people: dict[str, Person] = {}
    for name, path in photos:
        person = people.get(name)
        if person is None:
            person = people[name] = Person.objects.get_or_create(name=name.replace("_", " "))[0]
            group.people.add(person)  # type: ignore[attr-defined]
        photo = EnrollmentPhoto(person=person, status=EnrollmentPhoto.Status.ACCEPTED)
        photo.image.save(f"bench/{path.name}", ContentFile(path.read_bytes()), save=False)
        analysis = photo_version_analyse(photo, embedder)
        if not analysis.ok:
            photo.image.delete(save=False)
            skipped += 1
            continue
        with transaction.atomic():
            photo.save()
            photo_embedding_store(photo=photo, analysis=analysis)
        accepted += 1
    return accepted, skipped


def site_build(devices: int, photos: int, uid_prefix: str) -> tuple[_stack.Site, int, int]:
    """The door, its group, the gallery (site people first: their other photos are the probes) and
    the devices."""
    from PIL import Image

    from accessctl.models import AccessGroup, Door
    from devices.models import EdgeDevice
    from devices.provisioning import device_provision
    from faceengine import protocol as p
    from faceengine.pipeline import embed_image
    from recognition.engine import active_embedder
    from tests import faces
    from tests.devices import e2e

    if not faces.lfw_available():
        raise SystemExit(f"needs LFW photos in {faces.LFW_DIR}")
    door, _ = Door.objects.get_or_create(name="Bench door")
    group, _ = AccessGroup.objects.get_or_create(name="Bench group")
    group.doors.add(door)
    site_people = faces.PEOPLE[:4]
    enrolled = [(name, path) for name in site_people for path in faces.face_paths(name, 3)]
    rest = _lfw_photos(max(0, photos - len(enrolled)), set(site_people))
    accepted, skipped = gallery_enrol(enrolled + rest, group)
    embedder = active_embedder()
    probes = []
    for name in site_people:
        for path in faces.face_paths(name, 3, 3):
            with Image.open(path) as image:
                face = embed_image(image.convert("RGB"), embedder=embedder, max_faces=1)[0]
            probes.append(_stack.Probe(jpeg=e2e.aligned_crop_jpeg(path), vector=face.embedding.tolist()))
    keys, passwords = {}, {}
    EdgeDevice.objects.filter(uid__startswith=uid_prefix).delete()
    for i in range(devices):
        uid = f"{uid_prefix}{i:03d}"
        provisioned = device_provision(uid=uid, door=door)
        keys[uid] = p.load_private_key(provisioned.private_key_pem)
        passwords[uid] = provisioned.mqtt_password
        EdgeDevice.objects.filter(uid=uid).update(model_version=embedder.model_version)
    site = _stack.Site(door_id=door.pk, model_version=embedder.model_version, probes=probes, keys=keys,
                       passwords=passwords)  # fmt: skip
    return site, accepted, skipped


def _summary(values: list[float]) -> str:
    if not values:
        return "n=0"
    return (f"n={len(values):5d}  p50 {statistics.median(values):7.1f} ms  p99 {_stack.percentile(values, 99):7.1f} ms"
            f"  max {max(values):7.1f} ms")  # fmt: skip


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine has used (every process, ours and others')."""
    import psutil

    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


def _windows_print(
    started: float,
    promoted: float,
    switch: float | None,
    sent_at: dict[str, float],
    received_at: dict[str, float],
    waits: list[tuple[float, str]],
    cpu_marks: list[tuple[float, dict[str, float]]],
    backlog: list[tuple[float, float]],
    window_s: float = 5.0,
) -> None:
    """Decision latency per ``window_s`` window of sending, with what the database sessions waited on
    (samples every 0.25 s) and the CPU each part of the stack used in it (% of one core)."""
    from collections import Counter

    per: dict[int, list[float]] = {}
    for i, at in sent_at.items():
        if i in received_at:
            per.setdefault(int((at - started) // window_s), []).append((received_at[i] - at) * 1000)
    waited: dict[int, Counter] = {}
    for at, what in waits:
        waited.setdefault(int((at - started) // window_s), Counter())[what.split(":")[0]] += 1
    print(f"  per {window_s:g} s window (t from the first detection; promoted at {promoted - started:.1f} s"
          + (f", switched at {switch - started:.1f} s" if switch else "") + "):")  # fmt: skip
    ages: dict[int, list[float]] = {}
    for at, ms in backlog:
        ages.setdefault(int((at - started) // window_s), []).append(ms)
    print("      t     n   p50 ms   p99 ms   max ms  oldest staged ms p50/max  db waits (0.25 s samples)  "
          "CPU % of a core")  # fmt: skip
    for k in sorted(per):
        lo = started + k * window_s
        phase = "S" if lo + window_s <= promoted else ("A" if switch and lo >= switch else "D")
        cpu = ""
        marks = [(t, snap) for t, snap in cpu_marks if lo - 2.5 <= t <= lo + window_s + 2.5]
        if len(marks) >= 2:
            (t0, a), (t1, b) = marks[0], marks[-1]
            used = {role: 100 * (b.get(role, 0.0) - a.get(role, 0.0)) / (t1 - t0) for role in b}
            machine = used.pop("machine", 0.0)
            top = sorted(used.items(), key=lambda kv: -kv[1])[:5]
            cpu = (f"machine {machine:3.0f}, bench stack {sum(used.values()):3.0f}: "
                   + ", ".join(f"{r} {v:.0f}" for r, v in top))  # fmt: skip
        w = ", ".join(f"{t} {n}" for t, n in waited.get(k, Counter()).most_common()) or "-"
        v, a = per[k], ages.get(k) or [0.0]
        print(f"  {phase} {k * window_s:5.0f} {len(v):5d} {statistics.median(v):8.1f} {_stack.percentile(v, 99):8.1f}"
              f" {max(v):8.1f}  {statistics.median(a):6.0f} /{max(a):6.0f}          {w:26s} {cpu}")  # fmt: skip
    kinds = Counter(what for _, what in waits)
    if kinds:
        print("  database waits seen (session samples): " + "; ".join(f"{n}x {w}" for w, n in kinds.most_common(8)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40, help="accepted enrolment photos in the gallery")
    parser.add_argument("--devices", type=int, default=5)
    parser.add_argument("--rate", type=float, default=10.0, help="detections per second, all devices together")
    parser.add_argument("--crop-share", type=float, default=0.0, help="fraction of detections in crop mode")
    parser.add_argument("--target", default="facenet-casia-20180408", help="the model version promoted")
    parser.add_argument("--reembed-rate", type=float, default=None, help="photos/s limit (default: the setting)")
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of load before promoting")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of load after the switch")
    parser.add_argument("--max-s", type=float, default=1800.0, help="give up after this long")
    parser.add_argument("--workers", type=int, default=1, help="decision worker concurrency")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per line of the per-window table")
    parser.add_argument("--broker", choices=["embedded", "mosquitto"], default="embedded",
                        help="MQTT broker: the embedded one (Python) or the machine's Mosquitto")  # fmt: skip
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="accessctl-promotion-"))
    services = _stack.services_start(work, mqtt=args.broker, db_name="accessctl_promotion")
    os.environ["ACCESSCTL_MIN_FACE_PX"] = "40"  # the LFW copy's faces are ~55 px
    if args.reembed_rate is not None:
        os.environ["ACCESSCTL_GALLERY_MIGRATION_RATE"] = str(args.reembed_rate)
    os.environ["ACCESSCTL_GALLERY_MIGRATION_SLICE_S"] = "30"
    try:
        _stack.django_ready()
        from django.conf import settings
        from django.db import connection

        from devices.commands import server_public_key_b64
        from faceengine import protocol as p
        from recognition.calibration import threshold_for, threshold_measured
        from recognition.gallery_migration import gallery_migration_start
        from recognition.model_registry import model_version_register
        from recognition.models import GalleryMigration, ModelCalibration, ModelVersion
        from recognition.staging import staged_backlog
        from tests.devices import e2e

        print(f"setting up: {args.photos} enrolment photos, {args.devices} devices ...", flush=True)
        # A clean registry (the bench database outlives a run): the shipped model active, the rest candidates.
        GalleryMigration.objects.all().delete()
        ModelVersion.objects.update(state="candidate")
        ModelVersion.objects.filter(model_version="sface-2021dec-int8bq").update(state="active")
        setup_started = time.monotonic()
        prefix = f"promo{services.run_id}-"
        site, accepted, skipped = site_build(args.devices, args.photos, prefix)
        target = ModelVersion.objects.get(model_version=args.target)
        if not threshold_measured(args.target):  # a promotion needs one; the bench's detections are embedding-mode
            ModelCalibration.objects.update_or_create(
                model_version=args.target,
                defaults={"threshold": threshold_for(args.target), "target_fmr": 1e-3,
                          "details": {"source": "bench/model_promotion.py: the built-in value, NOT measured"}},
            )  # fmt: skip
            print(f"  {args.target}: no measured threshold; the bench stores its built-in one (crop mode only)")
        target = model_version_register(
            backend=target.backend, model_version=target.model_version, options=target.options
        )  # hashed and signed: activation verifies it
        print(f"  {accepted} photos accepted ({skipped} without a usable face) in "
              f"{time.monotonic() - setup_started:.0f} s; active {site.model_version}, promoting {args.target}",
              flush=True)  # fmt: skip
        uids = sorted(site.keys)
        host, port = e2e.mqtt_address()
        from accessctl.project.supervisor import gallery_worker_env

        env = {**os.environ, "ACCESSCTL_LOG_LEVEL": "INFO", **gallery_worker_env()}  # as `manage.py up` starts it
        gallery_argv = [sys.executable, "-m", "celery", "-A", "accessctl.project", "worker", "-Q",
                        settings.GALLERY_QUEUE, "--concurrency", "1", "--prefetch-multiplier", "1", "-l", "INFO",
                        "-n", f"gallery-bench-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
                        "--without-heartbeat"]  # fmt: skip
        with (
            _stack.children(work, workers=args.workers, run_id=services.run_id),
            e2e.child_process(gallery_argv, env, "ready.", work / "logs" / "gallery-worker.log"),
        ):
            commands = _stack.Commands(host, port, server_public_key_b64(), set(uids))
            clients = _stack.device_clients(site, uids, host, port)
            # A crop only when the run sends crops: a decision process that embedded one loads the
            # promotion's target ahead (recognition/embedder_preload.py), one that did not does not.
            warm_modes = ("crop", "embedding") if args.crop_share > 0 else ("embedding",)
            warm = [_stack.detection_build(site, uids[0], 0, mode) for mode in warm_modes]
            for det in warm:
                clients[uids[0]].publish(p.detections_topic(uids[0]), p.seal(det, site.keys[uids[0]]), qos=1)
            if not commands.wait_all([d.detection_id for d in warm], 120):
                raise SystemExit(f"warm-up detections were not decided; see the logs in {work / 'logs'}")

            # The migration, watched from its own thread (its own database connection), which also
            # samples what the database's other sessions wait on and the CPU of each part of the stack.
            marks: dict[str, float] = {}
            stop = threading.Event()
            promoted_flag = threading.Event()
            waits: list[tuple[float, str]] = []  # (when, "Lock:transactionid: UPDATE ...") per waiting session
            cpu_marks: list[tuple[float, dict[str, float]]] = []
            backlog: list[tuple[float, float]] = []  # (when, ms the oldest staged detection had waited)

            def watch() -> None:
                next_cpu = 0.0
                try:
                    while not stop.wait(0.25):
                        now = time.monotonic()
                        with connection.cursor() as cursor:
                            cursor.execute(
                                "SELECT wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 70)"
                                " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                                " AND state = 'active' AND wait_event_type IN ('Lock', 'LWLock', 'IO', 'IPC')"
                            )
                            waits.extend((now, f"{t}:{e}: {q}") for t, e, q in cursor.fetchall())
                        backlog.append((now, staged_backlog(within_s=60.0).oldest_s * 1000))
                        if now >= next_cpu:
                            cpu_marks.append((now, {**_stack.cpu_snapshot(), "machine": _machine_cpu_s()}))
                            next_cpu = now + 5.0
                        if not promoted_flag.is_set() or "done" in marks or "failed" in marks:
                            continue
                        row = GalleryMigration.objects.filter(model__model_version=args.target).first()
                        if row is None:
                            continue
                        if row.state == "running" and "running" not in marks:
                            marks["running"] = time.monotonic()
                        if row.state in ("done", "failed"):
                            marks[row.state] = time.monotonic()
                finally:
                    connection.close()

            rng = random.Random(7)
            interval = len(uids) / args.rate
            sent_at: dict[str, float] = {}
            modes: dict[str, str] = {}
            due = [(time.monotonic() + rng.random() * interval, uid) for uid in uids]
            heapq.heapify(due)
            started = time.monotonic()
            print(f"publishing: {len(uids)} devices, {args.rate:g} detections/s, {args.crop_share:.0%} crop mode; "
                  f"promoting after {args.steady:g} s", flush=True)  # fmt: skip
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            n, promoted, next_report = 0, None, started + 15
            while True:
                now = time.monotonic()
                if promoted is None and now - started >= args.steady:
                    promoted = now
                    gallery_migration_start(model=target, note="bench")
                    promoted_flag.set()
                    print(f"  t={now - started:5.0f}s promotion of {args.target} queued", flush=True)
                finished = marks.get("done") or marks.get("failed")
                if (finished and now - finished >= args.after) or now - started > args.max_s:
                    break
                at, uid = heapq.heappop(due)
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
                    next_report += 15
                    row = GalleryMigration.objects.filter(model__model_version=args.target).first()
                    progress = (
                        f"; gallery {row.state} {row.done}/{row.total} at {row.photos_per_s:.1f}/s" if row else ""
                    )
                    print(f"  t={time.monotonic() - started:5.0f}s sent {n}, decided {commands.have(list(sent_at))}"
                          f"{progress}", flush=True)  # fmt: skip
            published = time.monotonic()
            stop.set()
            watcher.join(5)
            ids = list(sent_at)
            _stack.wait_until(lambda: _stack.events_check(ids)["lost"] == 0, 120, step=1.0)
            commands.wait_all(ids, 10)
            time.sleep(2.0)  # a wrongly repeated command would arrive now
            check = _stack.events_check(ids)
            reasons = _stack.reasons(ids)
            repeated = sum(c - 1 for i, c in commands.counts.items() if i in sent_at and c > 1)
            commands.close()
            for client in clients.values():
                client.loop_stop()
                client.disconnect()

        migration = GalleryMigration.objects.select_related("model").get(model__model_version=args.target)
        states = dict(ModelVersion.objects.values_list("model_version", "state"))
        switch = marks.get("done")
        phases: dict[str, list[float]] = {"steady": [], "during": [], "after": []}
        for i in ids:
            if i not in commands.received_at:
                continue
            latency = (commands.received_at[i] - sent_at[i]) * 1000
            phase = "steady" if sent_at[i] < promoted else ("during" if not switch or sent_at[i] < switch else "after")
            phases[phase].append(latency)
        print(f"\nresults ({len(ids)} detections in {published - started:.1f} s, {accepted} gallery photos; "
              "loaded 2-core machine unless said otherwise):")  # fmt: skip
        print(f"  sent {check['detections']}, decided {check['with_event']}, lost {check['lost']}, "
              f"duplicated {check['duplicated']}, still staged {check['still_staged']}; "
              f"door commands repeated {repeated}")  # fmt: skip
        print("  reasons: " + ", ".join(f"{reason} {k}" for reason, k in reasons.most_common()))
        for phase, values in phases.items():
            print(f"  latency {phase:7s} {_summary(values)}")
        _windows_print(started, promoted, switch, sent_at, commands.received_at, waits, cpu_marks, backlog,
                       window_s=args.window)  # fmt: skip
        steady, during = phases["steady"], phases["during"]
        # Before the promotion the stack must keep up with the load, or the ratio compares a queue
        # that was growing anyway with itself (a machine too slow for --rate): said, not hidden.
        held = [ms for when, ms in backlog if promoted - 15.0 <= when < promoted]
        if held and max(held) > 1000.0:
            print(f"  STEADY STATE NOT HELD: a detection waited {max(held) / 1000:.1f} s for its decision in the "
                  f"15 s before the promotion; this machine does not keep up with {args.rate:g}/s, so the ratio "
                  "below measures an overloaded stack, not the promotion")  # fmt: skip
        if steady and during:
            ratio = _stack.percentile(during, 99) / max(_stack.percentile(steady, 99), 1e-9)
            print(f"  p99 during / steady: {ratio:.2f}x")
        build_s = (migration.finished_at - migration.started_at).total_seconds() if migration.finished_at else None
        print(f"  gallery build: {migration.state}, {migration.done}/{migration.total} photos, {migration.failed} "
              f"failed, {migration.embedded} embedded by the build; last slice {migration.photos_per_s:.2f} photos/s"
              + (f"; {migration.embedded / build_s:.2f} photos/s over {build_s:.1f} s (switch included)"
                 if build_s else ""))  # fmt: skip
        print(f"  after: {args.target} {states.get(args.target)}, {site.model_version} {states.get(site.model_version)}"
              f" (its vectors kept: embedding-mode devices still decided in it)")  # fmt: skip
        ok = check["lost"] == 0 and check["duplicated"] == 0 and repeated == 0 and migration.state == "done"
        print("  OK: zero lost, zero duplicated, promoted" if ok else "  FAILED")
        return 0 if ok else 1
    finally:
        services.stop()


if __name__ == "__main__":
    sys.exit(main())
