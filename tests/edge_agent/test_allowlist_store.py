"""The device's allow-list store: chunks, versions, deltas, revocations, expiry, encrypted at rest, matching."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.allowlist import STORE_FILE, AllowlistStore, CompiledList, at_rest_key
from edge_agent.mqtt import EdgeLink
from edge_agent.spool import Spool
from faceengine import protocol as p
from tests.edge_agent.allowlists import (
    DIM,
    MODEL,
    entry,
    face_vector,
    header,
    mqtt_message,
    revocation,
    signed,
    version_commands,
)
from tests.edge_agent.conftest import UID, Keys, make_config


def make_store(tmp_path: Path, keys: Keys, *, model: str | None = MODEL, private: str | None = None, **kw):
    return AllowlistStore(
        tmp_path / "spool",
        device_uid=UID,
        server_public_key=keys.server_public,
        private_key=p.load_private_key(private or keys.device_private),
        model_version=model,
        **kw,
    )


def people(n: int) -> list:
    return [entry(f"person-{i}", face_vector(i)) for i in range(n)]


def feed(store: AllowlistStore, commands) -> list[bool]:
    return [store.receive(command, raw) for command, raw in commands]


def test_full_list_in_chunks_out_of_order_applies_once_complete(tmp_path: Path, keys: Keys) -> None:
    changes: list[int] = []
    store = make_store(tmp_path, keys, on_change=lambda: changes.append(1))
    chunks = version_commands(keys, header(1, total_entries=12), people(12), max_bytes=900)
    assert len(chunks) >= 3
    order = [*chunks[1:], chunks[0]]
    results = feed(store, order)
    assert results[:-1] == [False] * (len(chunks) - 1) and results[-1] is True
    assert changes == [1]  # acknowledged once, when applied
    held = store.valid()
    assert held is not None and len(held) == 12 and held.header.version == 1
    status = store.status()
    assert (status.version, status.entries) == (1, 12)
    decision = store.decide(face_vector(7), at=time.time(), liveness=None)
    assert decision.granted and decision.person_ref == "person-7" and decision.similarity > 0.99


def test_incomplete_version_is_not_used_and_another_version_starts_over(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    v1 = version_commands(keys, header(1), people(12), max_bytes=900)
    v2 = version_commands(keys, header(2), people(3))
    feed(store, v1[:-1])
    assert store.valid() is None  # nothing applied from a part
    feed(store, v2)  # a chunk of another version: v1's pieces are dropped
    assert store.valid().header.version == 2
    assert store.receive(*v1[-1]) is False  # v1 is older than the held v2 now
    assert store.valid().header.version == 2 and len(store.valid()) == 3


def test_chunks_with_different_headers_for_one_version_are_refused(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    a = version_commands(keys, header(1, threshold=0.5), people(12), max_bytes=900)
    b = version_commands(keys, header(1, threshold=0.1), people(12), max_bytes=900)
    feed(store, a[:-1])
    assert store.receive(*b[-1]) is False
    assert store.refused == 1
    feed(store, a[:-1])  # it starts over: a's last chunk alone would not complete anything
    assert store.receive(*a[-1]) is True and store.valid().header.threshold == 0.5


def test_stale_version_model_mismatch_expired_and_unknown_format_are_refused(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    feed(store, version_commands(keys, header(5), people(2)))
    assert feed(store, version_commands(keys, header(5), people(3))) == [False]  # same version again
    assert feed(store, version_commands(keys, header(4), people(3))) == [False]  # lower
    assert feed(store, version_commands(keys, header(6, model_version="other-model"), people(3))) == [False]
    expired = header(6, expires_in=-10.0, issued_at=time.time() - 100)
    assert feed(store, version_commands(keys, expired, people(3))) == [False]
    (command, _raw) = version_commands(keys, header(6), people(3))[0]
    data = {**command.data, "format": 2}
    assert store.receive(*signed(keys, data)) is False
    assert store.refused == 5
    assert store.valid().header.version == 5 and len(store.valid()) == 2
    # an agent that cannot embed refuses every list
    blind = make_store(tmp_path / "blind", keys, model=None)
    assert feed(blind, version_commands(keys, header(1), people(1))) == [False]
    assert "no embedder" in blind.unavailable_reason  # what the door logs when it falls back to secure


def test_delta_applies_on_its_base_only(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    feed(store, version_commands(keys, header(1, total_entries=3), people(3)))
    # not on the held base: refused, the held list stays
    wrong = version_commands(keys, header(3, base=2), [entry("person-9", face_vector(9))])
    assert feed(store, wrong) == [False]
    assert store.valid().header.version == 1
    delta = version_commands(
        keys, header(2, base=1, total_entries=3), [entry("person-9", face_vector(9))], removed=["person-0"]
    )
    assert feed(store, delta) == [True]
    held = store.valid()
    assert held.header.version == 2 and sorted(held.entries) == ["person-1", "person-2", "person-9"]
    assert not store.decide(face_vector(0), at=time.time(), liveness=None).granted
    assert store.decide(face_vector(9), at=time.time(), liveness=None).person_ref == "person-9"
    # a delta whose result does not hold the announced number of entries is refused whole
    bad = version_commands(keys, header(3, base=2, total_entries=10), [entry("person-4", face_vector(4))])
    assert feed(store, bad) == [False] and store.valid().header.version == 2


def test_revocation_applies_at_once_and_an_older_version_does_not_bring_it_back(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    feed(store, version_commands(keys, header(1, revocation_seq=2), people(3)))
    assert store.receive(*revocation(keys, 3, "person-1")) is True
    assert store.status().revocation_seq == 3
    assert store.receive(*revocation(keys, 3, "person-1")) is True  # re-sent (new command id): kept once
    assert len(store._revocations) == 1
    now = time.time()
    decision = store.decide(face_vector(1), at=now, liveness=None)
    assert not decision.granted and decision.reason == "revoked" and decision.person_ref == "person-1"
    # compiled before the revocation (revocation_seq 2): person-1 stays out
    feed(store, version_commands(keys, header(2, revocation_seq=2), people(3)))
    assert store.decide(face_vector(1), at=now, liveness=None).reason == "revoked"
    assert store.decide(face_vector(2), at=now, liveness=None).granted
    # and across a restart
    again = make_store(tmp_path, keys)
    assert again.load() and again.decide(face_vector(1), at=now, liveness=None).reason == "revoked"
    # a version compiled after it (revocation_seq 3) is the server's word: reinstated
    feed(store, version_commands(keys, header(3, revocation_seq=3), people(3)))
    assert store.decide(face_vector(1), at=now, liveness=None).granted
    # a late revocation the held list already reflects changes nothing
    assert store.receive(*revocation(keys, 3, "person-2")) is True
    assert store.decide(face_vector(2), at=now, liveness=None).granted


def test_revocation_before_any_list_is_kept(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    assert store.receive(*revocation(keys, 4, "person-0")) is True
    feed(store, version_commands(keys, header(1, revocation_seq=1), people(2)))
    assert store.decide(face_vector(0), at=time.time(), liveness=None).reason == "revoked"


def test_expiry_falls_back_to_no_list(tmp_path: Path, keys: Keys) -> None:
    clock = [time.time()]
    store = make_store(tmp_path, keys, clock=lambda: clock[0])
    feed(store, version_commands(keys, header(1, expires_in=60), people(2)))
    assert store.valid() is not None
    clock[0] += 61
    assert store.valid() is None and "expired" in store.unavailable_reason
    assert store.decide(face_vector(0), at=clock[0], liveness=None) is None
    # an expired list at rest is refused at start
    later = make_store(tmp_path, keys, clock=lambda: clock[0])
    assert later.load() is False and later.valid() is None


def test_link_refuses_forged_and_foreign_chunks(tmp_path: Path, keys: Keys) -> None:
    """The link's checks come first: a chunk signed by another key, or for another device, never
    reaches the store; a good one does (with its signed bytes)."""
    store = make_store(tmp_path, keys)
    config = make_config(tmp_path, keys, "mqtt://127.0.0.1:1")
    received: list[bytes] = []
    link = EdgeLink(
        config.mqtt,
        device_uid=UID,
        private_key=p.load_private_key(keys.device_private),
        server_public_key=keys.server_public,
        spool=Spool(tmp_path / "link-spool"),
        on_command=lambda command, raw: received.append(raw) or store.receive(command, raw),
    )
    (good,) = version_commands(keys, header(1), people(2))
    _, forged = signed(keys, good[0].data, key=keys.device_private)  # not the server key
    _, foreign = signed(keys, good[0].data, uid="door-other")
    tampered = good[1].replace(b"person-1", b"person-X")
    for raw in (forged, foreign, tampered):
        link._on_message(link.client, None, mqtt_message(raw))
    assert link.commands_rejected == 3 and received == [] and store.valid() is None
    link._on_message(link.client, None, mqtt_message(good[1]))
    assert received == [good[1]] and store.valid().header.version == 1
    link._on_message(link.client, None, mqtt_message(good[1]))  # replayed command id
    assert link.commands_rejected == 4


def test_at_rest_encrypted_private_and_restored_after_reverifying(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    commands = version_commands(keys, header(1), people(3))
    feed(store, commands)
    store.receive(*revocation(keys, 1, "person-2"))
    path = tmp_path / "spool" / STORE_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    blob = path.read_bytes()
    template = commands[0][0].data["entries"][0]["templates"][0][0]
    for plain in (b"person-0", b"person-2", template.encode(), base64.b64encode(commands[0][1])[:40], b"Main entrance"):
        assert plain not in blob
    again = make_store(tmp_path, keys)
    assert again.load() is True
    assert again.status().version == 1 and again.status().revocation_seq == 1
    assert again.decide(face_vector(0), at=time.time(), liveness=None).granted
    assert again.decide(face_vector(2), at=time.time(), liveness=None).reason == "revoked"


def test_tampered_file_or_other_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    feed(store, version_commands(keys, header(1), people(3)))
    path = tmp_path / "spool" / STORE_FILE
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    tampered = make_store(tmp_path, keys)
    assert tampered.load() is False and tampered.valid() is None and "refused" in tampered.unavailable_reason
    # another device's key (someone who copied the file, or wrote one without this key)
    other_private, _ = p.generate_keypair()
    path.write_bytes(good)
    assert make_store(tmp_path, keys, private=other_private).load() is False
    # written with this device's key but holding commands the server never signed
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    (_, forged_raw), *_ = version_commands(keys, header(1), people(3))
    forged_raw = signed(keys, json.loads(forged_raw)["payload"]["data"], key=keys.device_private)[1]
    body = json.dumps(
        {"format": 1, "device_uid": UID, "versions": [[base64.b64encode(forged_raw).decode()]], "revocations": []}
    ).encode()
    nonce = os.urandom(12)
    key = at_rest_key(p.load_private_key(keys.device_private))
    path.write_bytes(nonce + AESGCM(key).encrypt(nonce, body, b"accessctl-allowlist:" + UID.encode()))
    forged = make_store(tmp_path, keys)
    assert forged.load() is False and "bad_signature" in forged.unavailable_reason


def test_matching_rules_mirror_the_server() -> None:
    now = time.time()
    h = header(
        1, threshold=0.5, margin=0.1, windows={"office": ((now - 10, now + 10),), "night": ((now + 100, now + 200),)}
    )
    twin_a = face_vector(3)
    twin_b = (face_vector(3) + 0.05 * face_vector(4)) / np.linalg.norm(face_vector(3) + 0.05 * face_vector(4))
    compiled = CompiledList(
        h,
        {
            e.ref: e
            for e in [
                entry("alice", face_vector(0), face_vector(1)),  # best template counts
                entry("bob", face_vector(2), schedules=("night",)),
                entry("twin-a", twin_a, schedules=("office",)),
                entry("twin-b", twin_b),
                entry("carol", face_vector(5), valid_until=now - 1),
                entry("dave", face_vector(6), valid_from=now + 60),
            ]
        },
    )
    assert compiled.decide(face_vector(1), at=now, liveness=None).person_ref == "alice"
    unknown = compiled.decide(face_vector(9), at=now, liveness=None)
    assert (unknown.reason, unknown.person_ref, unknown.granted) == ("unknown_face", None, False)
    assert unknown.similarity is not None and unknown.similarity < 0.5
    assert compiled.decide(twin_a, at=now, liveness=None).reason == "ambiguous_match"
    assert compiled.decide(face_vector(2), at=now, liveness=None).reason == "outside_schedule"
    assert compiled.decide(face_vector(5), at=now, liveness=None).reason == "expired"
    assert compiled.decide(face_vector(6), at=now, liveness=None).reason == "not_yet_valid"
    with pytest.raises(ValueError, match="dimensions"):
        compiled.scores(np.ones(DIM + 1))
    with pytest.raises(ValueError, match="zero"):
        compiled.scores(np.zeros(DIM))


def test_liveness_rules_for_compared_faces() -> None:
    now = time.time()
    h = header(1, liveness_required=True, liveness_threshold=0.7)
    compiled = CompiledList(h, {"alice": entry("alice", face_vector(0))})
    assert compiled.decide(face_vector(0), at=now, liveness=None).reason == "liveness_not_measured"
    attack = compiled.decide(face_vector(0), at=now, liveness=0.2)
    assert attack.reason == "presentation_attack" and attack.person_ref == "alice" and not attack.granted
    assert compiled.decide(face_vector(9), at=now, liveness=0.2).reason == "presentation_attack"  # unknown too
    assert compiled.decide(face_vector(0), at=now, liveness=0.9).granted
    assert compiled.decide(face_vector(9), at=now, liveness=0.9).reason == "unknown_face"


def test_thousand_people_match_in_well_under_5_ms() -> None:
    entries = {f"p{i}": entry(f"p{i}", *(face_vector(i, 0.2, seed=s) for s in range(3))) for i in range(1000)}
    compiled = CompiledList(header(1, threshold=0.9), entries)
    assert compiled.matrix.shape == (3000, DIM)
    query = face_vector(500, 0.05, seed=99)
    timings = []
    for _ in range(50):
        start = time.perf_counter()
        decision = compiled.decide(query, at=time.time(), liveness=None)
        timings.append(time.perf_counter() - start)
    assert decision.person_ref == "p500"
    assert sorted(timings)[len(timings) // 2] < 0.005


def test_delta_chain_at_rest_survives_its_base_expiring(tmp_path: Path, keys: Keys) -> None:
    """At start only the held (last) version must be unexpired: a delta's base may be older."""
    clock = [time.time()]
    store = make_store(tmp_path, keys, clock=lambda: clock[0])
    feed(store, version_commands(keys, header(1, expires_in=60, total_entries=2), people(2)))
    delta = [entry("person-5", face_vector(5))]
    feed(store, version_commands(keys, header(2, base=1, expires_in=3600, total_entries=3), delta))
    clock[0] += 120
    again = make_store(tmp_path, keys, clock=lambda: clock[0])
    assert again.load() is True
    assert again.valid().header.version == 2 and sorted(again.valid().entries) == ["person-0", "person-1", "person-5"]


