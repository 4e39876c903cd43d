"""Two workers deciding the same person at the same instant (issue 23): anti-passback and the
cooldown read what earlier decisions recorded, so without a lock both could let the person in.
Real threads, real Postgres connections: the first decision is held open (uncommitted) while the
second runs; the second must wait for it and then see its entry."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accessctl.codes import Reason
from accessctl.decisions import DecisionInput, _areas, _decision_locks, access_decide
from accessctl.models import AccessEvent, AccessGroup, Area, AreaPresence, Door, Person

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def site() -> dict:
    entry, side = Door.objects.create(name="Turnstile in"), Door.objects.create(name="Side entrance")
    area = Area.objects.create(name="Plant", passback=Area.Passback.HARD)
    area.entry_doors.add(entry, side)
    ada = Person.objects.create(name="Ada")
    staff = AccessGroup.objects.create(name="Staff")
    staff.doors.add(entry, side)
    staff.people.add(ada)
    return {"entry": entry, "side": side, "area": area, "ada": ada}


def decide(door: Door, person: Person, at: dt.datetime) -> AccessEvent:
    event, created = access_decide(
        detection_id=str(uuid.uuid4()), occurred_at=at, device_id=None, device_uid=f"cam-{door.pk}",
        door=door, person_id=person.pk, unknown_reason=Reason.MATCHED, similarity=0.8,
    )  # fmt: skip
    assert created
    return event


def in_thread(target: Callable[[], None]) -> threading.Thread:
    def run() -> None:
        try:
            target()
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def race(first: Callable[[], AccessEvent], second: Callable[[], AccessEvent]) -> tuple[AccessEvent, AccessEvent]:
    """``first`` decides in a transaction held open until ``second`` has had time to run; returns both."""
    results: dict[str, AccessEvent] = {}
    decided, release = threading.Event(), threading.Event()

    def hold_open() -> None:
        with transaction.atomic():
            results["first"] = first()
            decided.set()
            release.wait(10)  # the first worker has decided and not committed yet

    one = in_thread(hold_open)
    assert decided.wait(10)
    two = in_thread(lambda: results.__setitem__("second", second()))
    two.join(0.5)
    waited = two.is_alive()  # the second worker waits on the first's lock
    release.set()
    one.join(10)
    two.join(10)
    assert waited, "the second decision did not wait for the first"
    return results["first"], results["second"]


def test_hard_anti_passback_two_workers_two_entry_doors_one_entry(site) -> None:
    now = timezone.now()
    first, second = race(
        lambda: decide(site["entry"], site["ada"], now), lambda: decide(site["side"], site["ada"], now)
    )
    assert (first.decision, first.reason) == ("grant", Reason.MATCHED)
    assert (second.decision, second.reason) == ("deny", Reason.ANTI_PASSBACK)
    assert AccessEvent.objects.filter(decision="grant").count() == 1
    assert AreaPresence.objects.get(area=site["area"], person=site["ada"]).inside


def test_cooldown_two_workers_same_door_one_decision(site) -> None:
    Area.objects.filter(pk=site["area"].pk).update(passback=Area.Passback.OFF)
    Door.objects.filter(pk=site["entry"].pk).update(cooldown_s=10)
    door = Door.objects.get(pk=site["entry"].pk)
    now = timezone.now()
    first, second = race(
        lambda: decide(door, site["ada"], now), lambda: decide(door, site["ada"], now + dt.timedelta(seconds=1))
    )
    assert (first.decision, first.reason) == ("grant", Reason.MATCHED)
    assert second.reason == Reason.SUPPRESSED_REPEAT and second.details["repeat_of"] == str(first.detection_id)


def test_locks_only_where_a_rule_reads_earlier_decisions(site) -> None:
    """person+area for anti-passback doors, person+door for cooldown doors, nothing elsewhere (every
    event write is serialised by the access log's chain lock anyway; these are taken before the
    reads, and always before the chain lock: never in the other order, no deadlock)."""
    plain = Door.objects.create(name="Store room")
    ada, now = site["ada"], timezone.now()
    item = DecisionInput(
        detection_id=str(uuid.uuid4()), occurred_at=now, device_id=None, device_uid="c", door=plain, person_id=ada.pk
    )

    def locks(items: list[DecisionInput], persons: list) -> int:
        return _decision_locks(items, persons, _areas(items, persons))

    with transaction.atomic():
        assert locks([item], [ada]) == 0
        assert locks([replace(item, door=site["entry"]), replace(item, door=site["side"])], [ada, ada]) == 1
        Door.objects.filter(pk=plain.pk).update(cooldown_s=5)
        assert locks([replace(item, door=Door.objects.get(pk=plain.pk))], [ada]) == 1
        assert locks([replace(item, door=None)], [ada]) == 0
