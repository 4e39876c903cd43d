"""Anchors for the access log: signed checkpoints of the chain head, kept outside the database.

The hash chain (``accessctl.audit``) shows an event changed in place, but whoever can write the
table can also delete the newest events or recompute the whole chain. A checkpoint records, at a
point in time, the head of the chain (id, hash, when it occurred) and how many events the log held,
signed with the server's Ed25519 key (``SERVER_SIGNING_KEY_FILE``) and written where the database's
users cannot reach: append-only JSON lines under ``AUDIT_ANCHOR_DIR`` (``var/audit-anchors/``, one
file a month, 0600) and, when a bucket is configured, one S3 object per checkpoint under COMPLIANCE
object lock (nobody, the account's root included, can delete or overwrite it before its retention
date). Celery beat writes one every ``ACCESSCTL_AUDIT_ANCHOR_INTERVAL_S`` seconds and retention
writes one after each purge.

:func:`anchors_verify` compares every checkpoint with the database (``manage.py verify_audit_chain``):

* an anchored head that still exists must have the anchored hash (a recomputed chain does not);
* an anchored head that is gone must have been purged by retention: a purge record in the log
  covers it, the anchored event occurred before that purge's cutoff, and the cutoff is at least the
  policy's days before the purge, which is not in the future. So an event younger than the retention
  period cannot disappear unnoticed, even by someone with the database's superuser rights;
* the latest checkpoint's count must match the events up to its head (less those purged since);
* every checkpoint must carry a valid signature by a trusted key (the server's, plus the
  ``ACCESSCTL_AUDIT_ANCHOR_TRUSTED_KEYS`` of earlier server keys after a rotation).

What it does not prove: anything about events recorded after the latest checkpoint (at most one
interval), or against someone who also holds the server's signing key and the anchor files (on S3
with object lock, checkpoints already written stay).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from accessctl.codes import Reason
from accessctl.models import AccessEvent
from accessctl.server_key import server_signing_key
from faceengine import protocol as p

logger = logging.getLogger(__name__)

ANCHOR_FORMAT = "accessctl-audit-anchor/1"
_TABLE = AccessEvent._meta.db_table
_CLOCK_SKEW = dt.timedelta(minutes=5)
_ID_BATCH = 5000


class AnchorStoreError(Exception):
    """A checkpoint could not be written to one of its stores."""


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement about the chain head; ``source`` says where it was read from."""

    at: dt.datetime
    head_id: int | None
    head_hash: str
    head_occurred_at: dt.datetime | None
    count: int
    key: str
    sig: str = ""
    source: str = field(default="", compare=False)

    def body(self) -> dict[str, Any]:
        return {
            "format": ANCHOR_FORMAT,
            "at": self.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "head_id": self.head_id,
            "head_hash": self.head_hash,
            "head_occurred_at": (
                None
                if self.head_occurred_at is None
                else self.head_occurred_at.astimezone(dt.UTC).isoformat(timespec="microseconds")
            ),
            "count": self.count,
            "key": self.key,
        }

    def line(self) -> str:
        return json.dumps({**self.body(), "sig": self.sig}, sort_keys=True, separators=(",", ":"))


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- keys


def _server_key() -> Any:
    """The server's Ed25519 key (the one devices trust for commands); created on first use."""
    return server_signing_key()


def _public_b64(key: Any) -> str:
    return p.public_key_b64(key)


def trusted_keys() -> set[str]:
    """Public keys (base64) whose checkpoints are accepted: the server's (when this host has it:
    verifying never creates one) and the configured earlier ones."""
    keys = set(settings.AUDIT_ANCHOR_TRUSTED_KEYS)
    if Path(settings.SERVER_SIGNING_KEY_FILE).exists():
        keys.add(_public_b64(_server_key()))
    return keys


def checkpoint_sign(checkpoint: Checkpoint, key: Any) -> Checkpoint:
    sig = base64.b64encode(key.sign(_canonical(checkpoint.body()))).decode()
    return Checkpoint(**{**checkpoint.__dict__, "sig": sig})


def checkpoint_signature_ok(checkpoint: Checkpoint, keys: set[str]) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if checkpoint.key not in keys:
        return False
    try:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(checkpoint.key, validate=True))
        public.verify(base64.b64decode(checkpoint.sig, validate=True), _canonical(checkpoint.body()))
    except (InvalidSignature, ValueError):
        return False
    return True


def checkpoint_parse(text: str, *, source: str) -> Checkpoint:
    """A checkpoint from its JSON line (signature not checked); ValueError when malformed."""
    try:
        doc = json.loads(text)
        if doc.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"not an {ANCHOR_FORMAT} checkpoint")
        occurred = doc["head_occurred_at"]
        head_id = doc["head_id"]
        return Checkpoint(
            at=dt.datetime.fromisoformat(doc["at"]),
            head_id=None if head_id is None else int(head_id),
            head_hash=str(doc["head_hash"]),
            head_occurred_at=None if occurred is None else dt.datetime.fromisoformat(occurred),
            count=int(doc["count"]),
            key=str(doc["key"]),
            sig=str(doc["sig"]),
            source=source,
        )
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed checkpoint: {exc}") from exc