def test_empty_list_is_valid_and_denies_everyone(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    assert feed(store, version_commands(keys, header(1), [])) == [True]
    assert store.valid() is not None and store.status().entries == 0
    decision = store.decide(face_vector(0), at=time.time(), liveness=None)
    assert (decision.granted, decision.reason, decision.similarity) == (False, "unknown_face", None)


def test_chunks_announcing_different_counts_start_over(tmp_path: Path, keys: Keys) -> None:
    store = make_store(tmp_path, keys)
    head = header(1)
    small = version_commands(keys, head, people(12), max_bytes=900)
    big = version_commands(keys, head, people(12), max_bytes=3000)
    assert len(small) != len(big)
    feed(store, small[:1])
    assert store.receive(*big[-1]) is False and store.valid() is None
    assert feed(store, small)[-1] is True


def test_a_model_switch_drops_the_list_of_the_old_model_and_takes_the_new_models(tmp_path: Path, keys: Keys) -> None:
    """After a model update (edge_agent/model_update.py) no face of the new model is compared with
    templates of the old one, even of the same size: the door is secure until the new list comes."""
    store = make_store(tmp_path, keys)
    feed(store, version_commands(keys, header(1), people(3)))
    assert store.decide(face_vector(1), at=time.time(), liveness=None) is not None
    store.model_set("other-model-v2")
    assert store.decide(face_vector(1), at=time.time(), liveness=None) is None
    assert "other-model-v2" in store.unavailable_reason
    assert feed(store, version_commands(keys, header(2, model_version="other-model-v2"), people(3))) == [True]
    assert store.decide(face_vector(1), at=time.time(), liveness=None) is not None
    store.model_set("other-model-v2")  # the same model again: the list stays
    assert store.valid() is not None
