"""Admin and documentation pages a new administrator meets in the first hour (issue 16, item 9)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from accessctl.models import ApiToken
from accessctl.tokens import api_token_issue
from tests.accessctl.helpers import PASSWORD
from tests.browser.conftest import ARTIFACTS, login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_api_token_table_fits_a_1400_px_screen(page, live_url) -> None:
    admin = get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    for i in range(3):
        api_token_issue(
            user=admin, issued_by=admin, name=f"Integration number {i}", scopes=list(ApiToken.Scope.values),
            expires_at=timezone.now() + timezone.timedelta(days=90),
        )  # fmt: skip
    page.set_viewport_size({"width": 1400, "height": 900})
    login(page, live_url, "admin", PASSWORD)
    page.goto(f"{live_url}/admin/accessctl/apitoken/")
    assert page.locator("#content h1").inner_text() == "Select API token to change"
    table = page.locator("#result_list")
    box = table.bounding_box()
    width = page.evaluate("() => document.documentElement.clientWidth")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-api-tokens.png"), full_page=True)
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, (box, width)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    # Nothing cut off inside the list either: the last column shows beside the filters.
    results = page.locator("#changelist .results")
    assert results.evaluate("el => el.scrollWidth <= el.clientWidth"), results.evaluate(
        "el => [el.scrollWidth, el.clientWidth]"
    )
    last = page.locator("#result_list thead th").last
    assert last.inner_text().strip().lower() == "revoked at"
    last_box, filters = last.bounding_box(), page.locator("#changelist-filter").bounding_box()
    assert last_box["x"] + last_box["width"] <= filters["x"], (last_box, filters)
    scopes = page.locator("#result_list td.field-scope_list").first.inner_text()
    assert scopes == (
        "events:read, people:read+write, doors:read+write, devices:read+write, identify, webhooks:write, "
        "models:read+write"
    )
