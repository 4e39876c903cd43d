"""The live dashboard in Chromium: a detection appears without reload, lockdown changes the tile,
alarms can be acknowledged."""

from __future__ import annotations

import time

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from accessctl.alarms import alarm_raise
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Alarm, Door, Person
from accessctl.realtime import MessageType, broadcast, door_payload, event_broadcast
from devices.models import EdgeDevice
from tests.accessctl.helpers import PASSWORD, event_make, user_create
from tests.browser.conftest import ARTIFACTS, login, off_loop
from tests.faces import face_jpeg

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _crop(person: str) -> str:
    from io import BytesIO

    from PIL import Image

    image = Image.open(BytesIO(face_jpeg(person, 0))).convert("RGB")
    w, h = image.size
    crop = image.crop((w // 4, h // 5, 3 * w // 4, 4 * h // 5)).resize((112, 112))
    buffer = BytesIO()
    crop.save(buffer, format="JPEG", quality=90)
    return default_storage.save(f"crops/known/test/{person}.jpg", ContentFile(buffer.getvalue()))


def test_dashboard_live_feed_lockdown_and_alarms(page, live_url) -> None:
    user_create("olga", "accessctl.view_dashboard", "accessctl.operate_doors", "accessctl.view_accessevent")
    main = Door.objects.create(name="Main entrance", location="Building A, ground floor")
    dock = Door.objects.create(name="Loading dock", location="Building B")
    Door.objects.create(name="Server room", location="Building A, basement", mode=Door.Mode.HELD_OPEN)
    EdgeDevice.objects.create(uid="cam-main-1", door=main, public_key="x", status="online", last_seen=timezone.now())
    EdgeDevice.objects.create(uid="cam-dock-1", door=dock, public_key="x", status="offline")
    colin = Person.objects.create(name="Colin Powell")
    event_make(door_id=dock.pk, device_uid="cam-dock-1", occurred_at=timezone.now())
    alarm_raise(kind=Alarm.Kind.DEVICE_OFFLINE, door=dock, details={"uid": "cam-dock-1"})

    login(page, live_url, "olga", PASSWORD)
    page.wait_for_selector("#live-status.live")
    assert page.locator(".tile").count() == 3
    assert page.locator('.device[data-device-id] >> text="cam-dock-1"').count() == 1
    assert "status-offline" in page.locator(".device", has_text="cam-dock-1").get_attribute("class")

    # A detection recorded now (as the decision pipeline does) shows up without a reload.
    snapshot = _crop("Colin_Powell")

    def detection() -> AccessEvent:
        event = event_make(
            door_id=main.pk, device_uid="cam-main-1", person_id=colin.pk, subject_uid=colin.uid,
            decision=Decision.GRANT, reason=Reason.MATCHED, similarity=0.734, occurred_at=timezone.now(),
            snapshot=snapshot,
        )  # fmt: skip
        event.door, event.person = main, colin
        event_broadcast(event)
        return event

    started = time.monotonic()
    event = off_loop(detection)
    row = page.locator(f'#feed tr[data-event-id="{event.pk}"]')
    row.wait_for()
    latency = time.monotonic() - started
    assert "Colin Powell" in row.inner_text() and "0.734" in row.inner_text() and "matched" in row.inner_text()
    assert page.locator("#feed tr.ev").first.get_attribute("data-event-id") == str(event.pk)
    thumb = row.locator("td.thumb img")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())

    # An unknown face and an alarm arrive too.
    alarm = off_loop(alarm_raise, kind=Alarm.Kind.REPEATED_UNKNOWN, door=main, details={"unknown_faces": 3})
    page.locator(f'.alarm[data-alarm-id="{alarm.pk}"]').wait_for()
    assert page.locator("#alarm-count").inner_text() == "2"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=False)

    # Lock down the main entrance from its tile: the tile turns red via the websocket message.
    page.once("dialog", lambda dialog: dialog.accept())
    tile = page.locator(f'.tile[data-door-id="{main.pk}"]')
    tile.locator('button[data-action="lockdown"]').click()
    page.wait_for_selector(f'.tile.mode-lockdown[data-door-id="{main.pk}"]')
    assert tile.locator(".mode-badge").inner_text().lower() == "locked down"
    assert tile.locator('button[data-action="lift"]').is_visible()
    assert not tile.locator('button[data-action="unlock"]').is_visible()
    page.locator(".toast.ok").wait_for()
    main.refresh_from_db()
    assert main.mode == Door.Mode.LOCKDOWN
    audit = AccessEvent.objects.get(door=main, details__action="lockdown")
    assert audit.source == "operator" and audit.actor.username == "olga"
    page.locator(f'#feed tr[data-event-id="{audit.pk}"]').wait_for()
    page.screenshot(path=str(ARTIFACTS / "dashboard-lockdown.png"))

    # Lift it again, acknowledge the alarm.
    tile.locator('button[data-action="lift"]').click()
    page.wait_for_selector(f'.tile.mode-normal[data-door-id="{main.pk}"]')
    page.locator(f'.alarm[data-alarm-id="{alarm.pk}"] button').click()
    page.locator(f'.alarm[data-alarm-id="{alarm.pk}"]').wait_for(state="detached")
    assert page.locator("#alarm-count").inner_text() == "1"
    assert Alarm.objects.get(pk=alarm.pk).acknowledged_by.username == "olga"
    assert latency < 5, latency


