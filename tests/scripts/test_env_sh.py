"""scripts/_env.sh, driven the way scripts/run and scripts/test use it, with a fake pip in a temp dir."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../../pip.log"
"""


def _checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "_env.sh", tmp_path / "scripts" / "_env.sh")
    for name in ("requirements.txt", "requirements-torch.txt", "requirements-recognition.txt",
                 "requirements-test.txt", "requirements-nodeps.txt"):  # fmt: skip
        (tmp_path / name).write_text(f"{name.removesuffix('.txt')}-package==1.0\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


RUN = "requirements.txt requirements-torch.txt requirements-recognition.txt"
TEST = RUN + " requirements-test.txt"


def _install(checkout: Path, files: str) -> tuple[str, list[str]]:
    """What ``requirements_install FILES`` printed and the pip calls it made (as scripts/run does)."""
    log = checkout / "pip.log"
    log.unlink(missing_ok=True)
    result = subprocess.run(
        ["bash", "-c", f'source scripts/_env.sh && cd "$ROOT" && requirements_install {files}'],
        cwd=checkout, env={**os.environ, "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    return result.stdout, [call.replace(str(checkout) + "/", "") for call in calls]


def test_run_after_test_installs_nothing_and_a_changed_file_alone_is_installed_again(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    out, calls = _install(checkout, TEST)  # scripts/test on a fresh clone
    assert "installing" in out
    assert calls == [
        "-m pip install --quiet --disable-pip-version-check --upgrade pip",
        "-m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-torch.txt "
        "-r requirements-recognition.txt -r requirements-test.txt",
        "-m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt",
    ]

    out, calls = _install(checkout, RUN)  # then scripts/run: everything it needs is there
    assert (out, calls) == ("", [])

    (checkout / "requirements.txt").write_text("requirements-package==2.0\n")
    out, calls = _install(checkout, RUN)
    assert calls[1:] == ["-m pip install --quiet --disable-pip-version-check -r requirements.txt"]
    out, calls = _install(checkout, TEST)
    assert (out, calls) == ("", []), "scripts/test reuses what scripts/run installed"


def test_run_first_then_test_installs_only_the_test_requirements(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    _install(checkout, RUN)
    out, calls = _install(checkout, TEST)
    assert calls[1:] == ["-m pip install --quiet --disable-pip-version-check -r requirements-test.txt"]
    assert "requirements-test.txt" in out
    assert sorted(p.name.rsplit("-", 1)[0] for p in (checkout / ".venv" / ".installed").iterdir()) == [
        "requirements-nodeps.txt", "requirements-recognition.txt", "requirements-test.txt",
        "requirements-torch.txt", "requirements.txt",
    ]  # fmt: skip


def test_a_failed_install_leaves_no_stamp(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    python = checkout / ".venv" / "bin" / "python"
    python.write_text(FAKE_PYTHON + 'case "$*" in *requirements-torch*) exit 1;; esac\n')
    result = subprocess.run(["bash", "-c", f"source scripts/_env.sh && requirements_install {RUN}"],
                            cwd=checkout, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert not list((checkout / ".venv" / ".installed").iterdir())
    python.write_text(FAKE_PYTHON)
    _, calls = _install(checkout, RUN)
    assert "-r requirements-torch.txt" in calls[1], "the next run tries again"


def test_scripts_source_the_shared_functions() -> None:
    run = (ROOT / "scripts" / "run").read_text()
    test = (ROOT / "scripts" / "test").read_text()
    assert f"requirements_install {RUN}\n" in run
    assert f"requirements_install {TEST}\n" in test


def test_deploy_checklist_passes_silently_as_production_sets_it() -> None:
    """scripts/test runs the deploy checklist with production's settings (HTTPS, a real key) and fails
    on any warning, instead of printing Django's four HTTPS warnings on every run."""
    result = subprocess.run(["bash", "-c", "source scripts/_env.sh && deploy_check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert "WARNING" not in result.stderr and "security.W" not in result.stdout + result.stderr
    test = (ROOT / "scripts" / "test").read_text()
    assert "deploy_check" in test and "--deploy --fail-level ERROR" not in test
