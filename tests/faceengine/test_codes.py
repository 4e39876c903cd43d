"""One reason enum: every code the protocol can raise, and every code the server uses, is a Reason."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from faceengine import protocol as p
from faceengine.protocol.codes import Reason

ROOT = Path(__file__).resolve().parents[2]

#: the codes of the former ``RejectReason`` (the protocol's own enum, now merged into Reason)
PROTOCOL_CODES = {
    "malformed",
    "bad_version",
    "bad_signature",
    "unknown_device",
    "stale_timestamp",
    "replay",
    "topic_mismatch",
    "too_large",
    "bad_embedding",
    "bad_image",
}


def _reason_attributes(folders: tuple[str, ...]) -> set[tuple[str, str]]:
    """``(file, NAME)`` for every ``Reason.NAME`` / ``p.Reason.NAME`` written in ``folders``."""
    found = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if not isinstance(node, ast.Attribute):
                    continue
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "Reason") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "Reason"
                ):
                    found.add((str(path.relative_to(ROOT)), node.attr))
    return found


def test_former_protocol_codes_are_members_with_the_same_values() -> None:
    assert PROTOCOL_CODES <= {member.value for member in Reason}
    assert p.Reason is Reason


def test_every_reason_the_code_names_is_a_member() -> None:
    """Every ``Reason.X`` the protocol validators raise (and the apps use) exists, run or not."""
    protocol = _reason_attributes(("faceengine/protocol",))
    assert {name for _, name in protocol} >= {"MALFORMED", "BAD_SIGNATURE", "TOO_LARGE", "BAD_EMBEDDING"}
    members = set(Reason.__members__)
    for path, name in protocol | _reason_attributes(("accessctl", "devices", "recognition", "edge_agent")):
        if name in ("value", "name", "__members__"):
            continue
        assert name in members, f"{path}: Reason.{name} is not a member"


@pytest.mark.parametrize("code", sorted(PROTOCOL_CODES))
def test_protocol_error_carries_a_reason(code: str) -> None:
    exc = p.ProtocolError(code, "why")  # type: ignore[arg-type]
    assert exc.code is Reason(code)
    assert isinstance(exc, ValueError)
