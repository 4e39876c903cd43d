"""The signed offline allow-list on the wire: chunks of a version, revocations (server -> device).

A door whose fail mode is ``allowlist`` holds, per device, a list of the people allowed there,
compiled by the server from the policy and signed with the server key. The device uses it only
while the link to the server is down, until it expires; then it falls back to ``secure``.

Carried in :class:`~faceengine.protocol.payloads.Command` messages (so every piece is signed by
the server key, names its device, and has a command id and issue time like any command):

* ``command = allowlist``, ``data = AllowlistChunk.to_dict()``: one chunk of one version. A
  version is ``chunk_count`` chunks; each repeats the header (version, base, expiry, thresholds,
  schedule windows), so each verifies on its own and the device can tell chunks of different
  versions apart. ``base_version`` None: a full list; an int: a delta that applies only on top of
  that version (``entries`` are added or replaced by ``ref``, ``removed`` refs are dropped).
  The device applies a version when it holds all its chunks, atomically.
* ``command = revoke``, ``data = Revocation.to_dict()``: people to drop from the list at once,
  ahead of any recompilation. ``seq`` increases per device; the device forgets none of them: a
  later version lists ``revocation_seq`` (the revocations it already reflects), and any entry
  revoked with a higher seq stays out.

Schedules are compiled by the server: ``windows`` maps a key to the UTC intervals ``[start, end)``
(unix seconds) in which a group with that schedule is open, from the issue time to the expiry,
holidays and the door's time zone already applied; ``always`` is a group without a schedule. An
entry lists the keys of its groups at this door: it may pass when now falls in one of them and in
its ``valid_from`` / ``valid_until``. Templates are the person's accepted gallery vectors in the
device's model version, int8 codes (``value = q * scale``, :func:`encode_embedding`).

The device acknowledges in its heartbeat (``allowlist_version``, ``revocation_seq``) and sends a
heartbeat as soon as it applied a version or a revocation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from faceengine.protocol.codes import EmbeddingEncoding, Reason
from faceengine.protocol.embedding import decode_embedding, encode_embedding
from faceengine.protocol.envelope import canonical_json
from faceengine.protocol.limits import MAX_EMBEDDING_DIM, MAX_MESSAGE_BYTES
from faceengine.protocol.validation import (
    _CODE_RE,
    _b64decode,
    _b64encode,
    _check_keys,
    _check_timestamp,
    _fail,
    _integer,
    _label,
    _number,
    _opt_number,
)

#: Format of the allow-list ``data`` (bumped on an incompatible change; the device refuses others).
ALLOWLIST_FORMAT = 1
#: Bytes of a chunk's ``data`` JSON, leaving room for the command fields and the signature
#: inside :data:`MAX_MESSAGE_BYTES`.
MAX_CHUNK_DATA_BYTES = MAX_MESSAGE_BYTES - 16 * 1024
MAX_CHUNKS = 10_000
MAX_TEMPLATES_PER_ENTRY = 32
MAX_WINDOWS = 4096
MAX_REVOKED_REFS = 1000
#: the schedule key of a group without a schedule (open whenever the person is valid)
ALWAYS = "always"

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
_REF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


@dataclass(frozen=True)
class Template:
    """One gallery vector as int8 codes: ``value = q * scale``."""

    q: bytes
    scale: float

    def values(self, dim: int) -> list[float]:
        return decode_embedding(self.q, EmbeddingEncoding.INT8, dim, self.scale)

    @classmethod
    def from_values(cls, values: Sequence[float]) -> Template:
        q, scale = encode_embedding(values, EmbeddingEncoding.INT8)
        assert scale is not None
        return cls(q=q, scale=scale)


@dataclass(frozen=True)
class AllowlistEntry:
    """A person allowed at the door: ``ref`` (the person's uid), the schedule keys of their groups
    at this door, their validity (unix seconds, None: unbounded) and their templates."""

    ref: str
    schedules: tuple[str, ...]
    templates: tuple[Template, ...]
    valid_from: float | None = None
    valid_until: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ref": self.ref,
            "schedules": list(self.schedules),
            "templates": [[_b64encode(t.q), t.scale] for t in self.templates],
        }
        if self.valid_from is not None:
            out["valid_from"] = self.valid_from
        if self.valid_until is not None:
            out["valid_until"] = self.valid_until
        return out

    @classmethod
    def from_dict(cls, data: object, *, dim: int) -> Self:
        d = _check_keys(data, {"ref", "schedules", "templates"}, {"valid_from", "valid_until"}, "allowlist entry")
        ref = _label(d, "ref", pattern=_REF_RE)
        schedules = d["schedules"]
        if not isinstance(schedules, list) or not schedules or len(schedules) > 64:
            raise _fail("entry schedules must be a non-empty list")
        keys = tuple(_key(s) for s in schedules)
        raw_templates = d["templates"]
        if not isinstance(raw_templates, list) or not 0 < len(raw_templates) <= MAX_TEMPLATES_PER_ENTRY:
            raise _fail(f"entry templates must be a list of 1..{MAX_TEMPLATES_PER_ENTRY}")
        templates = []
        for item in raw_templates:
            if not isinstance(item, list) or len(item) != 2:
                raise _fail("a template is [codes_b64, scale]", Reason.BAD_EMBEDDING)
            q = _b64decode(item[0], "template", Reason.BAD_EMBEDDING, MAX_EMBEDDING_DIM)
            scale = _number({"scale": item[1]}, "scale", lo=0.0)
            # decoding checks length, finiteness and non-zero
            decode_embedding(q, EmbeddingEncoding.INT8, dim, scale)
            templates.append(Template(q=q, scale=scale))
        valid_from = _opt_number(d, "valid_from", lo=0.0)
        valid_until = _opt_number(d, "valid_until", lo=0.0)
        return cls(ref=ref, schedules=keys, templates=tuple(templates), valid_from=valid_from, valid_until=valid_until)


@dataclass(frozen=True, kw_only=True)
class AllowlistHeader:
    """What every chunk of a version repeats: the version, its base (None: full), issue and expiry
    times, the matching rule (model version, dim, threshold, margin), the door's liveness rule and
    the compiled schedule windows."""

    version: int
    base_version: int | None
    issued_at: float
    expires_at: float
    model_version: str
    dim: int
    threshold: float
    margin: float
    liveness_required: bool
    liveness_threshold: float | None
    windows: Mapping[str, tuple[tuple[float, float], ...]]
    revocation_seq: int = 0
    door: str = ""
    total_entries: int = 0  # of the whole version (full: the list; delta: the list after applying)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": ALLOWLIST_FORMAT,
            "version": self.version,
            "base_version": self.base_version,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "model_version": self.model_version,
            "dim": self.dim,
            "threshold": self.threshold,
            "margin": self.margin,
            "liveness_required": self.liveness_required,
            "liveness_threshold": self.liveness_threshold,
            "windows": {k: [list(w) for w in v] for k, v in sorted(self.windows.items())},
            "revocation_seq": self.revocation_seq,
            "door": self.door,
            "total_entries": self.total_entries,
        }
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        if d.get("format") != ALLOWLIST_FORMAT or isinstance(d.get("format"), bool):
            raise _fail(f"unsupported allow-list format {d.get('format')!r}", Reason.BAD_VERSION)
        version = _integer(d, "version", lo=1)
        base = d.get("base_version")
        base_version = None if base is None else _integer(d, "base_version", lo=1, hi=version - 1)
        issued_at = _check_timestamp(d["issued_at"], "issued_at")
        expires_at = _check_timestamp(d["expires_at"], "expires_at")
        if expires_at <= issued_at:
            raise _fail("expires_at must be after issued_at")
        liveness_required = d.get("liveness_required")
        if not isinstance(liveness_required, bool):
            raise _fail("liveness_required must be a boolean")
        raw_windows = d.get("windows")
        if not isinstance(raw_windows, Mapping) or len(raw_windows) > 256:
            raise _fail("windows must be an object")
        windows: dict[str, tuple[tuple[float, float], ...]] = {}
        for key, spans in raw_windows.items():
            if not isinstance(spans, list) or len(spans) > MAX_WINDOWS:
                raise _fail("windows must map keys to lists of [start, end]")
            checked = []
            for span in spans:
                if not isinstance(span, list) or len(span) != 2:
                    raise _fail("a window is [start, end]")
                start, end = (_check_timestamp(v, "window") for v in span)
                if end <= start:
                    raise _fail("a window must end after it starts")
                checked.append((start, end))
            windows[_key(key)] = tuple(checked)
        door = d.get("door", "")
        if not isinstance(door, str) or len(door) > 200:
            raise _fail("door must be a short string")
        return cls(
            version=version,
            base_version=base_version,
            issued_at=issued_at,
            expires_at=expires_at,
            model_version=_label(d, "model_version"),
            dim=_integer(d, "dim", lo=1, hi=MAX_EMBEDDING_DIM),
            threshold=_number(d, "threshold", lo=-1.0, hi=1.0),
            margin=_number(d, "margin", lo=0.0, hi=2.0),
            liveness_required=liveness_required,
            liveness_threshold=_opt_number(d, "liveness_threshold", lo=0.0, hi=1.0),
            windows=windows,
            revocation_seq=_integer(d, "revocation_seq"),
            door=door,
            total_entries=_integer(d, "total_entries"),
        )

    def same_version(self, other: AllowlistHeader) -> bool:
        """True when two chunks' headers belong to one version (every header field equal)."""
        return self.to_dict() == other.to_dict()


_HEADER_KEYS = {
    "format", "version", "base_version", "issued_at", "expires_at", "model_version", "dim", "threshold",
    "margin", "liveness_required", "liveness_threshold", "windows", "revocation_seq", "door", "total_entries",
}  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class AllowlistChunk:
    """One signed piece of an allow-list version: the header, its place and its entries (and, in
    a delta, refs removed)."""

    header: AllowlistHeader
    chunk_index: int
    chunk_count: int
    entries: tuple[AllowlistEntry, ...] = ()
    removed: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.header.to_dict(),
            "chunk_index": self.chunk_index,
            "chunk_count": self.chunk_count,
            "entries": [e.to_dict() for e in self.entries],
            "removed": list(self.removed),
        }

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, _HEADER_KEYS | {"chunk_index", "chunk_count", "entries", "removed"}, set(), "allowlist")
        header = AllowlistHeader.from_dict(d)
        count = _integer(d, "chunk_count", lo=1, hi=MAX_CHUNKS)
        index = _integer(d, "chunk_index", hi=count - 1)
        raw_entries, raw_removed = d["entries"], d["removed"]
        if not isinstance(raw_entries, list) or not isinstance(raw_removed, list):
            raise _fail("entries and removed must be lists")
        if raw_removed and header.base_version is None:
            raise _fail("a full allow-list removes nothing")
        entries = tuple(AllowlistEntry.from_dict(e, dim=header.dim) for e in raw_entries)
        for entry in entries:
            if unknown := set(entry.schedules) - set(header.windows) - {ALWAYS}:
                raise _fail(f"entry {entry.ref} names unknown schedules {sorted(unknown)}")
        removed = tuple(_label({"ref": r}, "ref", pattern=_REF_RE) for r in raw_removed)
        return cls(header=header, chunk_index=index, chunk_count=count, entries=entries, removed=removed)


