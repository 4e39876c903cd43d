"""faceengine is the ground floor: it imports nothing of ours, never Django, and reads no environment."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "faceengine"
FORBIDDEN = ("django", "rest_framework", "celery", "channels", "accessctl", "recognition", "devices", "edge_agent")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


def test_no_imports_of_the_server_apps_or_the_agent() -> None:
    for path in ENGINE.rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in FORBIDDEN, f"{path.relative_to(ENGINE)} imports {name}"


def test_reads_no_environment() -> None:
    """Options are constructor arguments; the server reads the environment in its settings."""
    for path in ENGINE.rglob("*.py"):
        text = path.read_text()
        for needle in (r"\bos\.environ\b", r"\bgetenv\(", r"\bsettings\.[A-Za-z_]"):
            assert not re.search(needle, text), f"{path.relative_to(ENGINE)} matches {needle}"


#: Modules that *are* torch code (network definitions, the ONNX export tool); what uses them imports them lazily.
TORCH_MODULES = {"faceengine.liveness.network", "faceengine.liveness.onnx_export"}


def test_importing_every_module_imports_no_server_code_nor_torch() -> None:
    modules = sorted(
        ".".join(("faceengine", *p.relative_to(ENGINE).with_suffix("").parts)).removesuffix(".__init__")
        for p in ENGINE.rglob("*.py")
    )
    modules = [m for m in modules if m not in TORCH_MODULES]
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {(*FORBIDDEN, 'torch', 'onnxruntime')!r})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ENGINE.parent, env={"PATH": ""})
