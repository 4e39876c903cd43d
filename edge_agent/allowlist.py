"""The signed offline allow-list on the device: assemble, apply, keep encrypted at rest, match.

The server sends a version of the door's allow-list as ``allowlist`` commands (one chunk each,
see :mod:`faceengine.protocol.allowlist`) and revocations as ``revoke`` commands. The MQTT link
verified each command already (server signature, device uid, timestamp window, command-id replay);
:class:`AllowlistStore` then

* assembles the chunks of one version (every header identical; a chunk of another version starts
  over; a version not above the one held is refused), and applies it **atomically** once complete:
  a full list replaces the held one, a delta applies only on top of its base (otherwise the device
  keeps what it has and waits for a full list);
* refuses (and logs why) a list for another model version than the agent embeds with, an expired
  one, one in an unknown format (the protocol parser refuses those);
* applies a revocation at once and remembers the refs with their ``seq``: a version whose
  ``revocation_seq`` is lower keeps them out (revoked people stay in the matrix so a revoked face
  is denied as ``revoked``, not matched to someone else);
* persists the raw signed commands of the held version (its full list and the deltas on top) and
  the revocations not yet reflected by it, encrypted with AES-GCM under a key derived (HKDF-SHA256)
  from the device private key; at start it decrypts, re-verifies every signature with the server
  public key, checks the expiry and rebuilds. A file that does not decrypt (changed on disk,
  written without the key) or whose commands do not verify is refused: the door falls back to
  ``secure``.

:class:`CompiledList` is one immutable version: one float32 matrix of every L2-normalised template
and the matching rule of the server (``recognition.matcher.decide_candidates`` then ``accessctl.policy``).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.spool import private_dir, private_file
from faceengine.protocol import (
    Command,
    CommandKind,
    commands_topic,
    open_message,
)
from faceengine.protocol.allowlist import (
    AllowlistChunk,
    AllowlistEntry,
    AllowlistHeader,
    Revocation,
    entry_may_pass,
)

logger = logging.getLogger(__name__)

#: The file holding the held version and the revocations, encrypted (in the spool directory).
STORE_FILE = "allowlist.enc"
#: HKDF ``info``: binds the derived key to this one use of the device key.
KDF_INFO = b"accessctl edge-agent allow-list at rest v1"
_FILE_FORMAT = 1
_NONCE_BYTES = 12

#: The device's reasons (the server records them as ``offline_`` + reason).
MATCHED = "matched"
UNKNOWN_FACE = "unknown_face"
AMBIGUOUS_MATCH = "ambiguous_match"
REVOKED = "revoked"
LIVENESS_NOT_MEASURED = "liveness_not_measured"
PRESENTATION_ATTACK = "presentation_attack"


class AllowlistRefused(ValueError):
    """A chunk, a version or the file at rest was refused; the message says why (it is logged)."""


@dataclass(frozen=True)
class AllowlistDecision:
    """What the list says about one face: grant or not, the reason, the person and the best score."""

    granted: bool
    reason: str
    person_ref: str | None
    similarity: float | None
    version: int


@dataclass(frozen=True)
class _Version:
    """The chunks of one version, as verified: parsed and raw signed bytes, in chunk order."""

    header: AllowlistHeader
    chunks: tuple[AllowlistChunk, ...]
    raws: tuple[bytes, ...]


class CompiledList:
    """One applied version: entries by ref and one normalised template matrix (rows grouped by person)."""

    def __init__(self, header: AllowlistHeader, entries: Mapping[str, AllowlistEntry]) -> None:
        self.header = header
        self.entries = dict(entries)
        self.refs: list[str] = sorted(self.entries)
        rows: list[np.ndarray] = []
        starts: list[int] = []
        for ref in self.refs:
            starts.append(len(rows))
            rows.extend(np.asarray(t.values(header.dim), dtype=np.float32) for t in self.entries[ref].templates)
        matrix = np.stack(rows) if rows else np.zeros((0, header.dim), dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        self.matrix = matrix / np.where(norms > 0, norms, 1.0)
        self.starts = np.asarray(starts, dtype=np.intp)

    def __len__(self) -> int:
        return len(self.refs)

    def scores(self, embedding: np.ndarray) -> np.ndarray:
        """Each person's score: the cosine of their best template with ``embedding``."""
        query = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.header.dim:
            raise ValueError(f"embedding has {query.shape[0]} dimensions, the list {self.header.dim}")
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0.0:
            raise ValueError("embedding is zero or not finite")
        if not self.refs:
            return np.zeros(0, dtype=np.float32)
        # einsum, not ``@``: a matrix-vector product through the BLAS thread pool costs 10-100x more
        # on a busy 2-core device (its threads fight the camera's), einsum stays on this thread
        cosines = np.einsum("ij,j->i", self.matrix, query / norm)
        return np.maximum.reduceat(cosines, self.starts)

    def decide(
        self,
        embedding: np.ndarray,
        *,
        at: float,
        liveness: float | None,
        revoked: frozenset[str] | set[str] = frozenset(),
    ) -> AllowlistDecision:
        """The server's rule for this face at ``at``: match (threshold, margin), liveness for a
        compared face, then revocation, validity and schedules of the matched entry."""
        h = self.header
        scores = self.scores(embedding)
        best_ref: str | None = None
        similarity: float | None = None
        if len(scores):
            top = np.argpartition(-scores, 1)[:2] if len(scores) > 1 else np.arange(1)
            order = top[np.argsort(-scores[top])]  # best, then the runner-up
            best, best_score = int(order[0]), float(scores[order[0]])
            second_score = float(scores[order[1]]) if len(order) > 1 else None
            similarity = round(min(1.0, max(-1.0, best_score)), 6)
            best_ref = self.refs[best]
        if similarity is None or best_score < h.threshold:
            reason = UNKNOWN_FACE
        elif second_score is not None and second_score >= h.threshold and best_score - second_score < h.margin:
            reason = AMBIGUOUS_MATCH
        else:
            reason = MATCHED
        person = best_ref if reason == MATCHED else None
        if h.liveness_required:
            if liveness is None:
                return AllowlistDecision(False, LIVENESS_NOT_MEASURED, person, similarity, h.version)
            if h.liveness_threshold is not None and liveness < h.liveness_threshold:
                return AllowlistDecision(False, PRESENTATION_ATTACK, person, similarity, h.version)
        if person is None:
            return AllowlistDecision(False, reason, None, similarity, h.version)
        if person in revoked:
            return AllowlistDecision(False, REVOKED, person, similarity, h.version)
        denial = entry_may_pass(self.entries[person], h, at)
        if denial is not None:
            return AllowlistDecision(False, denial, person, similarity, h.version)
        return AllowlistDecision(True, MATCHED, person, similarity, h.version)


