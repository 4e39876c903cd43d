"""Who may use the MQTT broker: Mosquitto-compatible password and ACL files (no Django, no amqtt).

The server keeps the broker's identities as files (``devices.broker_auth`` writes them under
``MQTT_AUTH_DIR``), in formats that Mosquitto reads as they are, so the embedded broker
(``accessctl.project.embedded_mqtt``) and a real Mosquitto enforce the same model:

* ``server.passwd`` / ``server.acl``: the server identity (bridge, command publisher). Its client
  ids start with :data:`SERVER_CLIENT_ID_PREFIX`; it reads the devices' detections, heartbeats and
  status, writes their commands, and reads/writes ``acs/v1/bridge/#``.
* ``devices.passwd`` / ``devices.acl``: one entry per enabled device, username = device uid, client
  id = username; ACL patterns with ``%u`` (a device writes only its own detections/heartbeat/status
  and reads only its own commands).

Passwords are stored as Mosquitto ``$7$`` hashes (PBKDF2-SHA512, what ``mosquitto_passwd`` writes).
With Mosquitto, run two listeners with ``per_listener_settings true``: the devices' listener with
``use_username_as_clientid true`` (a device cannot pick another client id) and the server's with
the server files (see :func:`mosquitto_conf`); send it SIGHUP after the files change.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from faceengine import protocol as p

logger = logging.getLogger(__name__)

SERVER_CLIENT_ID_PREFIX = "accessctl-"
SERVER_FILES = ("server.passwd", "server.acl")
DEVICE_FILES = ("devices.passwd", "devices.acl")
#: Iterations of new hashes (``mosquitto_passwd`` 2.0 uses 101; passwords here are 256-bit random).
PBKDF2_ITERATIONS = 1000

# --- passwords (Mosquitto $7$ format) -------------------------------------------------------------


def password_hash(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """``$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``, as ``mosquitto_passwd`` writes."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def password_verify(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt_b64, digest_b64 = hashed.split("$")
        if kind != "7":
            return False
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got, digest)


def password_generate() -> str:
    return secrets.token_urlsafe(32)


def passwd_parse(text: str) -> dict[str, str]:
    users = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            user, hashed = line.split(":", 1)
            users[user] = hashed
    return users


def passwd_render(users: dict[str, str]) -> str:
    return "".join(f"{user}:{hashed}\n" for user, hashed in sorted(users.items()))


# --- ACL (Mosquitto acl_file format) --------------------------------------------------------------

READ, WRITE = "read", "write"


@dataclass(frozen=True)
class AclEntry:
    access: str  # read | write | readwrite
    topic: str
    pattern: bool  # True: applies to every user, %u / %c substituted


@dataclass
class Acl:
    users: dict[str, list[AclEntry]] = field(default_factory=dict)
    patterns: list[AclEntry] = field(default_factory=list)

    def entries(self, username: str, client_id: str) -> Iterable[tuple[str, str]]:
        for entry in self.users.get(username, []):
            yield entry.access, entry.topic
        for entry in self.patterns:
            yield entry.access, entry.topic.replace("%u", username).replace("%c", client_id)

    def may_publish(self, username: str, client_id: str, topic: str) -> bool:
        return any(WRITE in access and topic_matches(topic, acl) for access, acl in self.entries(username, client_id))

    def may_read(self, username: str, client_id: str, topic: str) -> bool:
        return any(READ in access and topic_matches(topic, acl) for access, acl in self.entries(username, client_id))

    def may_subscribe(self, username: str, client_id: str, topic_filter: str) -> bool:
        """Allowed when one read entry covers every topic the filter can match (as Mosquitto, a
        shared subscription ``$share/<group>/<filter>`` is checked as ``<filter>``)."""
        if topic_filter.startswith("$share/"):
            topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
        return any(
            READ in access and filter_covered(topic_filter, acl) for access, acl in self.entries(username, client_id)
        )


def acl_parse(text: str) -> Acl:
    acl = Acl()
    user: str | None = None
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        keyword, rest = words[0], (words[1] if len(words) > 1 else "")
        if keyword == "user":
            user = rest.strip()
            acl.users.setdefault(user, [])
            continue
        if keyword not in ("topic", "pattern"):
            continue
        parts = rest.split(None, 1)
        access, topic = (
            (parts[0], parts[1]) if parts[0] in ("read", "write", "readwrite", "deny") else ("readwrite", rest)
        )
        if access == "deny":
            continue  # never written by us; a deny entry grants nothing here
        entry = AclEntry(access=access, topic=topic.strip(), pattern=keyword == "pattern")
        if entry.pattern:
            acl.patterns.append(entry)
        elif user is not None:
            acl.users[user].append(entry)
    return acl


def topic_matches(topic: str, topic_filter: str) -> bool:
    """Does ``topic`` (no wildcards) match ``topic_filter``?"""
    levels, filters = topic.split("/"), topic_filter.split("/")
    for index, part in enumerate(filters):
        if part == "#":
            return True
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(levels) == len(filters)


def filter_covered(topic_filter: str, acl_filter: str) -> bool:
    """Is every topic matching ``topic_filter`` also matched by ``acl_filter``?"""
    levels, acls = topic_filter.split("/"), acl_filter.split("/")
    for index, part in enumerate(acls):
        if part == "#":
            return True
        if index >= len(levels) or levels[index] == "#":
            return False
        if part != "+" and part != levels[index]:
            return False
    return len(levels) == len(acls)


