"""The signed offline allow-list, server side: compile per device, sign, chunk, push, revoke, acknowledge.

A door with fail mode ``allowlist`` gets, on each of its devices, the people allowed there
(:mod:`accessctl.offline_access`) with their face templates in the model version the device's
detections are decided in (embedding mode: the device's own, as its heartbeat reports it; crop
mode: the server's), the door's threshold and margin (:func:`recognition.calibration.
offline_threshold_for`: a model whose threshold is not measured gets no list, the door stays
``secure``) and liveness rule, valid for ``ALLOWLIST_MAX_AGE_S``. The wire format is
:mod:`faceengine.protocol.allowlist`; every chunk is a server-signed ``allowlist`` command.

* **Versions** are monotonic per device (:class:`~devices.models.DeviceAllowlist`, the row is
  locked while a version is issued). A version is a **delta** on top of the previous one when the
  device acknowledged that one (entries whose digest changed or that are new, refs removed), else
  the **full** list. A recompile that changes nothing issues nothing (unless forced: re-issue
  before expiry, resync).
* **Revocations** (:func:`revoke`) go out at once, to every device whose list may hold the person
  (the latest version, or an older one it has not replaced yet), as a ``revoke`` command with a
  per-device ``seq``, recorded with its send and acknowledgement times. A version carries the
  highest ``seq`` issued before its people were read, so a later one never lets a revoked person
  back in by a race; the device keeps revocations with a higher ``seq`` in force.
* **Acknowledgement** (:func:`allowlist_acknowledge`, from the heartbeat): the version, expiry,
  entries, revocation seq and offline mode the device reports; revocations up to that seq are
  acknowledged; a device that holds another version than the latest gets the list again (full),
  at most every ``ALLOWLIST_RESYNC_S``, at once after it restarted (:func:`allowlist_device_started`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from accessctl.models import AccessGroup, Door
from accessctl.offline_access import door_access_compile
from accessctl.offline_marks import link_mode
from accessctl.policy import liveness_threshold
from devices.commands import command_send, commands_flush
from devices.models import DeviceAllowlist, DeviceRevocation, EdgeDevice
from faceengine import protocol as p
from faceengine.protocol.allowlist import MAX_REVOKED_REFS, MAX_TEMPLATES_PER_ENTRY
from faceengine.protocol.envelope import canonical_json
from recognition.calibration import CalibrationError, margin_for, offline_threshold_for
from recognition.engine import server_model_version
from recognition.gallery import GalleryError, dim_for, person_templates

logger = logging.getLogger(__name__)

ALLOWLIST_REASON = "allowlist"
_MAX_SCHEDULE_KEYS = 256


class AllowlistRefused(Exception):
    """No list can be compiled for the device (the door stays ``secure``); the message says why."""


@dataclass(frozen=True)
class Compiled:
    """One device's list before it gets a version: entries, their digests and sizes, the rules."""

    model_version: str
    dim: int
    threshold: float
    margin: float
    liveness_required: bool
    liveness_threshold: float | None
    door: str
    issued_at: int
    expires_at: int
    revocation_seq: int
    windows: dict[str, tuple[tuple[float, float], ...]]
    entries: tuple[p.AllowlistEntry, ...]
    digests: dict[str, str]
    entry_bytes: int

    @property
    def rules(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version, "dim": self.dim, "threshold": self.threshold, "margin": self.margin,
            "liveness_required": self.liveness_required, "liveness_threshold": self.liveness_threshold,
            "door": self.door,
        }  # fmt: skip


@dataclass
class PushResult:
    """What one push did: the version issued (None: none), delta or full, sizes."""

    device_uid: str
    version: int | None = None
    full: bool = True
    entries: int = 0
    removed: int = 0
    chunks: int = 0
    bytes: int = 0
    refused: str = ""
    unchanged: bool = False
    unacknowledged: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def device_model_version(device: EdgeDevice) -> str:
    """The model version the device's detections are decided in: its own (embedding mode, as its
    heartbeat reports it), else the server's (crop mode)."""
    return device.model_version or server_model_version()


def _entry_digest(encoded: bytes) -> str:
    return hashlib.sha256(encoded).hexdigest()[:24]


def latest_revocation_seq(device_id: int) -> int:
    return DeviceRevocation.objects.filter(device_id=device_id).aggregate(seq=Max("seq"))["seq"] or 0


