"""The access policy, rule by rule, with time zones and holidays."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from accessctl.codes import Decision, Reason
from accessctl.models import AccessGroup, Door, Holiday, Person, Schedule, ScheduleWindow
from accessctl.policy import AccessRequest, access_evaluate, access_evaluate_many

pytestmark = pytest.mark.django_db

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
# Monday 2026-03-02 08:30 in Berlin (07:30 UTC).
MONDAY_0830 = dt.datetime(2026, 3, 2, 8, 30, tzinfo=BERLIN)


@pytest.fixture
def door() -> Door:
    return Door.objects.create(name="Lab", timezone="Europe/Berlin")


@pytest.fixture
def office_hours() -> Schedule:
    schedule = Schedule.objects.create(name="Office hours")
    for weekday in range(5):
        ScheduleWindow.objects.create(schedule=schedule, weekday=weekday, start=dt.time(8, 0), end=dt.time(18, 0))
    return schedule


@pytest.fixture
def member(door: Door, office_hours: Schedule) -> Person:
    person = Person.objects.create(name="Ada")
    group = AccessGroup.objects.create(name="Engineers", schedule=office_hours)
    group.people.add(person)
    group.doors.add(door)
    return person


def decide(person: Person | None, door: Door, at: dt.datetime = MONDAY_0830) -> tuple[Decision, Reason]:
    result = access_evaluate(person=person, door=door, at=at.astimezone(dt.UTC), unknown_reason=Reason.UNKNOWN_FACE)
    return result.decision, result.reason


def test_member_inside_schedule_is_granted(member: Person, door: Door) -> None:
    assert decide(member, door) == (Decision.GRANT, Reason.MATCHED)


def test_schedule_is_evaluated_in_the_doors_time_zone(member: Person, door: Door) -> None:
    # 07:30 in Berlin is before opening, although it is already 08:30 in e.g. Helsinki.
    early = dt.datetime(2026, 3, 2, 7, 30, tzinfo=BERLIN)
    assert decide(member, door, early) == (Decision.DENY, Reason.OUTSIDE_SCHEDULE)
    door.timezone = "Europe/Helsinki"
    assert decide(member, door, early) == (Decision.GRANT, Reason.MATCHED)


def test_weekend_and_end_of_window(member: Person, door: Door) -> None:
    assert decide(member, door, dt.datetime(2026, 3, 7, 10, 0, tzinfo=BERLIN))[1] == Reason.OUTSIDE_SCHEDULE
    assert decide(member, door, dt.datetime(2026, 3, 2, 18, 0, tzinfo=BERLIN))[1] == Reason.OUTSIDE_SCHEDULE
    assert decide(member, door, dt.datetime(2026, 3, 2, 17, 59, tzinfo=BERLIN))[1] == Reason.MATCHED


def test_holiday_closes_the_schedule(member: Person, door: Door, office_hours: Schedule) -> None:
    Holiday.objects.create(schedule=office_hours, date=dt.date(2026, 3, 2), name="Closure")
    assert decide(member, door) == (Decision.DENY, Reason.OUTSIDE_SCHEDULE)


def test_any_group_with_an_open_schedule_grants(member: Person, door: Door) -> None:
    always = AccessGroup.objects.create(name="Security")  # no schedule: at any time
    always.people.add(member)
    always.doors.add(door)
    assert decide(member, door, dt.datetime(2026, 3, 7, 3, 0, tzinfo=BERLIN)) == (Decision.GRANT, Reason.MATCHED)


def test_not_in_a_group_with_this_door(member: Person) -> None:
    other = Door.objects.create(name="Server room", timezone="Europe/Berlin")
    assert decide(member, other) == (Decision.DENY, Reason.NOT_IN_GROUP)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": Person.Status.SUSPENDED}, Reason.SUSPENDED),
        ({"watchlist": True}, Reason.WATCHLIST),
        ({"valid_until": MONDAY_0830 - dt.timedelta(minutes=1)}, Reason.EXPIRED),
        ({"valid_from": MONDAY_0830 + dt.timedelta(days=1)}, Reason.NOT_YET_VALID),
    ],
)
def test_person_state_denies(member: Person, door: Door, changes: dict, reason: Reason) -> None:
    for field, value in changes.items():
        setattr(member, field, value)
    member.save()
    assert decide(member, door) == (Decision.DENY, reason)


def test_lockdown_denies_everyone_first(member: Person, door: Door) -> None:
    door.mode = Door.Mode.LOCKDOWN
    assert decide(member, door) == (Decision.DENY, Reason.LOCKDOWN)
    assert decide(None, door) == (Decision.DENY, Reason.LOCKDOWN)


def test_unknown_face_keeps_the_matchers_reason(door: Door) -> None:
    assert decide(None, door) == (Decision.DENY, Reason.UNKNOWN_FACE)
    result = access_evaluate(person=None, door=door, at=MONDAY_0830, unknown_reason=Reason.AMBIGUOUS_MATCH)
    assert result.reason == Reason.AMBIGUOUS_MATCH


def test_many_requests_at_once_equal_one_by_one(member: Person, door: Door, office_hours: Schedule) -> None:
    """The batched evaluation (one membership query) answers each request as alone."""
    other = Door.objects.create(name="Server room", timezone="America/New_York")
    night = AccessGroup.objects.create(name="Night shift")  # always open, only for the server room
    night.doors.add(other)
    guard = Person.objects.create(name="Guard")
    night.people.add(guard)
    suspended = Person.objects.create(name="Sam", status=Person.Status.SUSPENDED)
    Holiday.objects.create(schedule=office_hours, date=dt.date(2026, 3, 3), name="Closure")
    times = [MONDAY_0830, dt.datetime(2026, 3, 3, 9, 0, tzinfo=BERLIN), dt.datetime(2026, 3, 7, 23, 0, tzinfo=BERLIN)]
    requests = [
        AccessRequest(person, where, at.astimezone(dt.UTC), Reason.UNKNOWN_FACE)
        for person in (member, guard, suspended, None)
        for where in (door, other)
        for at in times
    ]
    together = [(r.decision, r.reason) for r in access_evaluate_many(requests)]
    alone = [decide(r.person, r.door, r.at) for r in requests]
    assert together == alone
    assert together[:3] == [(Decision.GRANT, Reason.MATCHED)] + [(Decision.DENY, Reason.OUTSIDE_SCHEDULE)] * 2
    assert together[3:6] == [(Decision.DENY, Reason.NOT_IN_GROUP)] * 3
    assert together[9:12] == [(Decision.GRANT, Reason.MATCHED)] * 3
    assert access_evaluate_many([]) == []
