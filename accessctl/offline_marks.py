"""How an access event a door decided alone is marked wherever events are shown.

One reading of an offline event's record (``accessctl.offline_decisions`` writes it), used by the
dashboard feed (``realtime``), the audit pages and CSV, the API and webhooks: when it happened
(``occurred_at``) against when the server received it, the allow-list version the device used,
and whether the server agrees with the device now. Codes and numbers here; the words are the
templates' (:func:`offline_mark_text`) and the dashboard script's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from accessctl.models import AccessEvent

#: Source code of a door's own decisions (``AccessEvent.Source.DEVICE_OFFLINE``), without importing models.
DEVICE_OFFLINE = "device_offline"


class OfflineMark(TypedDict):
    basis: str | None  # allowlist, fail_safe, fail_secure, ...
    late: bool  # arrived outside the freshness window (synced after an outage)
    received_at: str | None
    synced_after_s: float | None  # received - occurred
    allowlist_version: int | None
    agrees: bool | None  # None: recorded before the server checked offline decisions
    server_decision: str | None
    server_reason: str | None
    clock_ahead_s: float | None  # the device dated it this far after the server received it


def offline_mark(event: AccessEvent) -> OfflineMark | None:
    """The offline mark of ``event``; None for an event that is not a door's own decision."""
    if event.source != DEVICE_OFFLINE:
        return None
    details = event.details or {}
    server = details.get("server") or {}
    synced = details.get("synced_after_s")
    if synced is None and event.recorded_at is not None:
        synced = max(0.0, (event.recorded_at - event.occurred_at).total_seconds())
    return OfflineMark(
        basis=(details.get("offline_decision") or {}).get("basis"),
        late=bool(details.get("late", True)),
        received_at=details.get("received_at"),
        synced_after_s=None if synced is None else float(synced),
        allowlist_version=event.allowlist_version,
        agrees=details.get("agrees"),
        server_decision=server.get("decision"),
        server_reason=server.get("reason"),
        clock_ahead_s=details.get("clock_ahead_s"),
    )


def duration_text(seconds: float) -> str:
    """``42 s``, ``3 min``, ``5 h``, ``2 days`` (rounded)."""
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def offline_mark_text(mark: OfflineMark | None) -> str:
    """``offline, synced 3 min later · allow-list v7 · server would deny (suspended)``; '' for None."""
    if mark is None:
        return ""
    synced = mark["synced_after_s"]
    parts = ["offline" if synced is None else f"offline, synced {duration_text(synced)} later"]
    if mark["allowlist_version"] is not None:
        parts.append(f"allow-list v{mark['allowlist_version']}")
    elif mark["basis"]:
        parts.append(mark["basis"].replace("_", "-"))
    if mark["agrees"] is True:
        parts.append("server agrees")
    elif mark["agrees"] is False:
        verdict = "grant" if mark["server_decision"] == "grant" else "deny"
        reason = (mark["server_reason"] or "").replace("_", " ")
        parts.append(f"server would {verdict}" + (f" ({reason})" if reason and verdict == "deny" else ""))
    if mark.get("clock_ahead_s"):
        parts.append(f"device clock {duration_text(mark['clock_ahead_s'])} ahead")
    return " · ".join(parts)


#: Device statuses in which the server answers the door (``devices.models.EdgeDevice.Status``).
_REACHABLE = frozenset({"online", "degraded"})


class LinkMode(TypedDict):
    mode: str  # online / degraded, offline-allowlist / offline-secure / offline-safe, or provisioned / disabled
    fallback: str  # what the door does alone (now if it is offline): allowlist, secure or safe
    allowlist_version: int | None
    allowlist_expires_at: float | None  # unix seconds
    label: str  # "allow-list v7 · 20 h left", "secure", "allow-list expired: secure"


def link_mode(*, status: str, heartbeat: dict | None, now: float) -> LinkMode:
    """A device's link mode for the dashboard, from its status and its last signed heartbeat
    (``offline_mode``, ``allowlist_version``, ``allowlist_expires_at``): a door holding an unexpired
    allow-list decides alone when the link drops; one whose list expired falls back to ``secure``."""
    heartbeat = heartbeat or {}
    declared = heartbeat.get("offline_mode")
    version = heartbeat.get("allowlist_version")
    expires = heartbeat.get("allowlist_expires_at")
    version = version if isinstance(version, int) and not isinstance(version, bool) else None
    expires = float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None
    holds_list = declared == "allowlist" and version is not None and expires is not None and expires > now
    if holds_list:
        fallback, label = "allowlist", f"allow-list v{version} · {duration_text(expires - now)} left"
    elif declared == "allowlist":
        fallback, label = "secure", "allow-list expired: secure"
    elif declared == "safe":
        fallback, label = "safe", "safe"
    else:
        fallback, label = "secure", "secure"
    if status in _REACHABLE or status in ("provisioned", "disabled"):
        mode = status
    else:
        mode = f"offline-{fallback}"
    return LinkMode(mode=mode, fallback=fallback, allowlist_version=version, allowlist_expires_at=expires, label=label)
