"""Redoc served with nothing from the internet (issue 16).

The sidecar's ``redoc.standalone.js`` draws "API docs by Redocly" with a logo fetched from
``cdn.redoc.ly``: the strict CSP blocks it (a console error on every visit) and an offline site
should not try. :func:`redoc_bundle_text` is that bundle with the logo pointed at a local file
(``static/img/redoc-logo.svg``) and without its source-map comment; :func:`redoc_bundle` serves it.
The stock page's web fonts are left out by ``templates/accessctl/api_redoc.html``; Redoc's own
theme names fonts (Roboto, Montserrat) without loading them, so the browser's fall back to its own.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.templatetags.static import static
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)

REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
LOCAL_LOGO = "img/redoc-logo.svg"


def _sidecar_bundle_path() -> Path:
    import drf_spectacular_sidecar

    static_root = Path(drf_spectacular_sidecar.__file__).parent / "static" / "drf_spectacular_sidecar"
    return static_root / "redoc" / "bundles" / "redoc.standalone.js"


@cache
def redoc_bundle_text() -> str:
    """The Redoc bundle with its only internet address (the logo) replaced by a local file."""
    text = _sidecar_bundle_path().read_text(encoding="utf-8")
    if REDOC_LOGO_URL not in text:
        logger.warning("the Redoc bundle no longer names %s; served unchanged", REDOC_LOGO_URL)
    text = text.replace(REDOC_LOGO_URL, static(LOCAL_LOGO))
    lines = text.rstrip("\n").split("\n")
    if lines and lines[-1].startswith("//# sourceMappingURL="):
        lines.pop()
    return "\n".join(lines) + "\n"


@require_GET
def redoc_bundle(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(redoc_bundle_text(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=86400"
    return response
