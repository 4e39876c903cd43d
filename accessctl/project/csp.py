"""Content-Security-Policy for every page: the product's own scripts and styles only.

Django 5.2 has no built-in CSP, and django-csp would be a dependency for what is here one header
chosen by path; this middleware is that header. The pages (dashboard, audit, enrolment, sign-in,
admin) carry no inline script, style attribute or event handler (data for scripts travels in
``<script type="application/json">`` blocks, which are not executed), so the policy is strict:

* ``default-src 'self'``; scripts, styles, fonts and fetches from the site itself only;
* ``connect-src 'self'``: XHR/fetch and the dashboard websocket (``ws:``/``wss:`` of the same
  origin are "self" in CSP level 3);
* ``img-src 'self' data:`` (face thumbnails are served by the site; the stylesheet draws the
  placeholder face as a ``data:`` SVG);
* ``object-src 'none'``, ``base-uri 'none'``, ``form-action 'self'`` and ``frame-ancestors 'none'``
  (no framing: clickjacking, together with ``X-Frame-Options: DENY``).

The API docs (Swagger UI and Redoc from ``drf_spectacular_sidecar``, served by the site) render
with inline styles and Redoc searches in a ``blob:`` worker: their two pages get the same policy
plus ``style-src 'unsafe-inline'`` and ``worker-src blob:``; their scripts are still the site's own
files (Swagger's initialiser is served as a file, see ``accessctl/api/urls.py``).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.deprecation import MiddlewareMixin

HEADER = "Content-Security-Policy"

PAGE_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}
API_DOCS_POLICY = {
    **PAGE_POLICY,
    "style-src": "'self' 'unsafe-inline'",
    "worker-src": "'self' blob:",
}


def csp_header_value(policy: dict[str, str]) -> str:
    return "; ".join(f"{directive} {sources}" for directive, sources in policy.items())


PAGE_CSP = csp_header_value(PAGE_POLICY)
API_DOCS_CSP = csp_header_value(API_DOCS_POLICY)


def _policy_for(path: str) -> str:
    return API_DOCS_CSP if path in (reverse("api-docs"), reverse("api-redoc")) else PAGE_CSP


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Adds the policy to every response that does not set its own (sync and async alike)."""

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if HEADER not in response:
            response[HEADER] = _policy_for(request.path)
        return response
