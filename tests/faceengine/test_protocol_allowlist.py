"""The offline allow-list on the wire: chunks, revocations, the device-side rules, the new fields."""

from __future__ import annotations

import math
import time

import pytest

from faceengine import protocol as p
from faceengine.protocol import ProtocolError, Reason

UID = "door-1"
DIM = 8


def header(**overrides: object) -> p.AllowlistHeader:
    now = time.time()
    fields: dict[str, object] = {
        "version": 3,
        "base_version": None,
        "issued_at": now,
        "expires_at": now + 86400,
        "model_version": "sface-2021dec",
        "dim": DIM,
        "threshold": 0.476,
        "margin": 0.02,
        "liveness_required": False,
        "liveness_threshold": None,
        "windows": {"s1": ((now - 60, now + 3600),), "s2": ((now + 7200, now + 9000),)},
        "door": "Main entrance",
        "total_entries": 2,
    }
    fields.update(overrides)
    return p.AllowlistHeader(**fields)  # type: ignore[arg-type]


def entry(ref: str, *schedules: str, seed: float = 1.0, **kw: object) -> p.AllowlistEntry:
    vec = [math.sin(seed * (i + 1)) for i in range(DIM)]
    return p.AllowlistEntry(ref=ref, schedules=schedules or ("s1",), templates=(p.Template.from_values(vec),), **kw)  # type: ignore[arg-type]


def test_chunk_round_trip_inside_a_signed_command() -> None:
    private_pem, public = p.generate_keypair()
    key = p.load_private_key(private_pem)
    (chunk,) = p.allowlist_chunks(header(), [entry("a"), entry("b", "always", seed=2.0)])
    command = p.Command(
        device_uid=UID, command=p.CommandKind.ALLOWLIST, command_id=p.new_id(), issued_at=time.time(),
        reason="allowlist", data=chunk.to_dict(),
    )  # fmt: skip
    message = p.open_message(p.commands_topic(UID), p.seal(command, key), public, window_s=30)
    assert isinstance(message, p.Command)
    back = p.AllowlistChunk.from_dict(message.data)
    assert back == chunk
    assert back.header.same_version(chunk.header)
    values = back.entries[0].templates[0].values(DIM)
    want = [math.sin(i + 1) for i in range(DIM)]
    assert max(abs(a - b) for a, b in zip(values, want, strict=True)) < 0.01


def test_chunks_stay_under_the_message_limit_and_keep_every_entry() -> None:
    entries = [entry(f"p{i}", seed=i + 1.0) for i in range(300)]
    chunks = p.allowlist_chunks(header(total_entries=300), entries, max_bytes=8000)
    assert len(chunks) > 3
    assert {c.chunk_count for c in chunks} == {len(chunks)}
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert all(len(p.canonical_json(c.to_dict())) <= 8000 for c in chunks)
    assert [e.ref for c in chunks for e in c.entries] == [e.ref for e in entries]
    # an empty list is still one chunk: the device learns the version and the expiry
    assert len(p.allowlist_chunks(header(total_entries=0), [])) == 1


def test_delta_carries_removed_refs_full_list_cannot() -> None:
    (delta,) = p.allowlist_chunks(header(version=4, base_version=3), [entry("c")], removed=["a"])
    assert p.AllowlistChunk.from_dict(delta.to_dict()).removed == ("a",)
    bad = delta.to_dict() | {"base_version": None}
    with pytest.raises(ProtocolError, match="removes nothing"):
        p.AllowlistChunk.from_dict(bad)
    with pytest.raises(ProtocolError):  # a base must be older than the version
        p.AllowlistChunk.from_dict(delta.to_dict() | {"base_version": 4})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"format": 2}, "format"),
        ({"expires_at": 1.0}, "expires_at"),
        ({"extra": 1}, "unknown keys"),
        ({"threshold": float("nan")}, "threshold"),
        ({"windows": {"s1": [[5.0, 4.0]]}}, "end after"),
        ({"windows": {"Bad Key": []}}, "schedule keys"),
        ({"chunk_index": 1}, "chunk_index"),
    ],
)
def test_chunk_rejects(change: dict[str, object], match: str) -> None:
    (chunk,) = p.allowlist_chunks(header(), [entry("a")])
    with pytest.raises(ProtocolError, match=match):
        p.AllowlistChunk.from_dict(chunk.to_dict() | change)


