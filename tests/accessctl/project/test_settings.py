"""Settings read the environment once, when they load: a bad value stops the process at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from accessctl.project.env import env_float_optional

ROOT = Path(__file__).resolve().parents[3]


def _manage_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "ACCESSCTL_VAR_DIR": str(tmp_path), **env}
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), "check"], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("high", "ACCESSCTL_MATCH_THRESHOLD must be a number, got 'high'"),
        ("1.5", "ACCESSCTL_MATCH_THRESHOLD must be between -1 and 1, got '1.5'"),
    ],
)
def test_a_bad_match_threshold_fails_at_start(tmp_path: Path, value: str, message: str) -> None:
    result = _manage_check(tmp_path, ACCESSCTL_MATCH_THRESHOLD=value)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ACCESSCTL_PG_SHARED_BUFFERS", "lots", "ACCESSCTL_PG_SHARED_BUFFERS must look like 512MB or 2GB, got 'lots'"),
        ("ACCESSCTL_HNSW_EF_SEARCH", "wide", "ACCESSCTL_HNSW_EF_SEARCH must be an integer, got 'wide'"),
        ("ACCESSCTL_MATCH_MIN_MARGIN", "x", "ACCESSCTL_MATCH_MIN_MARGIN must be a number, got 'x'"),
        ("ACCESSCTL_RETAIN_EVENTS_DAYS", "a year", "ACCESSCTL_RETAIN_EVENTS_DAYS must be an integer"),
    ],
)
def test_other_bad_values_fail_at_start(tmp_path: Path, name: str, value: str, message: str) -> None:
    result = _manage_check(tmp_path, **{name: value})
    assert result.returncode != 0
    assert message in result.stderr


def test_env_float_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCESSCTL_TEST_VALUE", raising=False)
    assert env_float_optional("ACCESSCTL_TEST_VALUE", minimum=0, maximum=1) is None
    monkeypatch.setenv("ACCESSCTL_TEST_VALUE", " ")
    assert env_float_optional("ACCESSCTL_TEST_VALUE", minimum=0, maximum=1) is None
    monkeypatch.setenv("ACCESSCTL_TEST_VALUE", "0.25")
    assert env_float_optional("ACCESSCTL_TEST_VALUE", minimum=0, maximum=1) == 0.25
    monkeypatch.setenv("ACCESSCTL_TEST_VALUE", "-0.1")
    with pytest.raises(ImproperlyConfigured, match="between 0 and 1"):
        env_float_optional("ACCESSCTL_TEST_VALUE", minimum=0, maximum=1)
