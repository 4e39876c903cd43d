#!/usr/bin/env python3
"""The multi-process topology on real services, on one host: what a site spread over machines runs.

    deploy/topology.py start [NAME ...]   provision (first time) and start everything, or only NAMEs
    deploy/topology.py stop               stop every process (services and data stay)
    deploy/topology.py status             one line per process; exit 3 when one is down
    deploy/topology.py kill NAME ...      SIGKILL processes (their whole process group): fault drills
    deploy/topology.py destroy            stop, then drop the database, its roles and the RabbitMQ vhost

What ``start`` does (each step idempotent):

1. PostgreSQL (a real server with pgvector; on Debian see deploy/pgvector-install.sh): two login
   roles and the database with ``manage.py db_provision`` (a superuser's URL), then ``manage.py
   migrate`` as the owner role; the processes log in as the application role (accessctl/project/dbroles.py).
2. RabbitMQ as the Celery broker: a vhost of its own (``rabbitmqctl``, when the broker is on this host).
3. Redis for the channel layer, Celery results, the cache and the heartbeats.
4. Mosquitto, our own instance on free ports (the system one is left alone) with the door-trust
   model: ``manage.py mqtt_identities`` writes the password/ACL files, a listener for devices
   (client id = username) and one for the server on loopback (accessctl/project/mqtt_identities.py);
   persistence on, so sessions survive a broker restart; its pid file lets the server SIGHUP it
   when devices are provisioned or revoked (``ACCESSCTL_MQTT_BROKER_PIDFILE``).
5. Processes: ``bridge-1..N`` on one shared subscription (``$share/<group>/...``, persistent
   sessions, QoS 1), ``worker-1..N`` (Celery, acks late), ``gallery-1`` (the gallery queue: model
   promotions), ``web-1..N`` (daphne), one ``beat``.

Everything lives in the run folder (``--run-dir``, ``TOPOLOGY_RUN_DIR``, default ``var/topology``):
``topology.env`` (0600, the processes' environment: ``set -a; . topology.env`` gives a shell the same
settings, e.g. to run ``manage.py``), ``topology.json`` (ports, pids), ``logs/``, ``secrets/``,
``mosquitto/``. Environment variables (defaults in brackets) point it at other services:

    TOPOLOGY_PG_ADMIN_URL    a superuser's URL [postgresql://postgres@127.0.0.1:5432/postgres]
    TOPOLOGY_DB_NAME         database [accessctl_topology]; roles <name>_owner and <name>_app
    TOPOLOGY_DB_HOST/PORT    where the processes connect [the admin URL's host and port]
    TOPOLOGY_AMQP_URL        Celery broker [amqp://guest:guest@127.0.0.1:5672/<TOPOLOGY_AMQP_VHOST>]
    TOPOLOGY_AMQP_VHOST      [accessctl-topology]
    TOPOLOGY_REDIS_URL       [redis://127.0.0.1:6379/6]
    TOPOLOGY_MOSQUITTO       the broker binary [mosquitto]
    TOPOLOGY_MQTT_DEVICE_PORT / TOPOLOGY_MQTT_SERVER_PORT   [free ports, kept in topology.json]
    TOPOLOGY_MQTT_GROUP      the bridges' shared subscription group [accessctl-bridges]
    TOPOLOGY_BRIDGES / TOPOLOGY_WORKERS / TOPOLOGY_WEBS   process counts [2 / 2 / 2]
    TOPOLOGY_WORKER_CONCURRENCY   Celery pool size of each worker [2]
    TOPOLOGY_WEB_HOST        web listen address [127.0.0.1]; ports free, kept in topology.json
    TOPOLOGY_SETTINGS        more settings for every process, "KEY=value KEY2=value2" (kept from the first start)
    TOPOLOGY_OBSERVER_DIR    test only: a folder with extra.passwd/extra.acl (tests/broker_logins.py)
                             gets a third, loopback listener (observer_port in topology.json)

No Django in this file: it runs ``manage.py`` and the server processes with the settings it writes.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("TOPOLOGY_PYTHON", sys.executable)
MANAGE = str(ROOT / "manage.py")
STOP_ORDER = ("web", "bridge", "beat", "worker", "gallery", "mosquitto")  # front to back
READY_TIMEOUT_S = 120.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def _secret(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


@dataclass
class Topology:
    run_dir: Path
    state: dict = field(default_factory=dict)

    # --- configuration ------------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.run_dir / "topology.json"

    @property
    def env_file(self) -> Path:
        return self.run_dir / "topology.env"

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def load(self) -> None:
        self.state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    def configure(self) -> None:
        """Fix ports, counts and names on the first start (later starts reuse them)."""
        s = self.state
        admin = urlsplit(_env("TOPOLOGY_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
        s.setdefault("pg_admin_url", admin.geturl())
        s.setdefault("db_name", _env("TOPOLOGY_DB_NAME", "accessctl_topology"))
        s.setdefault("db_host", _env("TOPOLOGY_DB_HOST", admin.hostname or "127.0.0.1"))
        s.setdefault("db_port", int(_env("TOPOLOGY_DB_PORT", str(admin.port or 5432))))
        vhost = _env("TOPOLOGY_AMQP_VHOST", "accessctl-topology")
        amqp = f"amqp://guest:guest@127.0.0.1:5672/{quote(vhost, safe='')}"
        s.setdefault("amqp_url", _env("TOPOLOGY_AMQP_URL", amqp))
        s.setdefault("redis_url", _env("TOPOLOGY_REDIS_URL", "redis://127.0.0.1:6379/6"))
        s.setdefault("mqtt_group", _env("TOPOLOGY_MQTT_GROUP", "accessctl-bridges"))
        s.setdefault("mqtt_device_port", int(_env("TOPOLOGY_MQTT_DEVICE_PORT", str(_free_port()))))
        s.setdefault("mqtt_server_port", int(_env("TOPOLOGY_MQTT_SERVER_PORT", str(_free_port()))))
        observer = os.environ.get("TOPOLOGY_OBSERVER_DIR")
        if observer:
            s.setdefault("observer_dir", str(Path(observer).resolve()))
            s.setdefault("observer_port", _free_port())
        s.setdefault("bridges", int(_env("TOPOLOGY_BRIDGES", "2")))
        s.setdefault("workers", int(_env("TOPOLOGY_WORKERS", "2")))
        s.setdefault("webs", int(_env("TOPOLOGY_WEBS", "2")))
        s.setdefault("worker_concurrency", int(_env("TOPOLOGY_WORKER_CONCURRENCY", "2")))
        s.setdefault("web_host", _env("TOPOLOGY_WEB_HOST", "127.0.0.1"))
        s.setdefault("web_ports", [_free_port() for _ in range(s["webs"])])
        s.setdefault("log_level", _env("ACCESSCTL_LOG_LEVEL", "INFO"))  # readiness is read from INFO lines
        # More settings for every process (kept, so a process started again later gets the same ones).
        extra = [item.partition("=") for item in shlex.split(os.environ.get("TOPOLOGY_SETTINGS", ""))]
        s.setdefault("settings", {key: value for key, _, value in extra if key})
        s.setdefault("pids", {})

    def environment(self) -> dict[str, str]:
        """The settings every server process gets (accessctl/project/settings.py reads them)."""
        s, secret_dir = self.state, self.run_dir / "secrets"
        db = s["db_name"]
        owner_pw, app_pw = _secret(secret_dir / "db-owner-password"), _secret(secret_dir / "db-app-password")
        mqtt_pw = _secret(secret_dir / "mqtt-server-password")
        host = f"{s['db_host']}:{s['db_port']}"
        var = self.run_dir / "var"
        return {
            "DJANGO_SETTINGS_MODULE": "accessctl.project.settings",
            "DJANGO_SECRET_KEY": _secret(secret_dir / "django-secret-key"),
            "ACCESSCTL_VAR_DIR": str(var),
            "DATABASE_URL": f"postgresql://{db}_app:{app_pw}@{host}/{db}",
            "DATABASE_OWNER_URL": f"postgresql://{db}_owner:{owner_pw}@{host}/{db}",
            "CELERY_BROKER_URL": s["amqp_url"],
            "REDIS_URL": s["redis_url"],
            "CELERY_RESULT_BACKEND": s["redis_url"],
            "MQTT_URL": f"mqtt://accessctl-server:{mqtt_pw}@127.0.0.1:{s['mqtt_server_port']}",
            "MQTT_SHARED_GROUP": s["mqtt_group"],
            "ACCESSCTL_MQTT_AUTH_DIR": str(self.run_dir / "mqtt-auth"),
            "ACCESSCTL_MQTT_BROKER_PIDFILE": str(self.run_dir / "mosquitto" / "mosquitto.pid"),
            "PROMETHEUS_MULTIPROC_DIR": str(var / "metrics"),
            "ACCESSCTL_LOG_LEVEL": s["log_level"],
            **s.get("settings", {}),
        }

    def env_write(self, env: dict[str, str]) -> None:
        text = "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(env.items()))
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("# written by deploy/topology.py: the server processes' settings\n" + text)

    def child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.environment(), **(extra or {})}

    # --- provisioning -------------------------------------------------------------------------------

    def manage(self, *args: str) -> None:
        log = self.logs / "provision.log"
        with log.open("ab") as handle:
            done = subprocess.run([PYTHON, MANAGE, *args], env=self.child_env(), cwd=ROOT, stdout=handle,
                                  stderr=subprocess.STDOUT)  # fmt: skip
        if done.returncode:
            raise SystemExit(f"manage.py {' '.join(args[:1])} failed; see {log}")

    def rabbitmq_vhost(self) -> None:
        url = urlsplit(self.state["amqp_url"])
        vhost = url.path[1:] or "/"
        ctl = shutil.which("rabbitmqctl")
        if vhost == "/" or ctl is None or url.hostname not in ("127.0.0.1", "localhost", "::1"):
            return  # a remote broker: its operator creates the vhost
        subprocess.run([ctl, "-q", "add_vhost", vhost], capture_output=True)  # fails harmlessly when it exists
        done = subprocess.run([ctl, "-q", "set_permissions", "-p", vhost, url.username or "guest", ".*", ".*", ".*"],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode:
            raise SystemExit(f"rabbitmqctl set_permissions on {vhost}: {done.stderr.strip()}")

    def mosquitto_conf(self) -> Path:
        s, folder = self.state, self.run_dir / "mosquitto"
        folder.mkdir(parents=True, exist_ok=True)
        auth = self.run_dir / "mqtt-auth"
        lines = [
            "# written by deploy/topology.py",
            "per_listener_settings true",
            f"user {getpass.getuser()}",
            f"pid_file {folder / 'mosquitto.pid'}",
            "persistence true",
            f"persistence_location {folder}/",
            "autosave_interval 10",
            "max_queued_messages 100000",  # detections queued for a bridge that is down (persistent session)
            "max_inflight_messages 100",
            "set_tcp_nodelay true",
            f"log_dest file {self.logs / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
            "# devices: username = device uid, client id forced to the username",
            f"listener {s['mqtt_device_port']}",
            "allow_anonymous false",
            "use_username_as_clientid true",
            f"password_file {auth / 'devices.passwd'}",
            f"acl_file {auth / 'devices.acl'}",
            "",
            "# the server: bridges and command publishers (loopback; a private network across machines)",
            f"listener {s['mqtt_server_port']} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {auth / 'server.passwd'}",
            f"acl_file {auth / 'server.acl'}",
        ]
        if s.get("observer_dir"):
            for file in ("extra.passwd", "extra.acl"):  # nobody until a test writes its login there
                path = Path(s["observer_dir"]) / file
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists():
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            lines += [
                "",
                "# test only: an observer that reads every command (tests/broker_logins.py)",
                f"listener {s['observer_port']} 127.0.0.1",
                "allow_anonymous false",
                f"password_file {Path(s['observer_dir']) / 'extra.passwd'}",
                f"acl_file {Path(s['observer_dir']) / 'extra.acl'}",
            ]
        conf = folder / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def provision(self) -> None:
        print("provisioning: database and roles, migrations, RabbitMQ vhost, broker identities", flush=True)
        self.manage("db_provision", "--admin-url", self.state["pg_admin_url"])
        self.manage("migrate", "--no-input")
        self.rabbitmq_vhost()
        self.manage("mqtt_identities")  # server + enabled devices -> mqtt-auth/

    # --- processes ------------------------------------------------------------------------------------

    def specs(self) -> dict[str, tuple[list[str], dict[str, str], str]]:
        """name -> (argv, extra environment, ready: a log line or ``port:N``)."""
        s = self.state
        out: dict[str, tuple[list[str], dict[str, str], str]] = {}
        mosquitto = _env("TOPOLOGY_MOSQUITTO", shutil.which("mosquitto") or "/usr/sbin/mosquitto")
        out["mosquitto"] = ([mosquitto, "-c", str(self.run_dir / "mosquitto" / "mosquitto.conf")], {},
                            f"port:{s['mqtt_server_port']}")  # fmt: skip
        for i in range(1, s["workers"] + 1):
            argv = [PYTHON, "-m", "celery", "-A", "accessctl.project", "worker", "-Q", "recognition,default",
                    "--concurrency", str(s["worker_concurrency"]), "--prefetch-multiplier", "1", "-l", "INFO",
                    "-n", f"worker-{i}@%h", "--without-gossip", "--without-mingle"]  # fmt: skip
            out[f"worker-{i}"] = (argv, {"MQTT_CLIENT_ID": f"accessctl-worker-{i}"}, "ready.")
        # Gallery builds of a promoted model version: one niced, single-threaded worker of their own.
        argv = [PYTHON, "-m", "celery", "-A", "accessctl.project", "worker", "-Q", "gallery", "--concurrency", "1",
                "--prefetch-multiplier", "1", "-l", "INFO", "-n", "gallery-1@%h", "--without-gossip",
                "--without-mingle"]  # fmt: skip
        out["gallery-1"] = (argv, {"MQTT_CLIENT_ID": "accessctl-gallery-1", "ACCESSCTL_TORCH_THREADS": "1",
                                   "ACCESSCTL_ORT_THREADS": "1"}, "ready.")  # fmt: skip
        for i in range(1, s["bridges"] + 1):
            client_id = f"accessctl-bridge-{i}"
            argv = [PYTHON, MANAGE, "mqtt_bridge", "--client-id", client_id, "--shared-group", s["mqtt_group"]]
            out[f"bridge-{i}"] = (argv, {"MQTT_CLIENT_ID": client_id}, "bridge connected")
        for i, port in enumerate(s["web_ports"], start=1):
            argv = [PYTHON, "-m", "accessctl.project.web_server", "-b", s["web_host"], "-p", str(port),
                    "accessctl.project.asgi:application"]  # fmt: skip
            out[f"web-{i}"] = (argv, {"MQTT_CLIENT_ID": f"accessctl-web-{i}"}, f"port:{port}")
        schedule = str(self.run_dir / "var" / "celerybeat-schedule")
        out["beat"] = ([PYTHON, "-m", "celery", "-A", "accessctl.project", "beat", "-l", "INFO", "-s", schedule],
                       {"MQTT_CLIENT_ID": "accessctl-beat"}, "beat: Starting")  # fmt: skip
        return out

    def alive(self, name: str) -> bool:
        entry = self.state.get("pids", {}).get(name)
        if not entry:
            return False
        import psutil

        try:
            proc = psutil.Process(entry["pid"])
            return abs(proc.create_time() - entry["created"]) < 0.5 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def launch(self, names: list[str]) -> None:
        """Start ``names`` together (each in a process group of its own); wait until all are ready."""
        import psutil

        specs, started = self.specs(), time.monotonic()
        waiting: dict[str, tuple[subprocess.Popen, Path, int, str]] = {}
        for name in names:
            argv, extra, ready = specs[name]
            log = self.logs / f"{name}.log"
            offset = log.stat().st_size if log.exists() else 0
            with log.open("ab") as handle:
                proc = subprocess.Popen(
                    argv, env=self.child_env(extra), cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            self.state["pids"][name] = {"pid": proc.pid, "created": psutil.Process(proc.pid).create_time()}
            waiting[name] = (proc, log, offset, ready)
        self.save()
        deadline = started + READY_TIMEOUT_S
        while waiting:
            for name, (proc, log, offset, ready) in list(waiting.items()):
                if ready.startswith("port:"):
                    up = _port_open("127.0.0.1" if name == "mosquitto" else self.state["web_host"], int(ready[5:]))
                else:
                    with log.open("rb") as handle:
                        handle.seek(offset)
                        up = ready.encode() in handle.read()
                if up:
                    del waiting[name]
                    print(f"{name:10s} up in {time.monotonic() - started:4.1f}s (pid {proc.pid})", flush=True)
                elif proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise SystemExit(f"{name} did not become ready (see {log}):\n{tail}")
            time.sleep(0.1)

    def start(self, names: list[str]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        self.logs.mkdir(exist_ok=True)
        self.load()
        self.configure()
        self.save()
        self.env_write(self.environment())
        specs = self.specs()
        unknown = [n for n in names if n not in specs]
        if unknown:
            raise SystemExit(f"unknown process(es) {', '.join(unknown)}; known: {', '.join(specs)}")
        if names:  # some processes again (after a crash or a kill): together
            self.launch([name for name in names if not self.alive(name)])
            return
        self.provision()
        self.mosquitto_conf()
        metrics = self.run_dir / "var" / "metrics"  # prometheus_client's per-process files, as `up` does
        if metrics.is_dir() and not any(self.alive(name) for name in specs):
            shutil.rmtree(metrics)
        metrics.mkdir(parents=True, exist_ok=True)
        for name in specs:  # one at a time, mosquitto first, then workers, bridges, webs, beat
            if not self.alive(name):
                self.launch([name])

    def signal(self, names: list[str], sig: int) -> list[str]:
        sent = []
        for name in names:
            if self.alive(name):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.state["pids"][name]["pid"], sig)
                    sent.append(name)
        return sent

    def ordered(self) -> list[str]:
        names = list(self.state.get("pids", {}))
        return sorted(names, key=lambda n: STOP_ORDER.index(n.split("-")[0]) if n.split("-")[0] in STOP_ORDER else 9)

    def stop(self) -> None:
        self.load()
        for name in self.ordered():  # front to back, each group given time to finish its work
            if not self.signal([name], signal.SIGTERM):
                continue
            deadline = time.monotonic() + 15
            while self.alive(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.signal([name], signal.SIGKILL):
                print(f"{name}: killed after 15 s", flush=True)
        print("stopped", flush=True)

    def kill(self, names: list[str]) -> None:
        self.load()
        for name in self.signal(names, signal.SIGKILL):
            print(f"{name}: SIGKILL", flush=True)

    def status(self) -> int:
        self.load()
        if not self.state:
            print(f"no topology in {self.run_dir}")
            return 3
        down = 0
        for name in self.specs():
            up = self.alive(name)
            down += not up
            pid = self.state.get("pids", {}).get(name, {}).get("pid", "-")
            print(f"{name:10s} {'up' if up else 'DOWN':4s} pid {pid}")
        s = self.state
        webs = ", ".join(f"{s['web_host']}:{port}" for port in s["web_ports"])
        print(f"mqtt devices :{s['mqtt_device_port']}  server 127.0.0.1:{s['mqtt_server_port']}  web {webs}  "
              f"database {s['db_name']}")  # fmt: skip
        return 3 if down else 0

    def destroy(self) -> None:
        self.stop()
        s = self.state
        if not s:
            return
        import psycopg
        from psycopg import sql

        with psycopg.connect(s["pg_admin_url"], autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(s["db_name"])))
            for role in (f"{s['db_name']}_app", f"{s['db_name']}_owner"):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        url = urlsplit(s["amqp_url"])
        ctl = shutil.which("rabbitmqctl")
        if ctl and url.path[1:] and url.hostname in ("127.0.0.1", "localhost", "::1"):
            subprocess.run([ctl, "-q", "delete_vhost", url.path[1:]], capture_output=True)
        print(f"dropped database {s['db_name']}, its roles and the vhost; files stay in {self.run_dir}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path(_env("TOPOLOGY_RUN_DIR", str(ROOT / "var" / "topology"))))
    parser.add_argument("action", choices=["start", "stop", "status", "kill", "destroy"])
    parser.add_argument("names", nargs="*", help="processes (start, kill): mosquitto, worker-1, bridge-1, web-1, beat")
    args = parser.parse_args(argv)
    topology = Topology(args.run_dir.resolve())
    if args.action == "start":
        topology.start(args.names)
    elif args.action == "stop":
        topology.stop()
    elif args.action == "status":
        return topology.status()
    elif args.action == "kill":
        topology.kill(args.names)
    else:
        topology.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