def test_entry_rejects_unknown_schedule_and_bad_templates() -> None:
    (chunk,) = p.allowlist_chunks(header(), [entry("a", "s9")])
    with pytest.raises(ProtocolError, match="unknown schedules"):
        p.AllowlistChunk.from_dict(chunk.to_dict())
    data = p.allowlist_chunks(header(), [entry("a")])[0].to_dict()
    data["entries"][0]["templates"] = [["AAAA", 0.1]]  # 3 bytes, not DIM
    with pytest.raises(ProtocolError) as info:
        p.AllowlistChunk.from_dict(data)
    assert info.value.code is Reason.BAD_EMBEDDING


def test_entry_may_pass_follows_validity_then_schedule() -> None:
    h = header()
    now = time.time()
    assert p.entry_may_pass(entry("a", "s1"), h, now) is None
    assert p.entry_may_pass(entry("a", "s2"), h, now) == "outside_schedule"
    assert p.entry_may_pass(entry("a", "s2"), h, now + 7300) is None
    assert p.entry_may_pass(entry("a", "always"), h, now + 10**6) is None
    assert p.entry_may_pass(entry("a", "s1", valid_until=now - 1), h, now) == "expired"
    assert p.entry_may_pass(entry("a", "s1", valid_from=now + 60), h, now) == "not_yet_valid"


def test_revocation_round_trip_and_limits() -> None:
    revocation = p.Revocation(seq=7, refs=("a", "b"), reason="suspended")
    assert p.Revocation.from_dict(revocation.to_dict()) == revocation
    with pytest.raises(ProtocolError):
        p.Revocation.from_dict(revocation.to_dict() | {"refs": []})
    with pytest.raises(ProtocolError):
        p.Revocation.from_dict(revocation.to_dict() | {"seq": 0})


def test_offline_decision_evidence_is_optional_and_strict() -> None:
    now = time.time()
    old = p.OfflineDecision(action=p.OfflineAction.DENY, basis="fail_secure", decided_at=now)
    assert old.to_dict() == {"action": "deny", "basis": "fail_secure", "decided_at": now}
    new = p.OfflineDecision(
        action=p.OfflineAction.OPEN, basis="allowlist", decided_at=now, person_ref="a", reason="matched",
        allowlist_version=3, similarity=0.71,
    )  # fmt: skip
    assert p.OfflineDecision.from_dict(new.to_dict()) == new
    with pytest.raises(ProtocolError):
        p.OfflineDecision.from_dict(new.to_dict() | {"similarity": 1.5})
    with pytest.raises(ProtocolError):
        p.OfflineDecision.from_dict(new.to_dict() | {"reason": "Not A Code"})


def test_heartbeat_allowlist_acknowledgement_fields() -> None:
    fields = {
        "device_uid": UID, "sent_at": time.time(), "agent_version": "1", "model_version": None, "camera_fps": 10.0,
        "spool_depth": 0, "spool_dropped": 0, "uptime_s": 1.0,
    }  # fmt: skip
    bare = p.Heartbeat(**fields)  # type: ignore[arg-type]
    assert "allowlist_version" not in bare.to_dict() and "offline_mode" not in bare.to_dict()
    full = p.Heartbeat(
        **fields, allowlist_version=5, allowlist_expires_at=time.time() + 60, allowlist_entries=12,
        revocation_seq=2, offline_mode=p.OfflineMode.ALLOWLIST,
    )  # type: ignore[arg-type]  # fmt: skip
    assert p.Heartbeat.from_dict(full.to_dict()) == full
    with pytest.raises(ProtocolError):
        p.Heartbeat.from_dict(full.to_dict() | {"offline_mode": "open"})


@pytest.mark.parametrize(
    ("action", "basis", "reason", "code"),
    [
        ("open", "allowlist", "matched", Reason.OFFLINE_MATCHED),
        ("deny", "allowlist", "unknown_face", Reason.OFFLINE_UNKNOWN_FACE),
        ("deny", "allowlist", "outside_schedule", Reason.OFFLINE_OUTSIDE_SCHEDULE),
        ("deny", "allowlist", "made_up", Reason.OFFLINE_DENIED),
        ("deny", "allowlist", "matched", Reason.OFFLINE_DENIED),  # a code that contradicts the action
        ("open", "allowlist", "unknown_face", Reason.OFFLINE_ALLOWED),
        ("open", "fail_safe", None, Reason.OFFLINE_ALLOWED),
        ("deny", "fail_secure", None, Reason.OFFLINE_DENIED),
    ],
)
def test_offline_reason(action: str, basis: str, reason: str | None, code: Reason) -> None:
    assert p.offline_reason(action=action, basis=basis, reason=reason) is code