def allowlist_compile(device: EdgeDevice, door: Door, *, now: float | None = None) -> Compiled:
    """The list of ``device`` at ``door`` from now to the expiry; :class:`AllowlistRefused` when
    the door is not in ``allowlist`` mode or its model may not decide alone."""
    if door.fail_mode != Door.FailMode.ALLOWLIST:
        raise AllowlistRefused(f"door {door.name} has fail mode {door.fail_mode}")
    model_version = device_model_version(device)
    try:
        dim = dim_for(model_version)
        threshold = offline_threshold_for(model_version, door)
    except (GalleryError, CalibrationError) as exc:
        raise AllowlistRefused(str(exc)) from exc
    issued_at = int(now if now is not None else time.time())
    expires_at = issued_at + int(settings.ALLOWLIST_MAX_AGE_S)
    # Read before the people: a revocation issued after this read stays in force on the device.
    revocation_seq = latest_revocation_seq(device.pk)
    access = door_access_compile(
        door, start=dt.datetime.fromtimestamp(issued_at, dt.UTC), end=dt.datetime.fromtimestamp(expires_at, dt.UTC)
    )
    if len(access.windows) > _MAX_SCHEDULE_KEYS:
        raise AllowlistRefused(f"door {door.name} has {len(access.windows)} schedules; at most {_MAX_SCHEDULE_KEYS}")
    templates = person_templates([person.person_id for person in access.people], model_version)
    entries, digests, entry_bytes = [], {}, 0
    for person in access.people:
        vectors = templates.get(person.person_id)
        if not vectors:
            continue  # no accepted photo in this model: the device could not recognise them
        entry = p.AllowlistEntry(
            ref=person.uid,
            schedules=person.schedules,
            templates=tuple(p.Template.from_values(v) for v in vectors[-MAX_TEMPLATES_PER_ENTRY:]),  # numpy: vectorised
            valid_from=person.valid_from,
            valid_until=person.valid_until,
        )
        encoded = canonical_json(entry.to_dict())
        entries.append(entry)
        digests[entry.ref] = _entry_digest(encoded)
        entry_bytes += len(encoded) + 1
    return Compiled(
        model_version=model_version,
        dim=dim,
        threshold=float(threshold),
        margin=float(margin_for(model_version)),
        liveness_required=bool(door.liveness_required),
        liveness_threshold=liveness_threshold(door),
        door=door.name[:200],
        issued_at=issued_at,
        expires_at=expires_at,
        revocation_seq=revocation_seq,
        windows=access.windows,
        entries=tuple(entries),
        digests=digests,
        entry_bytes=entry_bytes,
    )


def _windows_json(windows: dict[str, tuple[tuple[float, float], ...]]) -> dict[str, list[list[float]]]:
    return {key: [[lo, hi] for lo, hi in spans] for key, spans in sorted(windows.items())}


def _clipped(windows: dict[str, list[list[float]]], lo: float, hi: float) -> dict[str, list[list[float]]]:
    return {
        key: [[max(a, lo), min(b, hi)] for a, b in spans if a < hi and b > lo] for key, spans in sorted(windows.items())
    }


def _unchanged(state: DeviceAllowlist, compiled: Compiled, now: float) -> bool:
    """The latest version says what ``compiled`` says for the rest of its life, which is long enough."""
    if state.version == 0 or state.refused or state.expires_at is None:
        return False
    expires = state.expires_at.timestamp()
    if expires - now < settings.ALLOWLIST_MAX_AGE_S / 2:
        return False  # re-issue: past half its age
    if state.digests != compiled.digests or state.rules != compiled.rules:
        return False
    if state.revocation_seq != compiled.revocation_seq:
        return False  # a revocation since: only a new version lifts it on the device (a person reinstated)
    new = _windows_json(compiled.windows)
    return _clipped(state.windows, now, expires) == _clipped(new, now, expires)


def _publish(device: EdgeDevice, kind: p.CommandKind, payloads: Sequence[dict[str, Any]]) -> tuple[list[str], int]:
    """Sign and publish; returns the command ids and how many the broker did not acknowledge."""
    ids = [command_send(device, kind, reason=ALLOWLIST_REASON, data=data, wait=False).command_id for data in payloads]
    return ids, commands_flush(timeout=10.0)


