"""Offline allow-list decision latency at the edge: the face emitted -> the relay, door offline.

A real :class:`~edge_agent.agent.EdgeAgent` in crop mode with ``fail_mode = "allowlist"``, the
real face model (``detection.embedder``, default sface) limited to ``--threads`` threads, a signed
allow-list of ``--people`` people (the visitor's own templates plus random ones, int8 as on the
wire, signed with a throwaway server key and verified by the agent like any command) and the
broker unreachable. Each round emits one track's best candidate (an aligned LFW crop); the agent
embeds it, matches it against the list, checks schedules and pulses the simulated relay. Prints
the latencies the door measured (``DoorController.latencies_ms``), the CPU time of each whole
detection (all threads; the wall clock overstates an idle device's latency on a loaded machine)
and the list's bytes per person.

Run: ``.venv/bin/python bench/edge_offline_decision.py [--people 1000] [--rounds 50] [--threads 2] [--json]``.
Issue 19's target: p50 <= 50 ms on 2 threads for a 1,000-person list.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from accessctl.project.embedded import free_port  # noqa: E402
from edge_agent.agent import EdgeAgent  # noqa: E402
from edge_agent.config import EdgeConfig  # noqa: E402
from edge_agent.relay import SimulatedRelay  # noqa: E402
from edge_agent.vision import LocalEmbedder, prepare  # noqa: E402
from faceengine import protocol as p  # noqa: E402
from faceengine.protocol.allowlist import ALWAYS, AllowlistEntry, AllowlistHeader, Template  # noqa: E402
from tests.edge_agent.allowlists import mqtt_message  # noqa: E402
from tests.edge_agent.conftest import face_at, face_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--templates", type=int, default=3, help="templates per person")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--embedder", default="sface")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    device_private, _ = p.generate_keypair()
    server_private, server_public = p.generate_keypair()
    with tempfile.TemporaryDirectory() as tmp:
        config = EdgeConfig()
        config.device.uid = "bench-door"
        (Path(tmp) / "device.key").write_text(device_private)
        config.device.private_key_path = Path(tmp) / "device.key"
        config.device.server_public_key = server_public
        config.mqtt.url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens: offline
        config.spool.dir = Path(tmp) / "spool"
        config.detection.threads = args.threads
        config.detection.embedder = args.embedder
        config.door.fail_mode = "allowlist"
        config.door.offline_grace_s = 0.0
        config.validate()
        started = time.perf_counter()
        list_embedder = LocalEmbedder(args.embedder, threads=args.threads)
        load_s = time.perf_counter() - started
        relay = SimulatedRelay()
        agent = EdgeAgent(
            config,
            camera=None,
            detector=None,
            relay=relay,
            private_key=device_private,
            allowlist_embedder=list_embedder,
        )
        rgb = face_image()
        (visitor,) = prepare(rgb, [face_at((50, 36, 110, 114))], min_face_px=10, min_score=0.1)
        own = list_embedder.embed(visitor)
        rng = np.random.default_rng(0)
        dim = own.shape[0]
        entries = [AllowlistEntry(ref="visitor", schedules=(ALWAYS,), templates=(Template.from_values(own.tolist()),))]
        for i in range(args.people - 1):
            vectors = rng.standard_normal((args.templates, dim)).astype(np.float32)
            entries.append(
                AllowlistEntry(
                    ref=f"person-{i}",
                    schedules=(ALWAYS,),
                    templates=tuple(Template.from_values(v.tolist()) for v in vectors),
                )
            )
        now = time.time()
        header = AllowlistHeader(
            version=1,
            base_version=None,
            issued_at=now,
            expires_at=now + 3600,
            model_version=list_embedder.model_version,
            dim=dim,
            threshold=0.3,
            margin=0.05,
            liveness_required=False,
            liveness_threshold=None,
            windows={},
            total_entries=len(entries),
        )
        chunks = p.allowlist_chunks(header, entries)
        raws = [
            p.seal(
                p.Command(
                    device_uid=config.device.uid,
                    command="allowlist",
                    command_id=p.new_id(),
                    issued_at=time.time(),
                    reason="allowlist",
                    data=chunk.to_dict(),
                ),
                server_private,
            )
            for chunk in chunks
        ]
        started = time.perf_counter()
        for raw in raws:
            agent.link._on_message(agent.link.client, None, mqtt_message(raw, config.device.uid))
        assert agent.wait_allowlist_applied(600), "list not applied in time"
        apply_s = time.perf_counter() - started
        assert agent.allowlist is not None and agent.allowlist.valid() is not None, "list not applied"
        for _ in range(3):  # warm-up (first runs allocate)
            agent.send_candidate(visitor, captured_at=time.time())
        skip = len(agent.door.latencies_ms())
        cpu_ms = []
        for _ in range(args.rounds):
            cpu = time.process_time()
            sent, _ = agent.send_candidate(visitor, captured_at=time.time())
            cpu_ms.append((time.process_time() - cpu) * 1000.0)
            assert sent.offline_decision is not None and sent.offline_decision.reason == "matched"
        latencies = agent.door.latencies_ms()[skip:]
        match_ms = []
        for _ in range(args.rounds):  # the list's part alone (match, liveness, schedules), no model
            start = time.perf_counter()
            agent.allowlist.decide(own, at=time.time(), liveness=None)
            match_ms.append((time.perf_counter() - start) * 1000.0)
        embed_ms = []
        for _ in range(args.rounds):  # the model's part alone
            start = time.perf_counter()
            list_embedder.embed(visitor)
            embed_ms.append((time.perf_counter() - start) * 1000.0)
        agent.stop()
    wire_bytes = sum(len(r) for r in raws)
    result = {
        "people": args.people,
        "templates_per_person": args.templates,
        "threads": args.threads,
        "embedder": list_embedder.model_version,
        "model_load_s": round(load_s, 2),
        "chunks": len(raws),
        "allowlist_bytes_per_person": round(wire_bytes / args.people, 1),
        "apply_s": round(apply_s, 3),
        "offline_decision_p50_ms": round(statistics.median(latencies), 2),
        "offline_decision_p95_ms": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 2),
        "embed_p50_ms": round(statistics.median(embed_ms), 2),
        "match_p50_ms": round(statistics.median(match_ms), 3),
        # CPU time of the whole detection (embed, match, relay, JPEG, sign, spool), all threads: on a
        # shared, loaded machine the wall-clock figures above overstate what an idle device takes
        "send_candidate_cpu_p50_ms": round(statistics.median(cpu_ms), 2),
        "relay_pulses": len(relay.pulses),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")


if __name__ == "__main__":
    main()
