"""Valkey/Redis: nobody without the password enqueues Celery tasks or injects dashboard events.

A local user who could reach the embedded Valkey forged a ``bulk_import_run`` (it deleted the media
folder) and pushed events into the dashboard through the channel layer. The embedded Valkey now
requires a password generated into ``var/valkey-password`` (0600) that the settings of every process
read; a real Redis takes ``redis://user:password@`` or ``rediss://`` URLs with verified TLS.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from asgiref.sync import async_to_sync
from celery import Celery
from channels_redis.core import RedisChannelLayer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.exceptions import ImproperlyConfigured
from kombu.exceptions import OperationalError

from accessctl.project import embedded
from accessctl.project.redis_options import redis_tls_options
from accessctl.realtime import DASHBOARD_GROUP

ROOT = Path(__file__).resolve().parents[3]
# Variables that point the settings at a Redis: removed so each child process gets only what we set.
REDIS_VARS = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CHANNELS_REDIS_URL", "CACHE_REDIS_URL",
              "REDIS_CA_FILE", "REDIS_CERT_FILE", "REDIS_KEY_FILE")  # fmt: skip


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[embedded.ChildService, str, Path]]:
    """An embedded Valkey started the way ``up`` starts it: its password in ``var/valkey-password``."""
    var = tmp_path_factory.mktemp("var")
    password = embedded.secret_file_ensure(var / "valkey-password")
    service = embedded.start_valkey(var / "valkey", password=password)
    yield service, password, var
    service.stop()


def _roundtrip(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.accessctl.project.redis_roundtrip", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _child_env(var: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REDIS_VARS}
    return {**env, "ACCESSCTL_VAR_DIR": str(var), "ACCESSCTL_LOG_LEVEL": "WARNING", **extra}


def test_valkey_refuses_a_forged_bulk_import_without_the_password(valkey) -> None:
    """The reported attack: a Celery message for ``bulk_import_run`` pushed by a local user is refused."""
    service, password, _ = valkey
    forger = Celery("forger", broker=f"redis://{service.host}:{service.port}/0", set_as_current=False)
    forger.conf.broker_transport_options = {"max_retries": 0}  # refused for good: no need to retry
    with pytest.raises(OperationalError, match=r"(?i)auth"):
        forger.send_task(
            "recognition.bulk_import_run", kwargs={"job_id": "forged", "user_id": None}, queue="default", retry=False
        )
    raw = redis.Redis(host=service.host, port=service.port, protocol=2)  # as redis-cli speaks
    with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
        raw.lpush("default", json.dumps({"headers": {"task": "recognition.bulk_import_run"}}))
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=service.host, port=service.port, password="not-the-password").ping()

    owner = redis.Redis(host=service.host, port=service.port, password=password)
    assert owner.llen("default") == 0, "a forged task reached the queue"
    url = embedded.valkey_url(host=service.host, port=service.port, password=password)
    owner_app = Celery("owner", broker=url, set_as_current=False)  # the process's own app stays current
    owner_app.send_task("recognition.bulk_import_run", kwargs={"job_id": "x"}, queue="default")
    assert owner.llen("default") == 1, "the password URL enqueues"
    owner.delete("default")


def test_valkey_refuses_dashboard_events_without_the_password(valkey) -> None:
    service, password, _ = valkey
    forged = {"type": "event.created", "event": {"decision": "granted", "door": "Main"}}
    intruder = RedisChannelLayer(hosts=[f"redis://{service.host}:{service.port}/0"])
    with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
        async_to_sync(intruder.group_send)(DASHBOARD_GROUP, forged)
    with pytest.raises(redis.AuthenticationError, match=r"(?i)authenticat"):
        redis.Redis(host=service.host, port=service.port, protocol=2).publish("asgi__group__dashboard", b"x")

    layer = RedisChannelLayer(hosts=[embedded.valkey_url(host=service.host, port=service.port, password=password)])

    async def deliver() -> dict:
        channel = await layer.new_channel()
        await layer.group_add(DASHBOARD_GROUP, channel)
        await layer.group_send(DASHBOARD_GROUP, forged)
        return await layer.receive(channel)

    assert async_to_sync(deliver)()["event"] == forged["event"]


def test_embedded_valkey_binds_loopback_in_protected_mode_with_a_private_config(valkey) -> None:
    service, password, var = valkey
    owner = redis.Redis(host=service.host, port=service.port, password=password)
    config = owner.config_get("*")
    assert config["bind"].split() == ["127.0.0.1"]
    assert config["protected-mode"] == "yes"
    assert config["requirepass"] == password
    assert (var / "valkey-password").stat().st_mode & 0o777 == 0o600
    assert (var / "valkey" / f"valkey-{service.port}.conf").stat().st_mode & 0o777 == 0o600
    assert password not in " ".join(Path(f"/proc/{service.process.pid}/cmdline").read_text().split("\0"))


def test_settings_read_the_password_file_so_every_process_connects(valkey) -> None:
    """No REDIS_URL: the settings of a child process build the embedded URL with the password from
    ``var/valkey-password``; Celery's broker and results, the channel layer and the cache all work."""
    service, password, var = valkey
    result = _roundtrip(_child_env(var, ACCESSCTL_VALKEY_PORT=str(service.port)))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"broker_use_ssl": False, "redis_backend_use_ssl": False, "channels": {}, "cache": {},
                      "roundtrip": "ok"}  # fmt: skip
    assert password not in result.stdout + result.stderr


