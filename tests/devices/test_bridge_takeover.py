"""Which bridges of a shared group are taken for dead (devices.bridge_takeover); the takeover itself
runs on a real Mosquitto in tests/reliability/test_real_services.py."""

from __future__ import annotations

from devices.bridge_takeover import orphaned_bridges


def test_only_stale_bridges_of_my_group_other_than_me_are_orphans() -> None:
    beats = {
        "accessctl-bridge-1": {"group": "g", "age_s": 40.0},  # me: never
        "accessctl-bridge-2": {"group": "g", "age_s": 31.0},  # stale, my group
        "accessctl-bridge-3": {"group": "g", "age_s": 2.0},  # alive
        "accessctl-bridge-4": {"group": "other", "age_s": 99.0},  # another group's
        "accessctl-bridge-5": {"age_s": 99.0},  # no group (no shared subscription, or an older bridge)
    }
    assert orphaned_bridges(beats, me="accessctl-bridge-1", group="g", stale_after_s=30.0) == ["accessctl-bridge-2"]
    assert orphaned_bridges(beats, me="accessctl-bridge-1", group="g", stale_after_s=60.0) == []
