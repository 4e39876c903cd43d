"""Per-person cooldown at a door (issue 23): the same person seen again at the same door within the
door's ``cooldown_s`` is one decision; the repeats are recorded as ``suppressed_repeat`` (visible in
the audit log), open nothing and are answered with a deny naming the reason; the door command of the
original goes out once."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from accessctl.audit import chain_verify
from accessctl.codes import Reason
from accessctl.decisions import DecisionInput, access_decide, access_decide_many
from accessctl.models import AccessEvent, AccessGroup, Door, Person, WebhookDelivery, WebhookSubscription
from devices.commands import server_public_key_b64
from devices.provisioning import device_provision
from tests.accessctl.helpers import user_create
from tests.devices import e2e

pytestmark = pytest.mark.django_db(transaction=True)

UID = "cooldown-cam"


@pytest.fixture
def site(media_root) -> dict:
    door = Door.objects.create(name="Turnstile", cooldown_s=10, relay_pulse_ms=1000)
    ada, bob = Person.objects.create(name="Ada"), Person.objects.create(name="Bob")
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(door)
    staff.people.add(ada)
    device = device_provision(uid=UID, door=door).device
    WebhookSubscription.objects.create(name="siem", url="https://siem.example/hook", secret="s", event_types=["*"])
    return {"door": door, "ada": ada, "bob": bob, "device": device}


def decide(site: dict, person: Person, at: dt.datetime, **extra) -> AccessEvent:
    event, created = access_decide(
        detection_id=str(uuid.uuid4()), occurred_at=at, device_id=site["device"].pk, device_uid=UID,
        door=site["door"], person_id=person.pk, unknown_reason=Reason.MATCHED, similarity=0.8, **extra,
    )  # fmt: skip
    assert created
    return event


def test_repeats_within_the_cooldown_are_one_decision(site) -> None:
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    try:
        start = timezone.now()
        first = decide(site, site["ada"], start)
        repeats = [decide(site, site["ada"], start + dt.timedelta(seconds=s)) for s in (1, 4, 9.5)]
        after = decide(site, site["ada"], start + dt.timedelta(seconds=10.5))  # the window ran out: decided again
        assert first.reason == Reason.MATCHED and first.decision == "grant"
        for repeat in repeats:
            assert repeat.reason == Reason.SUPPRESSED_REPEAT and repeat.decision == "grant"
            assert repeat.details["repeat_of"] == str(first.detection_id)
            assert repeat.details["repeat_reason"] == Reason.MATCHED
        assert after.reason == Reason.MATCHED
        assert listener.wait(str(first.detection_id)).command == "open"
        for repeat in repeats:
            command = listener.wait(str(repeat.detection_id))
            assert command.command == "deny" and command.reason == "suppressed_repeat"  # no second opening
        assert listener.wait(str(after.detection_id)).command == "open"
        # webhooks: one access.granted per decision, none for the repeats
        assert WebhookDelivery.objects.filter(event_type="access.granted").count() == 2
    finally:
        listener.close()
    assert chain_verify().ok


def test_the_cooldown_is_per_person_and_door_and_a_different_verdict_is_decided(site) -> None:
    start = timezone.now()
    decide(site, site["ada"], start)
    bob = decide(site, site["bob"], start + dt.timedelta(seconds=1))
    assert bob.reason == Reason.NOT_IN_GROUP
    assert decide(site, site["bob"], start + dt.timedelta(seconds=2)).reason == Reason.SUPPRESSED_REPEAT
    other = Door.objects.create(name="Side", cooldown_s=10)
    AccessGroup.objects.get(name="Staff").doors.add(other)
    event, _ = access_decide(
        detection_id=str(uuid.uuid4()), occurred_at=start + dt.timedelta(seconds=2), device_id=None,
        device_uid="side-cam", door=other, person_id=site["ada"].pk, unknown_reason=Reason.MATCHED,
    )  # fmt: skip
    assert event.reason == Reason.MATCHED  # another door
    # the person was suspended meanwhile: a different verdict is a new decision
    Person.objects.filter(pk=site["ada"].pk).update(status=Person.Status.SUSPENDED)
    assert decide(site, site["ada"], start + dt.timedelta(seconds=3)).reason == Reason.SUSPENDED
    # a door without a cooldown decides every detection
    Door.objects.filter(pk=site["door"].pk).update(cooldown_s=0)
    site["door"].refresh_from_db()
    assert decide(site, site["ada"], start + dt.timedelta(seconds=4)).reason == Reason.SUSPENDED


def test_a_batch_with_the_same_person_twice_decides_once(site) -> None:
    at = timezone.now()
    inputs = [
        DecisionInput(
            detection_id=str(uuid.uuid4()),
            occurred_at=at + dt.timedelta(seconds=i),
            device_id=None,
            device_uid=UID,
            door=site["door"],
            person_id=site["ada"].pk,
            unknown_reason=Reason.MATCHED,
        )
        for i in range(3)
    ]
    reasons = [event.reason for event, _ in access_decide_many(inputs)]
    assert reasons == [Reason.MATCHED, Reason.SUPPRESSED_REPEAT, Reason.SUPPRESSED_REPEAT]


def test_suppressed_repeats_are_visible_in_the_audit_log(site, client) -> None:
    start = timezone.now()
    decide(site, site["ada"], start)
    decide(site, site["ada"], start + dt.timedelta(seconds=2))
    client.force_login(user_create("root", is_staff=True, is_superuser=True))
    audit = client.get(reverse("audit_list")).content.decode()
    assert "suppressed repeat" in audit or "suppressed_repeat" in audit
