"""The project package wires the apps by dotted strings only (INSTALLED_APPS, URL includes, Celery
autodiscovery, commands by name): neither it nor the domain's API and privacy jobs import an app above."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from django.urls import reverse

ROOT = Path(__file__).resolve().parents[3]
UPPER_APPS = ("recognition", "devices")


def _imported_modules(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def test_project_api_and_privacy_import_no_upper_app() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ("accessctl/project", "accessctl/api", "accessctl/privacy")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for name in _imported_modules(path)
        if name.split(".")[0] in UPPER_APPS
    ]
    assert offenders == []


def test_each_app_mounts_its_own_api_urls_under_one_prefix() -> None:
    from accessctl.api.views import api_urlconfs

    mounted = [module.__name__ for module in api_urlconfs(reverse("api-root"))]
    assert mounted == ["accessctl.api.urls", "recognition.api.urls", "devices.api.urls"]


def test_the_web_process_loads_no_model_runtime() -> None:
    """Importing the ASGI app, every URL configuration and the admin imports neither torch nor
    onnxruntime: they are loaded lazily, once per worker process, where faces are processed."""
    code = (
        "import sys, django\n"
        "django.setup()\n"
        "from accessctl.project.asgi import application\n"
        "from django.urls import get_resolver\n"
        "get_resolver().url_patterns\n"
        "from django.contrib import admin\n"
        "admin.autodiscover()\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnxruntime', 'facenet_pytorch'})\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "accessctl.project.settings"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
