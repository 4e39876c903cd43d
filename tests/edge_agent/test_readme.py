"""Issue 16 item 6: the agent's README tells the main README's story (provision_device first), and
the commands it shows are ones the programs accept."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from edge_agent.__main__ import build_parser

README = Path(__file__).resolve().parents[2] / "edge_agent" / "README.md"


def _commands() -> list[list[str]]:
    """The shell commands of the README's sh blocks, one argv each ([optional] parts dropped)."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(re.sub(r"\[[^\]]*\]", "", line)) for line in lines if line]


def test_provisioning_comes_first_with_provision_device() -> None:
    text = README.read_text()
    assert text.index("provision_device") < text.index("## 2. Install") < text.index("## 4. Run")
    assert "keygen" not in text  # one way to provision: the server's provision_device
    from devices.management.commands.provision_device import Command

    (provision,) = [argv for argv in _commands() if "provision_device" in argv]
    args = Command().create_parser("manage.py", "provision_device").parse_args(provision[3:])
    assert args.uid == "door-1" and args.out == Path("var/edge/door-1")


def test_agent_commands_parse_and_use_no_absolute_paths_or_the_wrong_port() -> None:
    text = README.read_text()
    assert not re.search(r"(?<![\w.<])/(work|etc|opt|home|tmp)/", text), "absolute path in the README"
    assert "mqtt://127.0.0.1:1883" not in text and "--server-mqtt" not in text
    agent = [argv for argv in _commands() if "edge_agent" in argv and "-m" in argv]
    assert {argv[argv.index("edge_agent") + 1] for argv in agent} == {"run", "simulate"}
    for argv in agent:
        args = build_parser().parse_args(argv[argv.index("edge_agent") + 1 :])
        assert args.config == Path("var/edge/door-1/agent.toml")  # the file provision_device wrote