def test_audit_browser_page(page, live_url) -> None:
    user_create("aude", "accessctl.view_dashboard", "accessctl.view_accessevent")
    door = Door.objects.create(name="Main entrance")
    ada = Person.objects.create(name="Ada Lovelace")
    for i in range(6):
        known = i % 2 == 1
        event_make(
            door_id=door.pk, person_id=ada.pk if known else None, occurred_at=timezone.now(),
            decision=Decision.GRANT if known else Decision.DENY,
            reason=Reason.MATCHED if known else Reason.UNKNOWN_FACE,
            similarity=0.6 + i / 50 if known else None,
        )  # fmt: skip
    login(page, live_url, "aude", PASSWORD)
    page.goto(f"{live_url}/audit/")
    assert page.locator("table.audit tbody tr.ev").count() == 6
    page.select_option("#id_decision", "grant")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**decision=grant**")
    assert page.locator("table.audit tbody tr.ev").count() == 3
    assert "decision=grant" in page.locator("#export-csv").get_attribute("href")
    page.screenshot(path=str(ARTIFACTS / "audit.png"))
    page.click("table.audit a >> nth=0")
    page.wait_for_url(f"**/people/{ada.pk}/history/**")
    assert page.locator("h1").inner_text() == "Ada Lovelace"


def test_degraded_device_turns_its_tile_and_raises_an_alarm(page, live_url) -> None:
    """A device whose heartbeat reports overdue answers: its chip says degraded (live, over the
    websocket) and the alarm appears; answers flowing again put it back online."""
    import time as clock

    from devices.health import heartbeat_ingest
    from devices.provisioning import device_provision
    from faceengine import protocol as p

    user_create("olga", "accessctl.view_dashboard")
    door = Door.objects.create(name="Side gate")
    provisioned = device_provision(uid="cam-side-1", door=door)
    key = p.load_private_key(provisioned.private_key_pem)

    def beat(overdue: int) -> None:
        hb = p.Heartbeat(
            device_uid="cam-side-1", sent_at=clock.time(), agent_version="1.0", model_version=None, camera_fps=10.0,
            spool_depth=0, spool_dropped=0, uptime_s=5.0, answers_overdue=overdue,
            oldest_overdue_s=7.0 if overdue else None,
        )  # fmt: skip
        heartbeat_ingest(device_uid="cam-side-1", raw=p.seal(hb, key))

    off_loop(beat, 0)
    login(page, live_url, "olga", PASSWORD)
    page.wait_for_selector("#live-status.live")
    chip = page.locator(".device", has_text="cam-side-1")
    assert "status-online" in chip.get_attribute("class")

    off_loop(beat, 2)
    page.wait_for_selector('.device.status-degraded >> text="cam-side-1"')
    assert chip.locator(".device-status").inner_text() == "degraded"
    alarm = Alarm.objects.get(kind=Alarm.Kind.DEVICE_DEGRADED)
    page.locator(f'.alarm.kind-device_degraded[data-alarm-id="{alarm.pk}"]').wait_for()
    assert "device gets no answers" in page.locator(f'.alarm[data-alarm-id="{alarm.pk}"]').inner_text()

    off_loop(beat, 0)
    page.wait_for_selector('.device.status-online >> text="cam-side-1"')


def test_site_wide_lockdown_buttons_wait_for_a_door(page, live_url) -> None:
    """Issue 16: "Lock down all doors" showed on a fresh install with no door to lock."""
    user_create("olga", "accessctl.view_dashboard", "accessctl.operate_doors")
    login(page, live_url, "olga", PASSWORD)
    page.wait_for_selector("#live-status.live")
    assert page.locator("#doors .empty").is_visible()
    assert page.locator('button[data-action="lockdown-all"]').is_hidden()
    assert page.locator('button[data-action="lift-all"]').is_hidden()

    # A door appears while the page is open (its first state message): the page resyncs and shows them.
    door = Door.objects.create(name="Main entrance")
    off_loop(broadcast, MessageType.DOOR_STATE, door_payload(door))
    page.locator(f'.tile[data-door-id="{door.pk}"]').wait_for()
    page.locator('button[data-action="lockdown-all"]').wait_for(state="visible")
    assert page.locator('button[data-action="lift-all"]').is_visible()
    page.reload()
    page.wait_for_selector("#live-status.live")
    assert page.locator('button[data-action="lockdown-all"]').is_visible()