def test_secret_file_is_generated_once_0600_and_shared_by_processes_starting_together(tmp_path: Path) -> None:
    path = tmp_path / "var" / "valkey-password"
    code = (
        "import sys, pathlib; from accessctl.project import embedded; "
        "print(embedded.secret_file_ensure(pathlib.Path(sys.argv[1])))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(6)]  # fmt: skip
    values = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(values) == 1 and len(values.pop()) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["valkey-password"], "a temporary file was left"

    path.chmod(0o644)  # loosened by hand: tightened again when read
    assert embedded.secret_file_ensure(path) and path.stat().st_mode & 0o777 == 0o600


def test_start_valkey_never_logs_its_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = embedded.secret_file_ensure(tmp_path / "valkey-password")
    with caplog.at_level(logging.DEBUG):
        service = embedded.start_valkey(tmp_path / "valkey", password=password)
    try:
        assert "password required" in caplog.text and password not in caplog.text
        assert password not in repr(service)
        assert password not in (tmp_path / "valkey" / f"valkey-{service.port}.log").read_text()
    finally:
        service.stop()
    with pytest.raises(ValueError, match="16 URL-safe"):
        embedded.start_valkey(tmp_path / "valkey", password="short")


# --- A real Redis: password URLs and TLS.


def test_rediss_url_gives_every_client_verified_tls(tmp_path: Path) -> None:
    """Configuration: a rediss:// URL gives Celery's broker and results, channels-redis and the cache the
    TLS options, with the CA from REDIS_CA_FILE and certificate verification required."""
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder: read only when connecting")
    env = _child_env(tmp_path, REDIS_URL="rediss://:pass@redis.example:6380/0", REDIS_CA_FILE=str(ca))
    result = _roundtrip(env, "--config-only")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {"ssl_cert_reqs": "CERT_REQUIRED", "ssl_ca_certs": str(ca)}
    assert report == {"broker_use_ssl": expected, "redis_backend_use_ssl": expected, "channels": expected,
                      "cache": expected}  # fmt: skip

    plain = _roundtrip({**env, "REDIS_URL": "redis://user:pass@redis.example:6379/0"}, "--config-only")
    assert json.loads(plain.stdout.strip().splitlines()[-1])["broker_use_ssl"] is False

    refused = _roundtrip(
        {**env, "REDIS_URL": "rediss://:pass@redis.example:6380/0?ssl_cert_reqs=none"}, "--config-only"
    )
    assert refused.returncode != 0 and "may not turn certificate verification off" in refused.stderr


def test_redis_tls_options_fail_closed(tmp_path: Path) -> None:
    assert redis_tls_options("redis://:p@h:6379/0", ca_file=str(tmp_path / "missing")) == {}
    assert redis_tls_options("rediss://h:6380/0") == {"ssl_cert_reqs": __import__("ssl").CERT_REQUIRED}
    with pytest.raises(ImproperlyConfigured, match="REDIS_CA_FILE"):
        redis_tls_options("rediss://h:6380/0", ca_file=str(tmp_path / "missing"))
    with pytest.raises(ImproperlyConfigured, match="verification"):
        redis_tls_options("rediss://h:6380/0?ssl_cert_reqs=optional")


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accessctl test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths[2].write_bytes(key_pem)
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The machine's ``redis-server`` binary, started here with a password, an ACL user and a TLS port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    work = tmp_path_factory.mktemp("redis")
    ca, cert, key = _tls_files(work)
    info: dict[str, object] = {
        "password": "default-pass-0123456789", "user": "accessctl", "user_password": "p@ss/w:rd 1",
        "port": embedded.free_port(), "tls_port": embedded.free_port(), "ca": ca,
    }  # fmt: skip
    config = work / "redis.conf"
    config.write_text(
        f"bind 127.0.0.1\nport {info['port']}\ntls-port {info['tls_port']}\ntls-cert-file {cert}\n"
        f"tls-key-file {key}\ntls-ca-cert-file {ca}\ntls-auth-clients no\nrequirepass {info['password']}\n"
        f'user accessctl on ">{info["user_password"]}" ~* &* +@all\nsave ""\nappendonly no\ndir {work}\n'
    )
    log = work / "redis.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([binary, str(config)], stdout=out, stderr=out, start_new_session=True)
    try:
        for port in (info["port"], info["tls_port"]):
            embedded.child_wait_listening(proc, name="redis-server", host="127.0.0.1", port=port, setting="-", log=log)
        yield info
    finally:
        proc.terminate()
        proc.wait(10)


def test_password_url_with_a_user_reaches_a_real_redis(redis_server, tmp_path: Path) -> None:
    """``redis://user:password@`` (a password with URL-special characters, quoted) for every client."""
    user, password = redis_server["user"], quote(str(redis_server["user_password"]), safe="")
    url = f"redis://{user}:{password}@127.0.0.1:{redis_server['port']}/3"
    result = _roundtrip(_child_env(tmp_path, REDIS_URL=url))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["roundtrip"] == "ok"
    assert str(redis_server["user_password"]) not in result.stdout + result.stderr

    wrong = _roundtrip(_child_env(tmp_path, REDIS_URL=f"redis://{user}:wrong@127.0.0.1:{redis_server['port']}/3"))
    assert wrong.returncode != 0 and "invalid username-password pair" in wrong.stderr


def test_rediss_url_reaches_a_real_redis_over_verified_tls(redis_server, tmp_path: Path) -> None:
    """``rediss://:password@`` with REDIS_CA_FILE: Celery's broker and results, the channel layer and the
    cache all talk TLS; without the CA the server's certificate is refused (verification is required)."""
    url = f"rediss://:{redis_server['password']}@127.0.0.1:{redis_server['tls_port']}/4"
    result = _roundtrip(_child_env(tmp_path, REDIS_URL=url, REDIS_CA_FILE=str(redis_server["ca"])))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["roundtrip"] == "ok"

    unverified = _roundtrip(_child_env(tmp_path, REDIS_URL=url))  # system CAs only: ours is unknown
    assert unverified.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in unverified.stderr