def allowlist_push(
    device: EdgeDevice, *, full: bool = False, force: bool = False, now: float | None = None
) -> PushResult:
    """Compile ``device``'s list and push it when it changed (``force``: always; ``full``: never a
    delta). A refused list (door not in ``allowlist`` mode, model not measured) is recorded on the
    device's state and, if the device held one, replaced by an empty list (nobody passes)."""
    now = now if now is not None else time.time()
    result = PushResult(device_uid=device.uid)
    started = time.perf_counter()
    DeviceAllowlist.objects.get_or_create(device=device)
    with transaction.atomic():
        # One push per device at a time, compiled inside the lock: a slower, older compile never
        # lands after a newer one. The row itself is not locked: heartbeats keep acknowledging.
        _device_lock(device.pk)
        state = DeviceAllowlist.objects.get(device=device)
        door = Door.objects.filter(pk=device.door_id).first() if device.door_id else None
        try:
            if door is None:
                raise AllowlistRefused("the device has no door")
            if device.status == EdgeDevice.Status.DISABLED:
                raise AllowlistRefused("the device is disabled")
            compiled = allowlist_compile(device, door, now=now)
        except AllowlistRefused as exc:
            result.refused = str(exc)
            return _refuse(device, state, result, now)
        finally:
            result.timings["compile_s"] = time.perf_counter() - started
        if not force and not full and _unchanged(state, compiled, now):
            result.unchanged, result.version = True, state.version
            return result
        _issue(device, state, compiled, result, full=full, now=now)
    result.timings["total_s"] = time.perf_counter() - started
    return result


#: Fields a push writes (the acknowledgement fields belong to the heartbeat).
_ISSUE_FIELDS = [
    "version", "base_version", "issued_at", "expires_at", "model_version", "entry_count", "bytes", "full_bytes",
    "chunk_count", "digests", "pending_refs", "rules", "windows", "revocation_seq", "refused", "push_error",
    "pushed_at", "resync_full", "updated_at",
]  # fmt: skip
_LOCK_NAMESPACE = 0x616C  # "al": advisory locks of allow-list pushes, keyed by device id


def _device_lock(device_id: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, device_id])


def _header(state: DeviceAllowlist, compiled: Compiled, *, base: int | None, total: int) -> p.AllowlistHeader:
    return p.AllowlistHeader(
        version=state.version + 1,
        base_version=base,
        issued_at=float(compiled.issued_at),
        expires_at=float(compiled.expires_at),
        model_version=compiled.model_version,
        dim=compiled.dim,
        threshold=compiled.threshold,
        margin=compiled.margin,
        liveness_required=compiled.liveness_required,
        liveness_threshold=compiled.liveness_threshold,
        windows=compiled.windows,
        revocation_seq=compiled.revocation_seq,
        door=compiled.door,
        total_entries=total,
    )


def _issue(
    device: EdgeDevice, state: DeviceAllowlist, compiled: Compiled, result: PushResult, *, full: bool, now: float
) -> None:
    t0 = time.perf_counter()
    delta = (
        not full
        and state.version > 0
        and not state.refused
        and state.acked_version == state.version
        and state.rules.get("model_version") == compiled.model_version
    )
    total = len(compiled.entries)
    chunks = None
    if delta:
        entries = [e for e in compiled.entries if state.digests.get(e.ref) != compiled.digests[e.ref]]
        removed = sorted(set(state.digests) - set(compiled.digests))
        try:
            chunks = p.allowlist_chunks(_header(state, compiled, base=state.version, total=total), entries, removed)
        except ValueError:  # too many removed refs for one chunk: send the whole list instead
            delta = False
    if chunks is None:
        removed = []
        chunks = p.allowlist_chunks(_header(state, compiled, base=None, total=total), compiled.entries)
    payloads = [chunk.to_dict() for chunk in chunks]
    sizes = [len(canonical_json(data)) for data in payloads]
    result.timings["sign_chunk_s"] = time.perf_counter() - t0
    header = chunks[0].header
    held = set(state.digests) | set(state.pending_refs)
    state.version = header.version
    state.base_version = header.base_version
    state.issued_at = dt.datetime.fromtimestamp(header.issued_at, dt.UTC)
    state.expires_at = dt.datetime.fromtimestamp(header.expires_at, dt.UTC)
    state.model_version = compiled.model_version
    state.entry_count = total
    state.bytes = sum(sizes)
    state.full_bytes = state.bytes if not delta else len(canonical_json(header.to_dict())) + compiled.entry_bytes
    state.chunk_count = len(chunks)
    state.digests = compiled.digests
    state.pending_refs = sorted(held - set(compiled.digests))
    state.rules = compiled.rules
    state.windows = _windows_json(compiled.windows)
    state.revocation_seq = compiled.revocation_seq
    state.refused = ""
    state.resync_full = False
    state.pushed_at = timezone.now()
    t1 = time.perf_counter()
    try:
        _, missing = _publish(device, p.CommandKind.ALLOWLIST, payloads)
        state.push_error = f"{missing} of {len(payloads)} chunks not acknowledged by the broker" if missing else ""
    except Exception as exc:  # the version stays issued (monotonic); a heartbeat mismatch resends it
        logger.exception("allow-list v%d for device %s not sent", header.version, device.uid)
        missing, state.push_error = len(payloads), f"not sent: {exc}"[:300]
    result.timings["publish_s"] = time.perf_counter() - t1
    state.save(update_fields=_ISSUE_FIELDS)
    result.version, result.full = header.version, not delta
    result.entries = sum(len(c.entries) for c in chunks)
    result.removed, result.chunks, result.bytes, result.unacknowledged = len(removed), len(chunks), state.bytes, missing
    logger.info(
        "allow-list v%d (%s, %d of %d entries, %d removed, %d chunks, %d bytes) to device %s",
        header.version, "delta" if delta else "full", result.entries, total, len(removed), len(chunks), state.bytes,
        device.uid,
    )  # fmt: skip