# --------------------------------------------------------------------------- stores


def _anchor_dir() -> Path:
    return Path(settings.AUDIT_ANCHOR_DIR)


def _file_append(checkpoint: Checkpoint) -> Path:
    folder = _anchor_dir()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = folder / f"{checkpoint.at.astimezone(dt.UTC):%Y-%m}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (checkpoint.line() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _files_read() -> tuple[list[Checkpoint], list[str]]:
    found: list[Checkpoint] = []
    problems: list[str] = []
    folder = _anchor_dir()
    if not folder.is_dir():
        return found, problems
    for path in sorted(folder.glob("*.jsonl")):
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.strip():
                continue
            source = f"{path.name}:{number}"
            try:
                found.append(checkpoint_parse(text, source=source))
            except ValueError as exc:
                problems.append(f"checkpoint {source} is unreadable ({exc})")
    return found, problems


def _s3_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=settings.S3_ENDPOINT_URL,
        region_name=settings.S3_REGION,
        config=Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"}),
    )


def _s3_key(checkpoint: Checkpoint) -> str:
    at = checkpoint.at.astimezone(dt.UTC)
    return f"{settings.AUDIT_ANCHOR_S3_PREFIX}{at:%Y/%m/%d/%Y%m%dT%H%M%S.%fZ}-{checkpoint.head_id or 0}.json"


def _s3_put(checkpoint: Checkpoint, client: Any) -> str:
    body = checkpoint.line().encode()
    key = _s3_key(checkpoint)
    retain_until = checkpoint.at + dt.timedelta(days=settings.AUDIT_ANCHOR_S3_RETAIN_DAYS)
    client.put_object(
        Bucket=settings.AUDIT_ANCHOR_S3_BUCKET,
        Key=key,
        Body=body,
        ContentType="application/json",
        ContentMD5=base64.b64encode(
            hashlib.md5(body, usedforsecurity=False).digest()
        ).decode(),  # object lock requires it
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=retain_until,
    )
    return key


def _s3_read(client: Any) -> tuple[list[Checkpoint], list[str]]:
    found: list[Checkpoint] = []
    problems: list[str] = []
    bucket = settings.AUDIT_ANCHOR_S3_BUCKET
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=settings.AUDIT_ANCHOR_S3_PREFIX):
        for item in page.get("Contents", []):
            source = f"s3://{bucket}/{item['Key']}"
            text = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode(errors="replace")
            try:
                found.append(checkpoint_parse(text, source=source))
            except ValueError as exc:
                problems.append(f"checkpoint {source} is unreadable ({exc})")
    return found, problems


# --------------------------------------------------------------------------- writing


