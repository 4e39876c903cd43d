"""Under the Content-Security-Policy the pages still work and the browser reports no violation:
the live dashboard (scripts, styles, thumbnails, websocket, operator actions), the admin and the
API docs (Swagger UI and Redoc from the sidecar)."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from accessctl.codes import Decision, Reason
from accessctl.models import Door, Person
from accessctl.project.csp import API_DOCS_CSP, PAGE_CSP
from devices.models import EdgeDevice
from tests.accessctl.helpers import PASSWORD, event_make, user_create
from tests.browser.conftest import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Collects every violation the page reports (the console errors fail the test too, see conftest.page).
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def _violations(page: Any) -> list[str]:
    return page.evaluate("window.__cspViolations")


def test_dashboard_admin_and_api_docs_work_under_the_policy(page, live_url) -> None:
    user_create(
        "olga", "accessctl.view_dashboard", "accessctl.operate_doors", "accessctl.view_accessevent",
        is_staff=True, is_superuser=True,
    )  # fmt: skip
    door = Door.objects.create(name="Main entrance")
    EdgeDevice.objects.create(uid="cam-main-1", door=door, public_key="x", status="online", last_seen=timezone.now())
    ada = Person.objects.create(name="Ada Lovelace")
    event_make(
        door_id=door.pk, person_id=ada.pk, decision=Decision.GRANT, reason=Reason.MATCHED, similarity=0.7,
        occurred_at=timezone.now(),
    )  # fmt: skip
    page.add_init_script(RECORD_VIOLATIONS)
    headers: dict[str, str] = {}
    page.on("response", lambda r: headers.setdefault(r.url, r.headers.get("content-security-policy", "")))

    login(page, live_url, "olga", PASSWORD)
    assert headers[f"{live_url}/"] == PAGE_CSP
    page.wait_for_selector("#live-status.live")  # dashboard.js ran and its websocket connected
    assert page.locator(".tile").count() == 1
    # Styles from app.css apply (no inline styles needed): the tile is laid out as a card.
    assert page.locator(".tile").evaluate("el => getComputedStyle(el).display") != "inline"
    # An operator action goes through the page's script (fetch + websocket update).
    page.locator('.tile button[data-action="unlock"]').click()
    page.locator(".toast.ok").wait_for()
    assert _violations(page) == []

    page.goto(f"{live_url}/admin/accessctl/door/{door.pk}/change/")
    page.locator("#door_form").wait_for()
    page.goto(f"{live_url}/admin/accessctl/person/add/")
    page.locator("#person_form").wait_for()
    assert _violations(page) == []

    page.goto(f"{live_url}/api/v1/docs/")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "accessctl API" in page.locator(".swagger-ui .info .title").inner_text()
    assert headers[f"{live_url}/api/v1/docs/"] == API_DOCS_CSP
    assert _violations(page) == []


def test_redoc_renders_under_the_policy(page, live_url) -> None:
    """Redoc renders from the site's own files and asks nothing of the internet: no web fonts, and
    its sidebar's Redocly logo (from cdn.redoc.ly in the stock bundle) is served locally (issue 16)."""
    page.add_init_script(RECORD_VIOLATIONS)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    response = page.goto(f"{live_url}/api/v1/redoc/")
    assert response.headers["content-security-policy"] == API_DOCS_CSP
    page.locator("h1", has_text="accessctl API").wait_for()
    page.locator("h2", has_text="List access events").first.wait_for()
    logo = page.locator('a[href="https://redocly.com/redoc/"] img')
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=logo.element_handle())
    assert logo.get_attribute("src") == "/static/img/redoc-logo.svg"
    assert [u for u in requested if not u.startswith((live_url + "/", "blob:", "data:"))] == []
    assert _violations(page) == []  # and no console error (the page fixture)


def test_a_page_cannot_run_injected_inline_script(browser, live_url) -> None:
    """The policy is enforced, not decorative: an inline script injected into a page does not run
    (its own page: the refusal is a console error, which the ``page`` fixture would count as a failure)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.add_init_script(RECORD_VIOLATIONS)
        refusals: list[str] = []
        page.on("console", lambda msg: refusals.append(msg.text) if msg.type == "error" else None)
        page.goto(f"{live_url}/accounts/login/")
        ran = page.evaluate(
            """() => { window.__ran = false; const s = document.createElement("script");
            s.textContent = "window.__ran = true"; document.body.appendChild(s); return window.__ran; }"""
        )
        assert ran is False
        page.wait_for_function("window.__cspViolations.length > 0")
        assert _violations(page)[0].startswith("script-src")
        assert any("Content Security Policy" in text for text in refusals)
    finally:
        context.close()