def _refuse(device: EdgeDevice, state: DeviceAllowlist, result: PushResult, now: float) -> PushResult:
    """No list for ``device``: say why (log, state); replace a list it may hold by an empty one."""
    changed = state.refused != result.refused
    state.refused = result.refused[:300]
    state.pushed_at = timezone.now()
    holds = state.version > 0 and (state.entry_count > 0 or changed) and state.rules.get("dim")
    if holds and (state.expires_at is None or state.expires_at.timestamp() > now):
        rules = state.rules
        header = p.AllowlistHeader(
            version=state.version + 1,
            base_version=None,
            issued_at=float(int(now)),
            expires_at=float(int(now) + int(settings.ALLOWLIST_MAX_AGE_S)),
            model_version=rules["model_version"],
            dim=int(rules["dim"]),
            threshold=1.0,
            margin=float(rules.get("margin", 0.0)),
            liveness_required=True,
            liveness_threshold=None,
            windows={},
            revocation_seq=latest_revocation_seq(device.pk),
            door=str(rules.get("door", ""))[:200],
            total_entries=0,
        )
        payloads = [chunk.to_dict() for chunk in p.allowlist_chunks(header, [])]
        state.version, state.base_version, state.entry_count, state.chunk_count = header.version, None, 0, 1
        state.issued_at = dt.datetime.fromtimestamp(header.issued_at, dt.UTC)
        state.expires_at = dt.datetime.fromtimestamp(header.expires_at, dt.UTC)
        state.pending_refs = sorted(set(state.digests) | set(state.pending_refs))
        state.digests, state.bytes = {}, sum(len(canonical_json(d)) for d in payloads)
        try:
            _, missing = _publish(device, p.CommandKind.ALLOWLIST, payloads)
            state.push_error = "empty list not acknowledged by the broker" if missing else ""
        except Exception as exc:
            logger.exception("empty allow-list for device %s not sent", device.uid)
            state.push_error = f"not sent: {exc}"[:300]
        result.version, result.chunks = header.version, 1
    state.save(update_fields=_ISSUE_FIELDS)
    if changed:
        logger.warning("no offline allow-list for device %s: %s", device.uid, result.refused)
    return result


def door_allowlists_push(door_id: int, *, full: bool = False, force: bool = False) -> list[PushResult]:
    """:func:`allowlist_push` for every enabled device at the door."""
    devices = EdgeDevice.objects.filter(door_id=door_id).exclude(status=EdgeDevice.Status.DISABLED).order_by("uid")
    return [allowlist_push(device, full=full, force=force) for device in devices]


def doors_needing_lists(door_ids: Iterable[int]) -> list[int]:
    """Of ``door_ids``: the doors in ``allowlist`` mode, and those whose devices hold a list."""
    ids = set(door_ids)
    if not ids:
        return []
    found = Door.objects.filter(pk__in=ids).filter(
        Q(fail_mode=Door.FailMode.ALLOWLIST) | Q(devices__allowlist__version__gt=0)
    )
    return sorted(set(found.values_list("pk", flat=True)))


