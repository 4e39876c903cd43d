"""``python -m edge_agent keygen``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edge_agent.__main__ import main
from faceengine import protocol as p


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys" / "device.key"
    assert main(["keygen", "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    public = capsys.readouterr().out.split("public key:")[1].strip()
    assert p.public_key_b64(out.read_text()) == public
    assert main(["keygen", "--out", str(out)]) == 1  # never overwrite silently
