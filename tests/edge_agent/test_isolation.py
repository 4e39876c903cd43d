"""The edge agent never imports Django or server code (DESIGN.md: edge_agent/ must not): of ours,
only the Django-free face engine (``faceengine``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

EDGE = Path(__file__).resolve().parents[2] / "edge_agent"


def test_importing_edge_agent_does_not_import_django() -> None:
    modules = sorted(f"edge_agent.{p.stem}" for p in EDGE.glob("*.py") if p.stem != "__init__")
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('django', 'torch', 'accessctl', 'devices', 'recognition'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=EDGE.parent, env={"PATH": ""})


def test_no_server_imports_in_source() -> None:
    for path in EDGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root not in (
                    "django",
                    "rest_framework",
                    "celery",
                    "channels",
                    "accessctl",
                    "devices",
                    "recognition",
                ), f"{path.name} imports {name}"