# --- Revocations ---------------------------------------------------------------------------------


def devices_holding(refs: Sequence[str], *, door_ids: Iterable[int] | None = None) -> list[EdgeDevice]:
    """Enabled devices whose list may hold one of ``refs``: in their latest version, or dropped
    from a version they have not acknowledged yet."""
    held = Q(digests__has_any_keys=list(refs))
    for ref in refs:
        held |= Q(pending_refs__contains=[ref])
    states = DeviceAllowlist.objects.filter(held).exclude(device__status=EdgeDevice.Status.DISABLED)
    if door_ids is not None:
        states = states.filter(device__door_id__in=list(door_ids))
    return list(EdgeDevice.objects.filter(pk__in=states.values("device_id")).order_by("uid"))


def revoke(refs: Sequence[str], *, reason: str, door_ids: Iterable[int] | None = None) -> list[DeviceRevocation]:
    """Drop ``refs`` (person uids) from every device that may hold them, now: one ``revoke``
    command per device (its next ``seq``), recorded; returns the records."""
    refs = sorted({str(ref) for ref in refs})
    if not refs:
        return []
    records = []
    for device in devices_holding(refs, door_ids=door_ids):
        for start in range(0, len(refs), MAX_REVOKED_REFS):
            records.append(_revoke_one(device, refs[start : start + MAX_REVOKED_REFS], reason))
    missing = commands_flush(timeout=5.0) if records else 0
    if missing:
        logger.warning("%d revocation(s) not acknowledged by the broker; resent by the sweep", missing)
        DeviceRevocation.objects.filter(pk__in=[r.pk for r in records]).update(sent_at=None, send_error="no broker ack")
    if records:
        logger.info("revoked %s (%s) on %d device(s)", ",".join(refs)[:200], reason, len(records))
    return records


def _revoke_one(device: EdgeDevice, refs: Sequence[str], reason: str) -> DeviceRevocation:
    with transaction.atomic():
        EdgeDevice.objects.select_for_update().filter(pk=device.pk).first()  # serialises seq per device
        record = DeviceRevocation.objects.create(
            device=device, seq=latest_revocation_seq(device.pk) + 1, refs=list(refs), reason=reason
        )
    _revocation_send(device, record)
    return record


def _revocation_send(device: EdgeDevice, record: DeviceRevocation) -> None:
    revocation = p.Revocation(seq=record.seq, refs=tuple(record.refs), reason=record.reason)
    try:
        command = command_send(
            device, p.CommandKind.REVOKE, reason=record.reason, data=revocation.to_dict(), wait=False
        )
        fields = {"command_id": command.command_id, "sent_at": timezone.now(), "send_error": ""}
    except Exception as exc:
        logger.exception("revocation %d for device %s not sent", record.seq, device.uid)
        fields = {"send_error": f"not sent: {exc}"[:300]}
    DeviceRevocation.objects.filter(pk=record.pk).update(**fields)
    for key, value in fields.items():
        setattr(record, key, value)


def revocations_resend(*, older_than_s: float = 30.0) -> int:
    """Send again revocations not sent, or sent but not acknowledged for ``older_than_s`` (same
    seq: a device that applied it ignores it); returns how many."""
    cutoff = timezone.now() - dt.timedelta(seconds=older_than_s)
    pending = DeviceRevocation.objects.filter(acknowledged_at__isnull=True).filter(
        Q(sent_at__isnull=True) | Q(sent_at__lt=cutoff)
    )
    count = 0
    for record in pending.select_related("device").exclude(device__status=EdgeDevice.Status.DISABLED):
        _revocation_send(record.device, record)
        count += 1
    if count:
        commands_flush(timeout=5.0)
    return count


def doors_lost(person_ids: Iterable[int], door_ids: Iterable[int]) -> dict[int, set[int]]:
    """Per person of ``person_ids``: those of ``door_ids`` that no group of theirs opens any more."""
    people, doors = set(person_ids), set(door_ids)
    still = set(
        AccessGroup.people.through.objects.filter(person_id__in=people, accessgroup__doors__in=doors).values_list(
            "person_id", "accessgroup__doors"
        )
    )
    return {pid: {d for d in doors if (pid, d) not in still} for pid in people}


# --- Acknowledgement ---------------------------------------------------------------------------