# --- what each identity may do ---------------------------------------------------------------------

SERVER_READS = ("detections", "heartbeat", "status", "door")
DEVICE_WRITES = ("detections", "heartbeat", "status", "door")
BRIDGE_TOPICS = "acs/v1/bridge/#"


def server_acl(username: str) -> str:
    lines = [f"user {username}"]
    lines += [f"topic read {p.TOPIC_ROOT}/+/{kind}" for kind in SERVER_READS]
    lines.append(f"topic write {p.TOPIC_ROOT}/+/commands")
    lines.append(f"topic readwrite {BRIDGE_TOPICS}")
    return "# accessctl: the server identity (generated; do not edit)\n" + "\n".join(lines) + "\n"


def device_acl() -> str:
    lines = [f"pattern write {p.TOPIC_ROOT}/%u/{kind}" for kind in DEVICE_WRITES]
    lines.append(f"pattern read {p.TOPIC_ROOT}/%u/commands")
    return "# accessctl: every device, username = device uid (generated; do not edit)\n" + "\n".join(lines) + "\n"


# --- identities -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Realm:
    """One password file + ACL file pair and how its identities may name their clients."""

    name: str  # server | devices | extra
    users: dict[str, str]
    acl: Acl

    def client_id_allowed(self, username: str, client_id: str) -> bool:
        if self.name == "server":
            return client_id.startswith(SERVER_CLIENT_ID_PREFIX)
        if self.name == "devices":
            return client_id == username
        return not client_id.startswith(SERVER_CLIENT_ID_PREFIX)  # test-only identities


@dataclass
class Identities:
    """Every identity the broker accepts, loaded from the auth folder (and the optional extra one)."""

    auth_dir: Path
    extra_dir: Path | None = None
    realms: list[Realm] = field(default_factory=list)
    generation: int = 0  # counts reloads
    _signature: tuple[object, ...] | None = None

    def _files(self) -> list[tuple[str, Path, Path]]:
        files = [
            ("server", self.auth_dir / SERVER_FILES[0], self.auth_dir / SERVER_FILES[1]),
            ("devices", self.auth_dir / DEVICE_FILES[0], self.auth_dir / DEVICE_FILES[1]),
        ]
        if self.extra_dir is not None:
            files.append(("extra", self.extra_dir / "extra.passwd", self.extra_dir / "extra.acl"))
        return files

    def _stat(self) -> tuple[object, ...]:
        marks: list[object] = []
        for _, *paths in self._files():
            for path in paths:
                try:
                    st = path.stat()
                    marks.append((st.st_mtime_ns, st.st_size, st.st_ino))
                except OSError:
                    marks.append(None)
        return tuple(marks)

    def refresh(self) -> bool:
        """Reload the files if they changed; True when they were reloaded."""
        signature = self._stat()
        if signature == self._signature:
            return False
        realms = []
        for name, passwd, acl in self._files():
            try:
                users, rules = passwd_parse(passwd.read_text()), acl_parse(acl.read_text())
            except OSError:
                continue  # missing files: nobody of this realm gets in (fail closed)
            realms.append(Realm(name=name, users=users, acl=rules))
        self.realms, self._signature = realms, signature
        self.generation += 1
        logger.info("broker identities loaded: %s", ", ".join(f"{r.name}={len(r.users)}" for r in realms) or "none")
        return True

    def realm_of(self, username: str | None) -> Realm | None:
        for realm in self.realms:
            if username and username in realm.users:
                return realm
        return None

    def device_usernames(self) -> set[str]:
        return {user for realm in self.realms if realm.name == "devices" for user in realm.users}

    def login(self, username: str | None, password: str | None, client_id: str) -> Realm | None:
        """The realm of a valid login with a client id this identity may use, else None."""
        realm = self.realm_of(username)
        if realm is None or username is None or password is None:
            return None
        if not password_verify(password, realm.users[username]):
            return None
        if not realm.client_id_allowed(username, client_id):
            return None
        if realm.name != "devices" and client_id in self.device_usernames():
            return None  # a device's client id belongs to that device only
        return realm


def mosquitto_conf(*, auth_dir: Path, device_port: int = 8883, server_port: int = 1884, server_host: str = "") -> str:
    """A Mosquitto 2.0 configuration enforcing the same model with the same files."""
    return (
        "# accessctl: generated by `manage.py mqtt_identities --mosquitto-conf`\n"
        "per_listener_settings true\n\n"
        "# devices: username = device uid, client id forced to the username\n"
        f"listener {device_port}\n"
        "allow_anonymous false\n"
        "use_username_as_clientid true\n"
        f"password_file {auth_dir / DEVICE_FILES[0]}\n"
        f"acl_file {auth_dir / DEVICE_FILES[1]}\n\n"
        "# the server (bridge, command publisher); keep it on loopback or a private network\n"
        f"listener {server_port}{f' {server_host}' if server_host else ''}\n"
        "allow_anonymous false\n"
        f"password_file {auth_dir / SERVER_FILES[0]}\n"
        f"acl_file {auth_dir / SERVER_FILES[1]}\n"
    )


def secret_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, mode 0600 whatever existed before."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)
    os.replace(tmp, path)