def chain_head() -> tuple[int | None, str, dt.datetime | None, int]:
    """(head id, head hash, head occurred_at, number of events), read in one statement (one snapshot)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT count(*) FROM {_TABLE}), h.id, h.hash, h.occurred_at FROM (SELECT 1) one "
            f"LEFT JOIN LATERAL (SELECT id, hash, occurred_at FROM {_TABLE} ORDER BY id DESC LIMIT 1) h ON true"
        )
        count, head_id, head_hash, occurred_at = cursor.fetchone()
    return head_id, head_hash or "", occurred_at, int(count)


def checkpoint_create(*, now: dt.datetime | None = None, s3_client: Any = None) -> Checkpoint:
    """Sign the current chain head and write it to the anchor file (and S3 when configured)."""
    key = _server_key()
    head_id, head_hash, occurred_at, count = chain_head()
    checkpoint = checkpoint_sign(
        Checkpoint(
            at=now or timezone.now(),
            head_id=head_id,
            head_hash=head_hash,
            head_occurred_at=occurred_at,
            count=count,
            key=_public_b64(key),
        ),
        key,
    )
    path = _file_append(checkpoint)
    where = [str(path)]
    if settings.AUDIT_ANCHOR_S3_BUCKET:
        try:
            where.append(_s3_put(checkpoint, s3_client or _s3_client()))
        except Exception as exc:
            logger.error("audit anchor %s not written to S3: %s", checkpoint.head_id, exc)
            raise AnchorStoreError(f"checkpoint not written to s3://{settings.AUDIT_ANCHOR_S3_BUCKET}: {exc}") from exc
    logger.info("audit anchor: head event %s, %d events, written to %s", head_id, count, ", ".join(where))
    return checkpoint


# --------------------------------------------------------------------------- verifying


@dataclass
class AnchorReport:
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    latest: Checkpoint | None = None
    now: dt.datetime | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def age(self) -> dt.timedelta | None:
        if self.latest is None or self.now is None:
            return None
        return self.now - self.latest.at


def checkpoints_load(*, s3_client: Any = None) -> tuple[list[Checkpoint], list[str]]:
    """Every checkpoint from the file store and S3 (deduplicated), and what could not be read."""
    found, problems = _files_read()
    if settings.AUDIT_ANCHOR_S3_BUCKET:
        more, more_problems = _s3_read(s3_client or _s3_client())
        found += more
        problems += more_problems
    unique: dict[str, Checkpoint] = {}
    for checkpoint in found:
        unique.setdefault(checkpoint.sig or checkpoint.source, checkpoint)
    return sorted(unique.values(), key=lambda c: (c.at, c.head_id or 0)), problems


def _purge_records() -> list[dict[str, Any]]:
    out = []
    rows = AccessEvent.objects.filter(source=AccessEvent.Source.SYSTEM, reason=Reason.RETENTION_PURGE)
    for row in rows.order_by("id").values("id", "occurred_at", "details"):
        details = row["details"] if isinstance(row["details"], dict) else {}
        try:
            out.append(
                {
                    "id": row["id"],
                    "occurred_at": row["occurred_at"],
                    "through": int(details["purged_through_id"]),
                    "cutoff": dt.datetime.fromisoformat(str(details["cutoff"])),
                    "days": None if details.get("policy_days") is None else int(details["policy_days"]),
                }
            )
        except (KeyError, TypeError, ValueError):
            continue  # not a purge the verifier can credit
    return out


def _hashes(ids: list[int]) -> dict[int, str]:
    found: dict[int, str] = {}
    for start in range(0, len(ids), _ID_BATCH):
        batch = ids[start : start + _ID_BATCH]
        found.update(AccessEvent.objects.filter(id__in=batch).values_list("id", "hash"))
    return found


def _purge_problem(checkpoint: Checkpoint, purge: dict[str, Any], now: dt.datetime) -> str:
    """Why ``purge`` may not have removed the head ``checkpoint`` anchored ('' when it may have)."""
    if purge["occurred_at"] > now + _CLOCK_SKEW:
        return f"purge record {purge['id']} is dated in the future"
    if purge["days"] is None or purge["cutoff"] > purge["occurred_at"] - dt.timedelta(days=purge["days"]):
        return f"purge record {purge['id']} has a cutoff later than its retention period allows"
    if checkpoint.head_occurred_at is None or checkpoint.head_occurred_at >= purge["cutoff"]:
        return f"the event occurred after purge record {purge['id']}'s cutoff"
    return ""


def anchors_verify(*, now: dt.datetime | None = None, s3_client: Any = None) -> AnchorReport:
    """Check the access log against every checkpoint (see the module doc); problems in ``problems``."""
    report = AnchorReport(now=now or timezone.now())
    loaded, report.problems = checkpoints_load(s3_client=s3_client)
    keys = trusted_keys()
    checkpoints = []
    for checkpoint in loaded:
        if checkpoint_signature_ok(checkpoint, keys):
            checkpoints.append(checkpoint)
        else:
            report.problems.append(f"checkpoint {checkpoint.source} is forged or altered (signature does not verify)")
    report.checkpoints = len(checkpoints)
    if not checkpoints:
        return report
    report.latest = checkpoints[-1]
    purges = _purge_records()
    first_id = AccessEvent.objects.order_by("id").values_list("id", flat=True).first()
    hashes = _hashes(sorted({c.head_id for c in checkpoints if c.head_id is not None}))
    for checkpoint in checkpoints:
        head = checkpoint.head_id
        if head is None:
            continue
        anchored = f"event {head} (anchored {checkpoint.at.isoformat(timespec='seconds')}, {checkpoint.source})"
        if head in hashes:
            if hashes[head] != checkpoint.head_hash:
                report.problems.append(f"{anchored} has another hash now: the chain was rewritten")
            continue
        covering = [p for p in purges if p["through"] >= head]
        if not covering:
            report.problems.append(f"{anchored} is missing and no retention purge removed it: the log was truncated")
            continue
        if first_id is not None and first_id <= covering[0]["through"]:
            report.problems.append(f"{anchored} is missing but events before it remain: not a retention purge")
            continue
        problem = _purge_problem(checkpoint, covering[-1], report.now)
        if problem:
            report.problems.append(f"{anchored} was removed against the retention policy: {problem}")
    _latest_count_check(report, purges)
    return report


def _latest_count_check(report: AnchorReport, purges: list[dict[str, Any]]) -> None:
    latest = report.latest
    if latest is None or latest.head_id is None:
        return
    present = AccessEvent.objects.filter(id__lte=latest.head_id).count()
    purged_since = any(p["id"] > latest.head_id for p in purges)
    if present > latest.count or (present < latest.count and not purged_since):
        report.problems.append(
            f"the latest checkpoint ({latest.source}) counted {latest.count} events up to event "
            f"{latest.head_id}; the log holds {present}"
        )