def allowlist_acknowledge(device: EdgeDevice, heartbeat: p.Heartbeat) -> bool:
    """Record what the device's heartbeat says it holds; True when it needs the list again (the
    caller schedules :func:`allowlist_push` with ``full=True``)."""
    reported = heartbeat.allowlist_version is not None or heartbeat.offline_mode is not None
    state = DeviceAllowlist.objects.filter(device=device).first()
    if state is None:
        door_wants = device.door is not None and device.door.fail_mode == Door.FailMode.ALLOWLIST
        if not (reported or door_wants):
            return False
        state = DeviceAllowlist.objects.get_or_create(device=device)[0]
    now = timezone.now()
    seq = heartbeat.revocation_seq
    issued = latest_revocation_seq(device.pk)
    if seq is not None and seq > issued:
        logger.warning("device %s reports revocation %d, only %d issued: not acknowledged", device.uid, seq, issued)
        seq = None
    version = heartbeat.allowlist_version
    if version is not None and version > state.version:
        logger.warning("device %s reports allow-list v%d, only v%d issued", device.uid, version, state.version)
    updates: dict[str, Any] = {
        "acked_version": version,
        "acked_revocation_seq": seq if seq is not None else state.acked_revocation_seq,
        "acked_offline_mode": str(heartbeat.offline_mode or "")[:16],
        "acked_expires_at": dt.datetime.fromtimestamp(heartbeat.allowlist_expires_at, dt.UTC)
        if heartbeat.allowlist_expires_at is not None
        else None,
        "acked_entries": heartbeat.allowlist_entries,
        "acked_at": now,
    }
    DeviceAllowlist.objects.filter(pk=state.pk).update(**updates)
    if version is not None and version == state.version:  # it holds the latest: nothing older lingers
        DeviceAllowlist.objects.filter(pk=state.pk, version=version).update(pending_refs=[])
    if seq:
        DeviceRevocation.objects.filter(device=device, seq__lte=seq, acknowledged_at__isnull=True).update(
            acknowledged_at=now
        )
    for key, value in updates.items():
        setattr(state, key, value)
    if heartbeat.offline_mode is None:  # an agent without allow-list support: sending it lists helps nothing
        return False
    return _resync_due(device, state, version, now)


def _resync_due(device: EdgeDevice, state: DeviceAllowlist, version: int | None, now: dt.datetime) -> bool:
    door = device.door
    if door is None or door.fail_mode != Door.FailMode.ALLOWLIST:
        return False
    if state.version == 0:  # never compiled (or refused without a list): try, at the resync pace
        pass
    elif version == state.version or state.refused:
        if state.resync_full:
            DeviceAllowlist.objects.filter(pk=state.pk).update(resync_full=False)
        return False
    recent = state.pushed_at is not None and (now - state.pushed_at).total_seconds() < settings.ALLOWLIST_RESYNC_S
    if recent and not state.resync_full:
        return False
    logger.info("device %s holds allow-list v%s, latest v%d: full resync", device.uid, version, state.version)
    return True


def allowlist_device_started(device: EdgeDevice) -> None:
    """The device (re)started (signed ``online`` status): on its next heartbeat, a version other
    than the latest gets a full list at once, whatever the resync pace."""
    DeviceAllowlist.objects.filter(device=device, version__gt=0).update(resync_full=True)


# --- What the dashboard and the API show ------------------------------------------------------


def offline_mode(device: EdgeDevice, state: DeviceAllowlist | None, *, now: dt.datetime | None = None) -> str:
    """``online`` when the device reaches the server, else what it does alone: ``offline-allowlist``
    (it acknowledged a list that has not expired), ``offline-safe`` or ``offline-secure``. The
    dashboard's rule (:func:`accessctl.offline_marks.link_mode`) over what the device acknowledged."""
    if device.status in (EdgeDevice.Status.ONLINE, EdgeDevice.Status.DEGRADED):
        return "online"
    acked: dict[str, Any] = {}
    if state is not None:
        acked = {
            "offline_mode": state.acked_offline_mode or None,
            "allowlist_version": state.acked_version,
            "allowlist_expires_at": state.acked_expires_at.timestamp() if state.acked_expires_at else None,
        }
    now = now or timezone.now()
    return link_mode(status=EdgeDevice.Status.OFFLINE, heartbeat=acked, now=now.timestamp())["mode"]
