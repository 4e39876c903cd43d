"""Issue 16 item 7: the demo is a calm site. Its camera plays visitors for ever (no exit, so no
restart and no "device offline" each loop), and a child that does exit cleanly is no crash."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from accessctl.project.supervisor import Child, Supervisor
from devices.demo import DEMO_VISITOR_GAP_S, Demo
from edge_agent.__main__ import build_parser


def test_demo_camera_runs_the_calm_site_loop(tmp_path: Path) -> None:
    demo = Demo(config_path=tmp_path / "agent.toml", lfw_root=tmp_path / "lfw", visitors=300,
                regulars=("Colin_Powell", "Tony_Blair"))  # fmt: skip
    argv = demo.simulator_argv()
    assert argv[:3] == [sys.executable, "-m", "edge_agent"]
    args = build_parser().parse_args(argv[3:])  # the agent's own command line accepts it
    assert args.command == "simulate" and args.loop
    assert args.regulars == "Colin_Powell,Tony_Blair" and args.gap == DEMO_VISITOR_GAP_S >= 5


def test_up_gets_the_demo_camera_from_the_devices_command_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``up --demo`` imports no app: it runs ``manage.py demo`` and starts the command line it prints."""
    from accessctl.project.management.commands.up import Command as Up
    from devices.management.commands import demo as demo_command

    demo = Demo(config_path=tmp_path / "agent.toml", lfw_root=tmp_path, visitors=3, regulars=("Tony_Blair",))
    monkeypatch.setattr(demo_command, "lfw_locate", lambda explicit=None: Path(explicit or tmp_path))
    monkeypatch.setattr(demo_command, "demo_prepare", lambda *, lfw_root: demo)
    child = Up()._demo_child(str(tmp_path))
    assert child.name == "edge" and child.argv == demo.simulator_argv()


@pytest.mark.parametrize(("code", "level", "text"), [(0, logging.INFO, "finished (exit code 0)"),
                                                      (3, logging.ERROR, "exited with code 3")])  # fmt: skip
def test_supervisor_logs_a_clean_exit_as_info_and_a_crash_as_error(
    code: int, level: int, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    child = Child("edge", [sys.executable, "-c", f"raise SystemExit({code})"])
    supervisor = Supervisor([child])
    child.start(supervisor.env)
    assert child.process is not None
    child.process.wait(30)
    caplog.set_level(logging.INFO, logger="accessctl.project.supervisor")
    supervisor._watch(child)
    (record,) = [r for r in caplog.records if "exit code" in r.getMessage() or "exited" in r.getMessage()]
    assert record.levelno == level and text in record.getMessage()
    assert child.process is None and child.next_start > 0  # started again after its delay either way


def test_the_looping_camera_heartbeats_often_enough_to_stay_online(settings) -> None:
    """The demo's agent (its config has no [agent] section) beats well inside the server's offline limit."""
    from edge_agent.config import EdgeConfig

    assert 2 * EdgeConfig().agent.heartbeat_interval_s < settings.DEVICE_OFFLINE_AFTER_S
