"""An administrator's first hour, end to end in Chromium (issue 16's definition of done).

Sign in; create a door and an access group in the admin; enrol a person from three photos, one of
them someone else's (held for review, not added to the gallery); bulk-import a zip; provision the
door's device as an installer would and let a visitor stand in front of it: the signed detection
crosses the real MQTT broker, the bridge and a Celery worker, and the grant arrives live on the
dashboard; finally export the audit log as CSV.
"""

from __future__ import annotations

import csv
import io
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from accessctl.models import AccessGroup, Door, Person
from faceengine import protocol as p
from recognition.models import EnrollmentPhoto
from tests.accessctl.helpers import PASSWORD
from tests.broker_logins import device_client
from tests.browser.conftest import ARTIFACTS, login
from tests.browser.test_enrolment import _photo, bulk_import_through_page
from tests.devices import e2e
from tests.faces import face_jpeg, face_paths

pytestmark = [
    pytest.mark.browser,
    pytest.mark.e2e,
    pytest.mark.django_db(transaction=True),
    pytest.mark.dataset("lfw"),
]

UID = "main-entrance-cam"


@pytest.fixture
def stack(test_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """A Celery worker (bulk import, decisions) and the MQTT bridge, as `./scripts/run` runs them."""
    with (
        e2e.child_process(e2e.worker_argv(), test_env, "ready.", tmp_path / "worker.log"),
        e2e.child_process(e2e.bridge_argv(), test_env, "bridge connected", tmp_path / "bridge.log"),
    ):
        yield


def _admin_select(page, field: str, label: str) -> None:
    """Move ``label`` into the chosen side of a filter_horizontal widget."""
    page.select_option(f"#id_{field}_from", label=label)
    page.click(f"#id_{field}_add")


def test_an_administrators_first_hour(page, fresh_live_url, stack, tmp_path) -> None:
    live_url = fresh_live_url
    get_user_model().objects.create_superuser("admin", "admin@example.com", PASSWORD)
    login(page, live_url, "admin", PASSWORD)

    # 1. A door, in the admin (its time zone chosen from the IANA list).
    page.click("nav >> text=Admin")
    page.goto(f"{live_url}/admin/accessctl/door/add/")
    page.fill("#id_name", "Main entrance")
    page.fill("#id_location", "Building A, ground floor")
    page.select_option("#id_timezone", "Europe/London")
    page.click("input[name=_save]")
    page.locator(".messagelist .success").wait_for()
    door = Door.objects.get(name="Main entrance")
    assert door.timezone == "Europe/London"

    # 2. A person from three photos: two of Tony Blair and one of George W. Bush, held for review.
    page.goto(f"{live_url}/")
    page.click("nav >> text=Enrolment")
    page.fill("#id_name", "Tony Blair")
    page.fill("#id_external_id", "HR-0001")
    page.click("text=Create and add photos")
    page.wait_for_url("**/enrol/people/*/")
    tony = Person.objects.get(external_id="HR-0001")
    photos = [_photo(tmp_path / f"blair_{i}.jpg", face_jpeg("Tony_Blair", i), 2.0) for i in range(2)]
    photos.append(_photo(tmp_path / "someone_else.jpg", face_jpeg("George_W_Bush", 0), 2.0))
    page.set_input_files("#id_photos", [str(path) for path in photos])
    page.click("text=Upload and check")
    page.locator(".messages li.warning").wait_for(timeout=120_000)
    assert "2 accepted, 1 held for review" in page.locator(".messages li.warning").inner_text()
    held = page.locator(".photo-card.status-held")
    assert held.count() == 1 and held.locator(".review-compare img.crop").count() == 2
    held_photo = EnrollmentPhoto.objects.get(pk=int(held.get_attribute("data-photo-id")))
    assert not held_photo.embeddings.exists()  # not in the gallery until someone approves it
    assert tony.embeddings.count() == 2

    # 3. An access group: Tony Blair at the main entrance, at any time.
    page.goto(f"{live_url}/admin/accessctl/accessgroup/add/")
    page.fill("#id_name", "Staff")
    _admin_select(page, "people", "Tony Blair")
    _admin_select(page, "doors", "Main entrance")
    page.click("input[name=_save]")
    page.locator(".messagelist .success").wait_for()
    group = AccessGroup.objects.get(name="Staff")
    assert list(group.people.all()) == [tony] and list(group.doors.all()) == [door]

    # 4. Bulk import of a zip: one more person, with the page's verdicts.
    archive = tmp_path / "people.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(2):
            zf.write(_photo(tmp_path / f"colin_{i}.jpg", face_jpeg("Colin_Powell", i), 2.0), f"Colin_Powell/{i}.jpg")
    bulk_import_through_page(page, live_url, archive)
    assert page.locator("#import-stats [data-status=accepted] dd").inner_text() == "2"
    assert Person.objects.get(name="Colin Powell").embeddings.count() == 2

    # 5. The installer provisions the door's camera; a visitor (Tony Blair, a photo not enrolled)
    #    stands in front of it. The operator watches the dashboard.
    out = tmp_path / "device"
    call_command("provision_device", UID, "--door", "Main entrance", "--out", str(out), stdout=io.StringIO())
    config = tomllib.loads((out / "agent.toml").read_text())
    key = p.load_private_key((out / "device.key").read_text())
    page.goto(f"{live_url}/")
    page.wait_for_selector("#live-status.live")

    visitor = e2e.crop_detection(UID, e2e.aligned_crop_jpeg(face_paths("Tony_Blair", 1, offset=5)[0]))
    camera = device_client(UID, config["mqtt"]["password"])
    connected = []
    camera.on_connect = lambda *args: connected.append(True)
    host, port = e2e.mqtt_address()
    camera.connect(host, port)
    camera.loop_start()
    try:
        started = time.monotonic()
        camera.publish(p.detections_topic(UID), p.seal(visitor, key), qos=1).wait_for_publish(10)
        assert connected, "the provisioned camera could not log in to the broker"
        row = page.locator("#feed tr.ev", has_text="Tony Blair")
        row.wait_for(timeout=60_000)
        latency = time.monotonic() - started
    finally:
        camera.loop_stop()
        camera.disconnect()
    assert "matched" in row.inner_text()
    assert row.get_attribute("data-event-id")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "first-hour-dashboard.png"))

    # 6. The audit log, exported as CSV: the grant is there, with its door and reason.
    page.click("nav >> text=Audit log")
    with page.expect_download() as download:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    grants = [r for r in rows if "Tony Blair" in r.values() and "grant" in r.values()]
    assert len(grants) == 1, rows
    assert "Main entrance" in grants[0].values() and "matched" in grants[0].values()
    assert latency < 60