@dataclass(frozen=True, kw_only=True)
class Revocation:
    """People to drop from the device's allow-list now: ``seq`` (per device, increasing), ``refs``."""

    seq: int
    refs: tuple[str, ...]
    reason: str = "revoked"

    def to_dict(self) -> dict[str, Any]:
        return {"format": ALLOWLIST_FORMAT, "seq": self.seq, "refs": list(self.refs), "reason": self.reason}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        d = _check_keys(data, {"format", "seq", "refs", "reason"}, set(), "revocation")
        if d["format"] != ALLOWLIST_FORMAT or isinstance(d["format"], bool):
            raise _fail(f"unsupported allow-list format {d['format']!r}", Reason.BAD_VERSION)
        refs = d["refs"]
        if not isinstance(refs, list) or not 0 < len(refs) <= MAX_REVOKED_REFS:
            raise _fail(f"refs must be a list of 1..{MAX_REVOKED_REFS}")
        return cls(
            seq=_integer(d, "seq", lo=1),
            refs=tuple(_label({"ref": r}, "ref", pattern=_REF_RE) for r in refs),
            reason=_label(d, "reason", pattern=_CODE_RE),
        )


def allowlist_chunks(
    header: AllowlistHeader,
    entries: Sequence[AllowlistEntry],
    removed: Sequence[str] = (),
    *,
    max_bytes: int = MAX_CHUNK_DATA_BYTES,
) -> list[AllowlistChunk]:
    """Split a version into chunks whose ``data`` JSON stays under ``max_bytes`` (at least one
    chunk, also for an empty list: the device must learn the version and its expiry)."""
    base = len(canonical_json(AllowlistChunk(header=header, chunk_index=9999, chunk_count=9999).to_dict()))
    removed_cost = sum(len(r) + 3 for r in removed)
    if base + removed_cost >= max_bytes:
        raise ValueError("the header and the removed refs alone exceed a chunk")
    groups: list[list[AllowlistEntry]] = [[]]
    size = base + removed_cost
    for entry in entries:
        cost = len(canonical_json(entry.to_dict())) + 1
        if base + cost > max_bytes:
            raise ValueError(f"entry {entry.ref} alone exceeds a chunk")
        if size + cost > max_bytes and groups[-1]:
            groups.append([])
            size = base
        groups[-1].append(entry)
        size += cost
    count = len(groups)
    if count > MAX_CHUNKS:
        raise ValueError(f"{count} chunks exceed {MAX_CHUNKS}")
    return [
        AllowlistChunk(
            header=header,
            chunk_index=i,
            chunk_count=count,
            entries=tuple(group),
            removed=tuple(removed) if i == 0 else (),
        )
        for i, group in enumerate(groups)
    ]


def window_open(windows: Sequence[tuple[float, float]], at: float) -> bool:
    """True when ``at`` falls in one of the ``[start, end)`` windows."""
    return any(start <= at < end for start, end in windows)


def entry_may_pass(entry: AllowlistEntry, header: AllowlistHeader, at: float) -> str | None:
    """The device's schedule and validity rule for a recognised entry at ``at`` (unix seconds):
    None when it may pass, else the reason code (``not_yet_valid``, ``expired``,
    ``outside_schedule``). The same order as the server's policy (validity, then schedules)."""
    if entry.valid_from is not None and at < entry.valid_from:
        return str(Reason.NOT_YET_VALID)
    if entry.valid_until is not None and at >= entry.valid_until:
        return str(Reason.EXPIRED)
    for key in entry.schedules:
        if key == ALWAYS or window_open(header.windows.get(key, ()), at):
            return None
    return str(Reason.OUTSIDE_SCHEDULE)


def _key(value: object) -> str:
    if not isinstance(value, str) or not _KEY_RE.match(value):
        raise _fail("schedule keys are short lowercase codes")
    return value
