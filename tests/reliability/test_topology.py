"""The multi-process topology of deploy/topology.py on the machine's real services, under load and faults.

deploy/topology.py provisions and starts: PostgreSQL (the machine's server, with pgvector; our own
database and roles), RabbitMQ (a vhost of our own) as the Celery broker, Redis, our own Mosquitto
with per-device logins and ACLs, two bridges on one shared subscription, two Celery workers, two
web processes and beat. bench/load_test.py then offers 100 signed detections a second from 50
simulated devices (each logged in as itself on the devices' listener) and, 10 s in, SIGKILLs one
bridge, one worker and one web process and starts them again 2 s later. Every detection must end
in exactly one access event and one signed door command. Then a bridge is killed for good: the
other takes its session over (devices.bridge_takeover) and again every detection is answered.

Needs PostgreSQL on 127.0.0.1:5432 with a superuser that logs in without a password and pgvector
installed (deploy/pgvector-install.sh), RabbitMQ on 5672 with rabbitmqctl, Redis on 6379 and the
mosquitto binary; skipped otherwise. Names (database, roles, vhost, shared group) are unique per run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import rig

pytestmark = [pytest.mark.realservices, pytest.mark.slow, pytest.mark.e2e, pytest.mark.dataset("lfw")]

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("TOPOLOGY_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RATE_PER_DEVICE, DEVICES, DURATION_S = 2.0, 50, 30.0  # 100 detections/s for 30 s
KILLED = ("bridge-1", "worker-1", "web-1")
# Settings the test session gave itself (its embedded services): not for the topology's processes.
_SESSION_PREFIXES = ("ACCESSCTL_", "DJANGO_", "DATABASE_", "MQTT_", "CELERY_", "REDIS_", "CHANNELS_", "CACHE_",
                     "PROMETHEUS_", "TOPOLOGY_")  # fmt: skip
_KEEP = {"ACCESSCTL_MODELS_DIR", "ACCESSCTL_RESEARCH_DATA", "ACCESSCTL_LFW", "TOPOLOGY_PG_ADMIN_URL"}


def _services_missing() -> str | None:
    for name, port in (("PostgreSQL", 5432), ("RabbitMQ", 5672), ("Redis", 6379)):
        if not rig.port_open("127.0.0.1", port):
            return f"{name} is not listening on 127.0.0.1:{port}"
    for binary in ("mosquitto", "rabbitmqctl"):
        if not (shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists()):
            return f"{binary} is not installed"
    import psycopg

    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
            row = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    except psycopg.Error as exc:
        return f"cannot log in to PostgreSQL as {PG_ADMIN_URL}: {exc}"
    if row is None:
        return "pgvector is not installed in the machine's PostgreSQL (deploy/pgvector-install.sh)"
    return None


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP or not k.startswith(_SESSION_PREFIXES)}
    env["PATH"] = f"{env.get('PATH', '')}:/usr/sbin:/usr/local/sbin"
    return {**env, **extra}


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    missing = _services_missing()
    if missing:
        pytest.skip(missing)
    tmp_path = tmp_path_factory.mktemp("topology")
    run_id = uuid.uuid4().hex[:8]
    run_dir = tmp_path / "topology"
    env = _clean_env(
        TOPOLOGY_DB_NAME=f"accessctl_topo_{run_id}",
        TOPOLOGY_AMQP_VHOST=f"accessctl-topo-{run_id}",
        TOPOLOGY_REDIS_URL=f"redis://127.0.0.1:6379/{random.Random(run_id).randint(1, 15)}",
        TOPOLOGY_MQTT_GROUP=f"bridges-{run_id}",
        TOPOLOGY_OBSERVER_DIR=str(tmp_path / "observer"),
        # heartbeats every 2 s: a bridge silent for 6 s is taken for dead and its session drained
        TOPOLOGY_SETTINGS="ACCESSCTL_PROCESS_HEARTBEAT_S=2 MQTT_BRIDGE_TAKEOVER_AFTER_S=6",
        ACCESSCTL_LOG_LEVEL="INFO",
    )
    script = [sys.executable, str(ROOT / "deploy" / "topology.py"), "--run-dir", str(run_dir)]
    try:
        started = subprocess.run([*script, "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield run_dir, env
    finally:
        subprocess.run([*script, "destroy"], env=env, cwd=ROOT, capture_output=True, timeout=120)


def _bench(run_dir: Path, env: dict[str, str], out: Path, *, kill: tuple[str, ...], restart_after: float,
           duration_s: float = DURATION_S) -> dict:  # fmt: skip
    bench = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load_test.py"), "--topology", str(run_dir),
         "--rate", str(RATE_PER_DEVICE), "--devices", str(DEVICES), "--crop-share", "0",
         "--duration", str(duration_s), "--kill", ",".join(kill), "--kill-at", "10",
         "--restart-after", str(restart_after), "--drain-timeout", "180", "--json", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(bench.stdout[-4000:])
    assert out.exists(), bench.stdout[-3000:] + bench.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["faults_ok"], figures["faults"]
    assert [line for line in figures["faults"] if "SIGKILL" in line] == [f"{name}: SIGKILL" for name in kill]
    assert abs(figures["sent"] - int(RATE_PER_DEVICE * DEVICES * duration_s)) <= DEVICES, figures
    assert figures["lost"] == 0 and figures["still_staged"] == 0, figures
    assert figures["duplicated"] == 0 and figures["commands_repeated"] == 0, figures
    assert figures["decided"] == figures["sent"], figures
    assert figures["answered"] == figures["sent"], f"detections without a door command: {figures}"
    assert bench.returncode == 0, bench.stdout[-3000:]
    print(f"topology figures: sent {figures['sent']}, decided {figures['decided']}, lost {figures['lost']}, "
          f"duplicated {figures['duplicated']}, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
          f"{figures['decisions_per_s']} decisions/s, reasons {figures['reasons']}")  # fmt: skip
    return figures


def test_load_through_the_topology_with_a_bridge_a_worker_and_a_web_killed(topology, tmp_path: Path) -> None:
    run_dir, env = topology
    _bench(run_dir, env, tmp_path / "figures.json", kill=KILLED, restart_after=2.0)
    # The killed processes are back: every process of the topology is up, the restarted web answers.
    status = subprocess.run([sys.executable, str(ROOT / "deploy" / "topology.py"), "--run-dir", str(run_dir), "status"],
                            env=env, cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert status.returncode == 0, status.stdout
    state = json.loads((run_dir / "topology.json").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{state['web_ports'][0]}/healthz", timeout=10) as response:
        assert response.status == 200


def test_a_bridge_that_never_comes_back_is_drained_by_the_other(topology, tmp_path: Path) -> None:
    """Mosquitto keeps queuing the dead bridge's share; the live one takes its session over
    (devices.bridge_takeover) and every detection is still answered."""
    run_dir, env = topology
    _bench(run_dir, env, tmp_path / "figures.json", kill=("bridge-2",), restart_after=-1, duration_s=20.0)
    log = (run_dir / "logs" / "bridge-1.log").read_text()
    assert "drain of bridge accessctl-bridge-2: drained" in log, log[-3000:]
