"""A second factor per door (issue 23): face alone waits (denied ``second_factor_required``), face +
the right PIN grants, face + another person's card denies ``second_factor_mismatch`` and repeated
tries raise an alarm; the factor travels inside the device's signature; PINs are stored hashed and
managed in the admin and the API, never shown or logged."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from accessctl.codes import Reason
from accessctl.decisions import access_decide
from accessctl.models import AccessEvent, AccessGroup, Alarm, Door, Person, Schedule, ScheduleWindow
from accessctl.second_factor import person_pin_set
from devices.ingest import detection_ingest
from devices.provisioning import device_provision
from faceengine import protocol as p
from tests import faces
from tests.accessctl.helpers import user_create
from tests.api_support import token_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def site() -> dict:
    door = Door.objects.create(name="Server room", second_factor=Door.SecondFactor.REQUIRED)
    ada, bob = (
        Person.objects.create(name="Ada", card_number="A1B2C3"),
        Person.objects.create(name="Bob", card_number="99887766"),
    )
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(door)
    staff.people.add(ada, bob)
    person_pin_set(person=ada, pin="482913")
    ada.refresh_from_db()
    return {"door": door, "ada": ada, "bob": bob}


def decide(
    site: dict, factor: p.SecondFactor | None, person: str = "ada", at: dt.datetime | None = None
) -> AccessEvent:
    event, created = access_decide(
        detection_id=str(uuid.uuid4()), occurred_at=at or timezone.now(), device_id=None, device_uid="sr-cam",
        door=site["door"], person_id=site[person].pk, unknown_reason=Reason.MATCHED, second_factor=factor,
    )  # fmt: skip
    assert created
    return event


def factor(kind: str, value: str, ago: float = 2.0) -> p.SecondFactor:
    return p.SecondFactor(kind=kind, value=value, entered_at=time.time() - ago)


def test_face_alone_waits_right_pin_grants_other_card_mismatches(site) -> None:
    alone = decide(site, None)
    assert (alone.decision, alone.reason) == ("deny", Reason.SECOND_FACTOR_REQUIRED)
    assert alone.details["second_factor"] == {"result": "missing"}
    granted = decide(site, factor("pin", "482913"))
    assert (granted.decision, granted.reason) == ("grant", Reason.MATCHED)
    assert granted.details["second_factor"] == {"kind": "pin", "result": "ok"}
    assert decide(site, factor("card", "A1B2C3")).reason == Reason.MATCHED  # her own card
    other = decide(site, factor("card", "99887766"))  # Bob's card with Ada's face
    assert (other.decision, other.reason) == ("deny", Reason.SECOND_FACTOR_MISMATCH)
    assert other.details["second_factor"] == {"kind": "card", "result": "mismatch", "other_person": True}
    assert decide(site, factor("pin", "000000")).reason == Reason.SECOND_FACTOR_MISMATCH
    late = decide(site, factor("pin", "482913", ago=120))
    assert late.reason == Reason.SECOND_FACTOR_REQUIRED and late.details["second_factor"]["result"] == "late"
    assert decide(site, factor("pin", "482913"), person="bob").reason == Reason.SECOND_FACTOR_MISMATCH  # no PIN
    # never the secret in the log
    logged = json.dumps(list(AccessEvent.objects.values_list("details", flat=True)))
    assert "482913" not in logged and "99887766" not in logged and "000000" not in logged


def test_repeated_mismatches_raise_one_alarm(site, settings) -> None:
    settings.SECOND_FACTOR_ALARM_COUNT = 3
    decide(site, factor("card", "99887766"))
    decide(site, factor("pin", "111111"))
    assert not Alarm.objects.filter(kind=Alarm.Kind.SECOND_FACTOR_MISMATCH).exists()
    decide(site, factor("pin", "222222"))
    decide(site, factor("pin", "333333"))
    [alarm] = Alarm.objects.filter(kind=Alarm.Kind.SECOND_FACTOR_MISMATCH)
    assert alarm.count == 2 and alarm.door_id == site["door"].pk


def test_required_outside_schedule(site) -> None:
    door = site["door"]
    hours = Schedule.objects.create(name="Office hours")
    now_utc = timezone.now().replace(microsecond=0)
    ScheduleWindow.objects.create(
        schedule=hours, weekday=now_utc.weekday(), start=dt.time(0, 0), end=dt.time(23, 59, 59)
    )
    Door.objects.filter(pk=door.pk).update(
        second_factor=Door.SecondFactor.OUTSIDE_SCHEDULE, second_factor_schedule=hours
    )
    door.refresh_from_db()
    inside_hours = now_utc.replace(hour=12)
    assert decide(site, None, at=inside_hours).reason == Reason.MATCHED  # face alone during office hours
    next_day = inside_hours + dt.timedelta(days=1)
    assert decide(site, None, at=next_day).reason == Reason.SECOND_FACTOR_REQUIRED
    Door.objects.filter(pk=door.pk).update(second_factor=Door.SecondFactor.OFF)
    door.refresh_from_db()
    assert decide(site, None, at=next_day).reason == Reason.MATCHED


def test_a_denied_face_is_not_asked_for_a_factor(site) -> None:
    Person.objects.filter(pk=site["ada"].pk).update(status=Person.Status.SUSPENDED)
    assert decide(site, factor("pin", "482913")).reason == Reason.SUSPENDED


def test_the_factor_is_inside_the_signature(site, media_root) -> None:
    provisioned = device_provision(uid="sr-cam", door=site["door"])
    key = p.load_private_key(provisioned.private_key_pem)
    now = time.time()
    detection = p.Detection.with_crop(
        jpeg=faces.face_jpeg(), device_uid="sr-cam", detection_id=p.new_id(), captured_at=now, sent_at=now,
        detector_score=0.99, box=(10, 10, 130, 150), quality={"face_px": 120.0},
        second_factor=p.SecondFactor(kind="card", value="99887766", entered_at=now),
    )  # fmt: skip
    envelope = json.loads(p.seal(detection, key))
    assert p.Detection.from_dict(envelope["payload"]).second_factor.value == "99887766"
    envelope["payload"]["second_factor"]["value"] = "A1B2C3"  # someone on the wire swaps the card
    assert detection_ingest(device_uid="sr-cam", raw=json.dumps(envelope).encode()) == "bad_signature"
    assert AccessEvent.objects.get().reason == Reason.BAD_SIGNATURE
    assert "SecondFactor(kind=card" in repr(detection) and "99887766" not in repr(detection)


def test_pin_and_card_through_the_api_and_the_admin(site, client) -> None:
    api = token_client(["people:read", "people:write"])
    created = api.post("/api/v1/people/", {"name": "Cy", "pin": "1234", "card_number": "C0FFEE"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["has_pin"] is True and body["card_number"] == "C0FFEE" and "pin" not in body
    cy = Person.objects.get(name="Cy")
    assert (
        cy.pin_hash and "1234" not in cy.pin_hash and cy.pin_hash.startswith(("pbkdf2", "argon2", "bcrypt", "scrypt"))
    )
    bad = api.patch(f"/api/v1/people/{cy.pk}/", {"pin": "12ab"}, format="json")
    assert bad.status_code == 400
    cleared = api.patch(f"/api/v1/people/{cy.pk}/", {"pin": ""}, format="json").json()
    assert cleared["has_pin"] is False
    duplicate = api.post("/api/v1/people/", {"name": "Dee", "card_number": "C0FFEE"}, format="json")
    assert duplicate.status_code == 400  # one card, one person
    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    url = reverse("admin:accessctl_person_change", args=[cy.pk])
    page = client.get(url).content.decode()
    assert "New PIN" in page and "pbkdf2" not in page
    form = {"name": "Cy", "kind": "employee", "status": "active", "card_number": "C0FFEE", "new_pin": "765432"}
    response = client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    cy.refresh_from_db()
    from django.contrib.auth.hashers import check_password

    assert check_password("765432", cy.pin_hash)


def test_offline_a_second_factor_door_lets_nobody_pass_alone(site) -> None:
    from accessctl.offline_access import door_access_compile

    start = timezone.now()
    assert door_access_compile(site["door"], start=start, end=start + dt.timedelta(hours=1)).people == ()
    Door.objects.filter(pk=site["door"].pk).update(second_factor=Door.SecondFactor.OFF)
    site["door"].refresh_from_db()
    assert len(door_access_compile(site["door"], start=start, end=start + dt.timedelta(hours=1)).people) == 2
