"""Decision and reason codes shared by the policy, the audit log, the API and the dashboard.

Codes are StrEnum values stored as-is in the database and sent on the wire; never prose. The one
reason enum is the protocol's (:class:`faceengine.protocol.Reason`: rejections, denials, grants and
system records); it is re-exported here for the domain.
"""

from __future__ import annotations

from enum import StrEnum

from faceengine.protocol.codes import Reason


class Decision(StrEnum):
    GRANT = "grant"
    DENY = "deny"


def choices(enum: type[StrEnum]) -> list[tuple[str, str]]:
    """Django ``choices`` for a StrEnum: value and a readable label."""
    return [(member.value, member.value.replace("_", " ")) for member in enum]


DECISION_CHOICES = choices(Decision)
REASON_CHOICES = choices(Reason)

__all__ = ["DECISION_CHOICES", "REASON_CHOICES", "Decision", "Reason", "choices"]
