"""How a door's own decisions and its offline mode are shown (accessctl/offline_marks.py)."""

from __future__ import annotations

import pytest

from accessctl.offline_marks import OfflineMark, duration_text, link_mode, offline_mark_text

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "heartbeat", "mode", "fallback", "label"),
    [
        ("online", {"offline_mode": "allowlist", "allowlist_version": 7, "allowlist_expires_at": NOW + 72000},
         "online", "allowlist", "allow-list v7 · 20 h left"),
        ("offline", {"offline_mode": "allowlist", "allowlist_version": 7, "allowlist_expires_at": NOW + 1800},
         "offline-allowlist", "allowlist", "allow-list v7 · 30 min left"),
        # Its list expired: the door falls back to secure (PROTOCOL.md), whatever it declared.
        ("offline", {"offline_mode": "allowlist", "allowlist_version": 7, "allowlist_expires_at": NOW - 1},
         "offline-secure", "secure", "allow-list expired: secure"),
        ("offline", {"offline_mode": "safe"}, "offline-safe", "safe", "safe"),
        ("degraded", {}, "degraded", "secure", "secure"),  # an older agent: no offline_mode
        ("offline", {"offline_mode": "allowlist", "allowlist_version": True, "allowlist_expires_at": "soon"},
         "offline-secure", "secure", "allow-list expired: secure"),  # nonsense is not a list
        ("provisioned", None, "provisioned", "secure", "secure"),
    ],
)  # fmt: skip
def test_link_mode(status: str, heartbeat: dict | None, mode: str, fallback: str, label: str) -> None:
    shown = link_mode(status=status, heartbeat=heartbeat, now=NOW)
    assert (shown["mode"], shown["fallback"], shown["label"]) == (mode, fallback, label)


def test_offline_mark_text() -> None:
    mark = OfflineMark(
        basis="allowlist", late=True, received_at=None, synced_after_s=185.0, allowlist_version=4, agrees=False,
        server_decision="deny", server_reason="not_in_group", clock_ahead_s=None,
    )  # fmt: skip
    assert offline_mark_text(mark) == "offline, synced 3 min later · allow-list v4 · server would deny (not in group)"
    fail_safe = OfflineMark(
        basis="fail_safe", late=True, received_at=None, synced_after_s=7200.0, allowlist_version=None, agrees=None,
        server_decision=None, server_reason=None, clock_ahead_s=7200.0,
    )  # fmt: skip
    assert offline_mark_text(fail_safe) == "offline, synced 2 h later · fail-safe · device clock 2 h ahead"
    assert offline_mark_text(None) == ""
    assert [duration_text(s) for s in (12, 600, 10800, 300000)] == ["12 s", "10 min", "3 h", "3 days"]
