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
    return " · ".join(parts)