def at_rest_key(private_key: Any) -> bytes:
    """The AES-256-GCM key for the file at rest: HKDF-SHA256 of the device's Ed25519 private key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KDF_INFO).derive(raw)


@dataclass
class AllowlistStatus:
    """What the heartbeat reports (None: no list held)."""

    version: int | None = None
    expires_at: float | None = None
    entries: int | None = None
    revocation_seq: int | None = None


@dataclass
class _Pending:
    header: AllowlistHeader
    chunks: dict[int, tuple[AllowlistChunk, bytes]] = field(default_factory=dict)


class AllowlistStore:
    """The device's allow-list: verified chunks in, an atomically swapped :class:`CompiledList` out.

    ``model_version``: what the agent embeds with (None: it cannot embed, every list is refused).
    ``on_change`` runs after a version or a revocation was applied (the agent sends a heartbeat).
    """

    def __init__(
        self,
        directory: Path,
        *,
        device_uid: str,
        server_public_key: str,
        private_key: Any,
        model_version: str | None,
        on_change: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = private_dir(Path(directory)) / STORE_FILE
        self.device_uid = device_uid
        self.server_public_key = server_public_key
        self.model_version = model_version
        self.on_change = on_change
        self.clock = clock
        self._key = at_rest_key(private_key)
        self._lock = threading.RLock()
        self._current: CompiledList | None = None
        self._chain: list[_Version] = []  # the full list, then the deltas applied on top
        self._pending: _Pending | None = None
        self._revocations: list[tuple[Revocation, bytes]] = []
        self._revoked: dict[str, int] = {}  # ref -> seq of the revocation
        self.revocation_seq = 0
        self.refused = 0
        #: why the door holds no valid list (logged when it falls back to secure)
        self.unavailable_reason = "no allow-list received yet"

    def model_set(self, model_version: str) -> None:
        """The agent switched model: a held list compiled for another model is dropped (its templates
        cannot be compared with the new vectors); the door is secure offline until the server sends
        the new model's list (it does when the heartbeat reports the new model)."""
        with self._lock:
            self.model_version = model_version
            if self._current is not None and self._current.header.model_version != model_version:
                logger.warning(
                    "allow-list version %d is for model %s, the agent now embeds with %s: dropped",
                    self._current.header.version, self._current.header.model_version, model_version,
                )  # fmt: skip
                self._current, self._chain, self._pending = None, [], None
                self.unavailable_reason = f"waiting for an allow-list for model {model_version}"

    # -- reading ---------------------------------------------------------------------------

    def valid(self, now: float | None = None) -> CompiledList | None:
        """The held list if it is still valid at ``now`` (not expired), else None."""
        with self._lock:
            current = self._current
        if current is None:
            return None
        if (self.clock() if now is None else now) >= current.header.expires_at:
            self.unavailable_reason = f"allow-list version {current.header.version} expired"
            return None
        return current

    @property
    def revoked(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._revoked)

    def decide(self, embedding: np.ndarray, *, at: float, liveness: float | None) -> AllowlistDecision | None:
        """The list's decision for a face (None: no valid list; see :attr:`unavailable_reason`)."""
        current = self.valid(at)
        if current is None:
            return None
        return current.decide(embedding, at=at, liveness=liveness, revoked=self.revoked)

    def status(self) -> AllowlistStatus:
        with self._lock:
            current = self._current
            seq = self.revocation_seq or None
        if current is None:
            return AllowlistStatus(revocation_seq=seq)
        return AllowlistStatus(current.header.version, current.header.expires_at, len(current), seq)

    # -- commands --------------------------------------------------------------------------

    def receive(self, command: Command, raw: bytes) -> bool:
        """Take a verified ``allowlist`` or ``revoke`` command; True when something was applied.
        A refused one is logged (and counted) and changes nothing."""
        try:
            with self._lock:
                if command.command is CommandKind.REVOKE:
                    applied = self._revoke(Revocation.from_dict(command.data), raw)
                elif command.command is CommandKind.ALLOWLIST:
                    applied = self._chunk(AllowlistChunk.from_dict(command.data), raw)
                else:
                    raise AllowlistRefused(f"not an allow-list command: {command.command}")
                if applied:
                    self._persist()
        except ValueError as exc:  # AllowlistRefused, ProtocolError (malformed, bad format, bad template)
            self.refused += 1
            if self._current is None:
                self.unavailable_reason = f"allow-list refused: {exc}"
            logger.warning("allow-list command %s refused: %s", command.command_id, exc)
            return False
        if applied and self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                logger.exception("allow-list change callback failed")
        return applied

    def _revoke(self, revocation: Revocation, raw: bytes) -> bool:
        reflected = self._current.header.revocation_seq if self._current is not None else 0
        if revocation.seq <= reflected:
            logger.info("revocation %d already reflected by the held list (seq %d)", revocation.seq, reflected)
            self.revocation_seq = max(self.revocation_seq, revocation.seq)
            return True
        for ref in revocation.refs:
            self._revoked[ref] = max(self._revoked.get(ref, 0), revocation.seq)
        if revocation not in (r for r, _ in self._revocations):  # a re-sent one is kept once
            self._revocations.append((revocation, raw))
        self.revocation_seq = max(self.revocation_seq, revocation.seq)
        logger.warning(
            "revocation %d applied (%s): %d ref(s) refused from now on",
            revocation.seq,
            revocation.reason,
            len(revocation.refs),
        )
        return True

    def _chunk(self, chunk: AllowlistChunk, raw: bytes, *, at_rest: bool = False) -> bool:
        header = chunk.header
        self._check_header(header, self.clock(), at_rest=at_rest)
        pending = self._pending
        if pending is None or pending.header.version != header.version:
            if pending is not None:
                logger.info(
                    "allow-list version %d replaces incomplete version %d (%d chunk(s) dropped)",
                    header.version,
                    pending.header.version,
                    len(pending.chunks),
                )
            pending = self._pending = _Pending(header)
        elif not pending.header.same_version(header):
            self._pending = None
            raise AllowlistRefused(f"chunk of version {header.version} with a different header; starting over")
        first = next(iter(pending.chunks.values()))[0] if pending.chunks else None
        if first is not None and first.chunk_count != chunk.chunk_count:
            self._pending = None
            raise AllowlistRefused(f"version {header.version}: chunk counts differ; starting over")
        pending.chunks[chunk.chunk_index] = (chunk, raw)
        if len(pending.chunks) < chunk.chunk_count:
            return False
        self._pending = None
        ordered = [pending.chunks[i] for i in range(chunk.chunk_count)]
        version = _Version(header, tuple(c for c, _ in ordered), tuple(r for _, r in ordered))
        self._apply(version)
        return True

    def _check_header(self, header: AllowlistHeader, now: float, *, at_rest: bool = False) -> None:
        """Refuse a version for another model, an expired one (at rest: only the last version of
        the chain must be unexpired, a delta's base may have expired; :meth:`load` checks it) or
        one not newer than the held one."""
        if self.model_version is None:
            raise AllowlistRefused("this agent has no embedder: it cannot use an allow-list")
        if header.model_version != self.model_version:
            raise AllowlistRefused(
                f"version {header.version} is for model {header.model_version}, "
                f"this agent embeds with {self.model_version}"
            )
        if header.expires_at <= now and not at_rest:
            raise AllowlistRefused(f"version {header.version} expired at {header.expires_at:.0f}")
        held = self._current.header.version if self._current is not None else 0
        if header.version <= held:
            raise AllowlistRefused(f"version {header.version} is not newer than the held version {held}")

    def _apply(self, version: _Version) -> None:
        """Build the new list (full or on top of its base) and swap it in; the held one stays on error."""
        header = version.header
        if header.base_version is None:
            entries: dict[str, AllowlistEntry] = {}
            chain = [version]
        else:
            if self._current is None or self._current.header.version != header.base_version:
                held = self._current.header.version if self._current is not None else None
                raise AllowlistRefused(
                    f"delta {header.version} applies on version {header.base_version}, the device holds {held}; "
                    "waiting for a full list"
                )
            entries = dict(self._current.entries)
            chain = [*self._chain, version]
        for chunk in version.chunks:
            for ref in chunk.removed:
                entries.pop(ref, None)
            for entry in chunk.entries:
                entries[entry.ref] = entry
        if header.total_entries and header.total_entries != len(entries):
            raise AllowlistRefused(
                f"version {header.version} should hold {header.total_entries} entries, it holds {len(entries)}"
            )
        compiled = CompiledList(header, entries)
        # revocations the new version reflects are forgotten; later ones keep their refs out
        self._revocations = [(r, raw) for r, raw in self._revocations if r.seq > header.revocation_seq]
        self._revoked = {}
        for revocation, _ in self._revocations:
            for ref in revocation.refs:
                self._revoked[ref] = max(self._revoked.get(ref, 0), revocation.seq)
        self.revocation_seq = max(self.revocation_seq, header.revocation_seq)
        self._chain = chain
        self._current = compiled
        logger.warning(
            "allow-list version %d applied (%s, %d entries, %d templates, expires %s)",
            header.version,
            "full" if header.base_version is None else f"delta on {header.base_version}",
            len(compiled),
            compiled.matrix.shape[0],
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(header.expires_at)),
        )

    # -- at rest ---------------------------------------------------------------------------

    def _persist(self) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        body = {
            "format": _FILE_FORMAT,
            "device_uid": self.device_uid,
            "versions": [[_b64(r) for r in v.raws] for v in self._chain],
            "revocations": [_b64(raw) for _, raw in self._revocations],
        }
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + AESGCM(self._key).encrypt(nonce, json.dumps(body).encode(), self._aad())
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        private_file(tmp)
        try:
            with tmp.open("wb") as fh:
                fh.write(sealed)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            logger.exception("could not write the allow-list at rest; the list held in memory stays in use")

    def _aad(self) -> bytes:
        return b"accessctl-allowlist:" + self.device_uid.encode()

    def load(self) -> bool:
        """Rebuild from the file at rest (True when a valid list came back). Everything is checked
        again: decryption (key, integrity), every signature, device, expiry, model version."""
        if not self.path.exists():
            return False
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            sealed = self.path.read_bytes()
            if len(sealed) <= _NONCE_BYTES:
                raise AllowlistRefused("file too short")
            try:
                plain = AESGCM(self._key).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], self._aad())
            except InvalidTag:
                raise AllowlistRefused(
                    "the file does not decrypt: changed on disk or written without this device's key"
                ) from None
            body = json.loads(plain)
            if (
                not isinstance(body, dict)
                or body.get("format") != _FILE_FORMAT
                or body.get("device_uid") != self.device_uid
            ):
                raise AllowlistRefused("unknown file format or another device's file")
            with self._lock:
                for raws in body["versions"]:
                    for raw in raws:
                        self._chunk_at_rest(self._verify(_unb64(raw), CommandKind.ALLOWLIST), _unb64(raw))
                for raw in body["revocations"]:
                    self._revoke(Revocation.from_dict(self._verify(_unb64(raw), CommandKind.REVOKE).data), _unb64(raw))
                if self._pending is not None:
                    raise AllowlistRefused("an incomplete version at rest")
        except (ValueError, KeyError, TypeError, OSError) as exc:  # refused, protocol, JSON, base64, I/O
            with self._lock:
                self._current, self._chain, self._pending, self._revocations, self._revoked = None, [], None, [], {}
            self.refused += 1
            self.unavailable_reason = f"allow-list at rest refused: {exc}"
            logger.error("allow-list at rest refused (%s); the door falls back to secure while offline", exc)
            return False
        current = self.valid()
        if current is None:
            logger.warning("allow-list at rest holds no valid list: %s", self.unavailable_reason)
            return False
        logger.info(
            "allow-list version %d restored from %s (%d entries)", current.header.version, self.path, len(current)
        )
        return True

    def _verify(self, raw: bytes, kind: CommandKind) -> Command:
        message = open_message(commands_topic(self.device_uid), raw, self.server_public_key)
        if not isinstance(message, Command) or message.command is not kind:
            raise AllowlistRefused(f"a stored message is not a {kind} command")
        return message

    def _chunk_at_rest(self, command: Command, raw: bytes) -> None:
        self._chunk(AllowlistChunk.from_dict(command.data), raw, at_rest=True)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise AllowlistRefused("malformed file")
    return base64.b64decode(text, validate=True)