def test_a_presentation_attack_alarm_arrives_with_the_face(page, live_url) -> None:
    user_create("olga", "accessctl.view_dashboard", "accessctl.view_accessevent")
    vault = Door.objects.create(name="Vault", liveness_required=True)
    login(page, live_url, "olga", PASSWORD)
    page.wait_for_selector("#live-status.live")
    snapshot = _crop("Colin_Powell")

    def attack() -> Alarm:
        event = event_make(
            door_id=vault.pk, device_uid="vault-cam", reason=Reason.PRESENTATION_ATTACK, occurred_at=timezone.now(),
            snapshot=snapshot, liveness_edge=0.01, liveness_frames=8, liveness_threshold=0.0501,
        )  # fmt: skip
        return alarm_raise(
            kind=Alarm.Kind.PRESENTATION_ATTACK, door=vault, event=event,
            details={"reason": event.reason, "liveness": 0.01, "snapshot": snapshot},
        )  # fmt: skip

    alarm = off_loop(attack)
    item = page.locator(f'.alarm.kind-presentation_attack[data-alarm-id="{alarm.pk}"]')
    item.wait_for()
    assert "presentation attack" in item.inner_text() and "Vault" in item.inner_text()
    face = item.locator("img.alarm-face")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=face.element_handle())
    page.reload()  # rendered by the server the same way
    page.locator(f'.alarm[data-alarm-id="{alarm.pk}"] img.alarm-face').wait_for()


def test_a_late_offline_grant_the_server_disputes_is_marked_and_alarmed(page, live_url) -> None:
    import datetime as dt

    from accessctl.decisions import DecisionInput
    from accessctl.offline_decisions import OfflineInput, offline_decisions_record
    from faceengine import protocol as p

    user_create("olga", "accessctl.view_dashboard", "accessctl.view_accessevent")
    door = Door.objects.create(name="Back door")
    ben = Person.objects.create(name="Ben Suspended", status=Person.Status.SUSPENDED)
    login(page, live_url, "olga", PASSWORD)
    page.wait_for_selector("#live-status.live")

    def synced() -> AccessEvent:
        # The door granted Ben alone three minutes ago; he was suspended while it was cut off.
        now = timezone.now()
        occurred = now - dt.timedelta(minutes=3)
        offline = p.OfflineDecision(
            action=p.OfflineAction.OPEN, basis="allowlist", decided_at=occurred.timestamp(), person_ref=str(ben.uid),
            reason="matched", allowlist_version=12, similarity=0.81,
        )  # fmt: skip
        detection = DecisionInput(
            detection_id=p.new_id(), occurred_at=occurred, device_id=None, device_uid="back-cam", door=door,
            person_id=None,
        )  # fmt: skip
        item = OfflineInput(detection=detection, offline=offline, recognised=False, received_at=now, late=True)
        return offline_decisions_record([item])[0][0]

    event = off_loop(synced)
    row = page.locator(f'#feed tr.offline.disagrees[data-event-id="{event.pk}"]')
    row.wait_for()
    mark = "offline, synced 3 min later · allow-list v12 · server would deny (suspended)"
    assert mark in row.inner_text() and "Ben Suspended" in row.inner_text()
    alarm = page.locator(".alarm.kind-offline_disagreement")
    alarm.wait_for()
    assert "offline grant the server would deny" in alarm.inner_text() and "Back door" in alarm.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-offline-disagreement.png"))
    alarm.locator("button").click()
    alarm.wait_for(state="detached")
    assert Alarm.objects.get(kind="offline_disagreement").acknowledged_by.username == "olga"
    page.reload()  # rendered by the server with the same words
    assert mark in page.locator(f'#feed tr.offline.disagrees[data-event-id="{event.pk}"]').inner_text()


def test_a_door_shows_what_it_does_when_the_link_drops(page, live_url) -> None:
    from accessctl.realtime import device_status_broadcast

    user_create("olga", "accessctl.view_dashboard")
    door = Door.objects.create(name="Warehouse")
    expires = time.time() + 20 * 3600 + 60
    heartbeat = {"offline_mode": "allowlist", "allowlist_version": 7, "allowlist_expires_at": expires}
    cam = EdgeDevice.objects.create(
        uid="wh-cam-1", door=door, public_key="x", status="online", last_seen=timezone.now(), last_heartbeat=heartbeat
    )
    EdgeDevice.objects.create(uid="wh-cam-2", door=door, public_key="x", status="offline", last_heartbeat={})
    login(page, live_url, "olga", PASSWORD)
    page.wait_for_selector("#live-status.live")
    chip = page.locator(f'.device[data-device-id="{cam.pk}"]')
    assert chip.locator(".device-status").inner_text() == "online"
    assert chip.locator(".device-fallback").inner_text() == "allow-list v7 · 20 h left"
    other = page.locator(".device", has_text="wh-cam-2")
    assert other.locator(".device-status").inner_text() == "offline-secure"
    # The link drops: the tile says the door now decides alone with its allow-list.
    off_loop(lambda: device_status_broadcast(device_id=cam.pk, uid=cam.uid, door_id=door.pk, status="offline",
                                             last_seen=timezone.now()))  # fmt: skip
    page.locator(f'.device.status-offline.fallback-allowlist[data-device-id="{cam.pk}"]').wait_for()
    assert chip.locator(".device-status").inner_text() == "offline-allowlist"
