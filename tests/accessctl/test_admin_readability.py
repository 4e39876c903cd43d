"""What a new administrator reads in the admin (issue 16, item 9): consistent names, device
heartbeat and configuration as readable tables, a door's time zone chosen from the IANA zones."""

from __future__ import annotations

import zoneinfo

import pytest
from django.urls import reverse

from accessctl.models import ApiToken, Door
from devices.models import EdgeDevice
from recognition.models import EnrollmentPhoto
from tests.accessctl.helpers import user_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    return client


def test_names_are_spelled_one_way(admin_client) -> None:
    assert str(EnrollmentPhoto._meta.verbose_name_plural) == "enrolment photos"
    assert str(ApiToken._meta.verbose_name_plural) == "API tokens"
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert "Enrolment photos" in index and "API tokens" in index
    assert "Enrollment" not in index and "Api tokens" not in index


def test_device_heartbeat_and_config_are_tables_not_raw_json(admin_client) -> None:
    device = EdgeDevice.objects.create(
        uid="cam-1",
        public_key="x",
        config={"min_face_px": 60, "camera": {"fps": 5, "source": "rtsp://cam"}},
        last_heartbeat={"agent_version": "1.2.0", "camera": {"fps": 4.8}, "spool_depth": 0, "ok": True},
    )
    page = admin_client.get(reverse("admin:devices_edgedevice_change", args=[device.pk])).content.decode()
    assert '<table class="json-table"><tr><th>agent_version</th><td>1.2.0</td></tr>' in page
    assert "<tr><th>camera.fps</th><td>4.8</td></tr>" in page and "<tr><th>ok</th><td>yes</td></tr>" in page
    assert '{"agent_version"' not in page  # no raw JSON line
    # The configuration is edited indented, one key a line, and saved as JSON.
    assert "{\n  &quot;camera&quot;: {\n    &quot;fps&quot;: 5," in page
    form = {"uid": "cam-1", "name": "", "door": "", "status": "online", "config": '{"min_face_px": 40}'}
    response = admin_client.post(reverse("admin:devices_edgedevice_change", args=[device.pk]), form)
    assert response.status_code == 302, response.content.decode()[-3000:]
    device.refresh_from_db()
    assert device.config == {"min_face_px": 40}


def test_door_time_zone_is_a_choice_of_iana_zones(admin_client) -> None:
    add = reverse("admin:accessctl_door_add")
    page = admin_client.get(add).content.decode()
    assert '<select name="timezone"' in page
    assert '<option value="Europe/Berlin">Europe/Berlin</option>' in page
    assert page.count("<option value=") >= len(zoneinfo.available_timezones())
    form = {
        "name": "Main", "location": "", "mode": "normal", "fail_mode": "secure", "relay_pulse_ms": 3000,
        "timezone": "Mars/Olympus_Mons",
    }  # fmt: skip
    response = admin_client.post(add, form)
    assert response.status_code == 200 and "timezone" in response.context["adminform"].form.errors
    assert not Door.objects.exists()
    response = admin_client.post(add, {**form, "timezone": "Europe/Berlin"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Door.objects.get().timezone == "Europe/Berlin"


def test_door_time_zone_is_validated_in_the_api_too() -> None:
    from tests.api_support import token_client

    client = token_client(["doors:write", "doors:read"])
    url = reverse("api-door-list")
    response = client.post(url, {"name": "Main", "timezone": "Mars/Olympus_Mons"}, format="json")
    assert response.status_code == 400 and "timezone" in response.content.decode(), response.content
    assert client.post(url, {"name": "Main", "timezone": "Europe/Berlin"}, format="json").status_code == 201
