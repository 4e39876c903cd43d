"""Test helpers for the offline allow-list: headers, entries, chunks signed with a real server key."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import paho.mqtt.client as paho

from edge_agent.vision import FaceCandidate
from faceengine import protocol as p
from faceengine.protocol.allowlist import ALWAYS, AllowlistEntry, AllowlistHeader, Template, allowlist_chunks
from tests.edge_agent.conftest import UID, Keys

MODEL = "fake-embedder-v1"
DIM = 16


def face_vector(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """Person ``i``'s face direction (orthogonal for i < DIM, random beyond), plus a little noise."""
    rng = np.random.default_rng(1000 + i)
    base = np.eye(DIM, dtype=np.float32)[i] if i < DIM else rng.standard_normal(DIM).astype(np.float32)
    if noise:
        base = base + noise * np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return base / np.linalg.norm(base)


def entry(ref: str, *vectors: np.ndarray, schedules: Sequence[str] = (ALWAYS,), **kw: Any) -> AllowlistEntry:
    return AllowlistEntry(
        ref=ref,
        schedules=tuple(schedules),
        templates=tuple(Template.from_values(v.tolist()) for v in vectors),
        **kw,
    )


def header(version: int = 1, *, base: int | None = None, expires_in: float = 3600.0, **kw: Any) -> AllowlistHeader:
    now = time.time()
    fields: dict[str, Any] = {
        "version": version,
        "base_version": base,
        "issued_at": now,
        "expires_at": now + expires_in,
        "model_version": MODEL,
        "dim": DIM,
        "threshold": 0.5,
        "margin": 0.05,
        "liveness_required": False,
        "liveness_threshold": None,
        "windows": {},
        "door": "Main entrance",
    }
    fields.update(kw)
    return AllowlistHeader(**fields)


def signed(
    keys: Keys, data: dict[str, Any], kind: str = "allowlist", *, uid: str = UID, key: str | None = None
) -> tuple[p.Command, bytes]:
    """A server command carrying ``data``, signed (by the server key unless ``key``); verified as the link does."""
    command = p.Command(
        device_uid=uid,
        command=kind,
        command_id=p.new_id(),
        issued_at=time.time(),
        reason=kind,
        data=data,
    )
    raw = p.seal(command, key or keys.server_private)
    return command, raw


def version_commands(
    keys: Keys,
    head: AllowlistHeader,
    entries: Sequence[AllowlistEntry],
    removed: Sequence[str] = (),
    *,
    max_bytes: int | None = None,
) -> list[tuple[p.Command, bytes]]:
    """Every chunk of a version as signed commands (``total_entries`` filled in by the caller)."""
    kwargs = {"max_bytes": max_bytes} if max_bytes else {}
    return [signed(keys, c.to_dict()) for c in allowlist_chunks(head, entries, removed, **kwargs)]


def revocation(keys: Keys, seq: int, *refs: str) -> tuple[p.Command, bytes]:
    return signed(keys, p.Revocation(seq=seq, refs=refs).to_dict(), "revoke")


def mqtt_message(raw: bytes, uid: str = UID) -> paho.MQTTMessage:
    """What paho hands the link's ``on_message`` for ``raw`` on the device's commands topic."""
    message = paho.MQTTMessage(topic=p.commands_topic(uid).encode())
    message.payload = raw
    return message


class FakeEmbedder:
    """Stands in for the face model: returns the vector the test sets, counts calls."""

    model_version = MODEL
    input_kind = "arcface112"

    def __init__(self, vector: np.ndarray | None = None) -> None:
        self.vector = vector if vector is not None else face_vector(0)
        self.calls = 0

    def embed(self, candidate: FaceCandidate) -> np.ndarray:
        self.calls += 1
        return self.vector
