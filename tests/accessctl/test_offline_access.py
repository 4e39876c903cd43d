"""The compiled offline access of a door answers exactly what the policy answers, instant by instant:
time zone, both DST changes (a skipped and a repeated hour), holidays, validity, groups, and the
suspended / watchlisted / other-door people left out."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from accessctl.codes import Reason
from accessctl.models import AccessGroup, Door, Holiday, Person, Schedule, ScheduleWindow
from accessctl.offline_access import ALWAYS, compiled_may_pass, door_access_compile, offset_segments, schedule_key
from accessctl.policy import AccessRequest, access_evaluate_many

pytestmark = pytest.mark.django_db

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")


def _window(schedule: Schedule, weekday: int, start: dt.time, end: dt.time) -> None:
    ScheduleWindow.objects.create(schedule=schedule, weekday=weekday, start=start, end=end)


@pytest.fixture
def site() -> dict[str, object]:
    door = Door.objects.create(name="Lab", timezone="Europe/Berlin")
    other = Door.objects.create(name="Store", timezone="Europe/Berlin")
    office = Schedule.objects.create(name="Office")
    for weekday in range(7):
        _window(office, weekday, dt.time(8, 0), dt.time(12, 0))
        _window(office, weekday, dt.time(13, 0), dt.time(18, 30, 15))
    # the hours DST skips (last Sunday of March) and repeats (last Sunday of October) in Berlin
    night = Schedule.objects.create(name="Night")
    _window(night, 6, dt.time(1, 30), dt.time(2, 30))
    _window(night, 6, dt.time(2, 15), dt.time(3, 10))
    _window(night, 0, dt.time(0, 0), dt.time(0, 45))
    Holiday.objects.create(schedule=office, date=dt.date(2026, 3, 30), name="Spring day")
    Holiday.objects.create(schedule=office, date=dt.date(2026, 10, 26), name="Autumn day")

    engineers = AccessGroup.objects.create(name="Engineers", schedule=office)
    nights = AccessGroup.objects.create(name="Night shift", schedule=night)
    anytime = AccessGroup.objects.create(name="Security")
    elsewhere = AccessGroup.objects.create(name="Store staff")
    for group in (engineers, nights, anytime):
        group.doors.add(door)
    elsewhere.doors.add(other)

    def person(name: str, *groups: AccessGroup, **fields: object) -> Person:
        created = Person.objects.create(name=name, **fields)
        for group in groups:
            group.people.add(created)
        return created

    people = {
        "ada": person("Ada", engineers),
        "bob": person("Bob", nights, engineers),
        "cy": person("Cy", anytime),
        "dee": person("Dee", engineers, valid_until=dt.datetime(2026, 3, 28, 10, 17, tzinfo=BERLIN)),
        "eve": person("Eve", nights, valid_from=dt.datetime(2026, 3, 29, 1, 45, tzinfo=BERLIN)),
        "sus": person("Sus", engineers, anytime, status=Person.Status.SUSPENDED),
        "wat": person("Wat", anytime, watchlist=True),
        "out": person("Out", elsewhere),
        "old": person("Old", anytime, valid_until=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)),
        "none": person("None"),
    }
    return {"door": door, "people": people, "office": office, "night": night}


def _instants(start: dt.datetime, end: dt.datetime, access) -> list[dt.datetime]:
    """Every 7 minutes, and one second around every compiled edge and validity bound."""
    out = []
    t = start
    while t < end:
        out.append(t)
        t += dt.timedelta(minutes=7)
    edges = [edge for spans in access.windows.values() for span in spans for edge in span]
    edges += [b for p in access.people for b in (p.valid_from, p.valid_until) if b is not None]
    for edge in edges:
        for delta in (-1, 0, 1):
            at = dt.datetime.fromtimestamp(edge + delta, dt.UTC)
            if start <= at < end:
                out.append(at)
    return out


@pytest.mark.parametrize(
    "start",
    [
        dt.datetime(2026, 3, 27, 6, 0, tzinfo=dt.UTC),  # spring forward on Sunday 29 March, holiday on the 30th
        dt.datetime(2026, 10, 23, 22, 30, tzinfo=dt.UTC),  # fall back on Sunday 25 October, holiday on the 26th
    ],
)
def test_compiled_access_equals_the_policy(site, start: dt.datetime) -> None:
    door: Door = site["door"]  # type: ignore[assignment]
    people: dict[str, Person] = site["people"]  # type: ignore[assignment]
    end = start + dt.timedelta(days=4)
    access = door_access_compile(door, start=start, end=end)

    names = {p.person_id: name for name, person in people.items() for p in access.people if p.person_id == person.pk}
    listed = set(names.values())
    assert {"ada", "bob", "cy", "eve"} <= listed
    assert not listed & {"sus", "wat", "out", "old", "none"}
    assert ("dee" in listed) == (start.month == 3)  # valid until 28 March: in the spring period only
    by_name = {names[p.person_id]: p for p in access.people}
    assert by_name["cy"].schedules == (ALWAYS,)
    assert by_name["bob"].schedules == tuple(sorted((schedule_key(site["office"].pk), schedule_key(site["night"].pk))))

    instants = _instants(start, end, access)
    requests = [AccessRequest(person, door, at, Reason.UNKNOWN_FACE) for person in people.values() for at in instants]
    results = access_evaluate_many(requests)
    mismatches = [
        (request.person.name, request.at.astimezone(BERLIN).isoformat(), result.reason)
        for request, result in zip(requests, results, strict=True)
        if result.granted != compiled_may_pass(access, request.person.pk, request.at.timestamp())
    ]
    assert not mismatches, mismatches[:10]
    assert sum(r.granted for r in results) > 100  # the comparison is not all "deny"


def _utc(*parts: int) -> float:
    return dt.datetime(*parts, tzinfo=dt.UTC).timestamp()


def test_dst_windows_and_holidays_are_local(site) -> None:
    door: Door = site["door"]  # type: ignore[assignment]
    night_key = schedule_key(site["night"].pk)
    office_key = schedule_key(site["office"].pk)
    spring = door_access_compile(
        door, start=dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC), end=dt.datetime(2026, 3, 31, tzinfo=dt.UTC)
    )
    # Sunday 29 March: 01:30-02:00 CET, then (02:00-03:00 does not exist) 03:00-03:10 CEST
    sunday = [w for w in spring.windows[night_key] if w[0] < dt.datetime(2026, 3, 29, 12, tzinfo=dt.UTC).timestamp()]
    assert sunday == [(_utc(2026, 3, 29, 0, 30), _utc(2026, 3, 29, 1, 10))]
    # Monday 30 March is a holiday of the office schedule: nothing open that (local) day
    monday = (_utc(2026, 3, 29, 22), _utc(2026, 3, 30, 22))
    assert not [w for w in spring.windows[office_key] if w[1] > monday[0] and w[0] < monday[1]]
    autumn = door_access_compile(
        door, start=dt.datetime(2026, 10, 24, 12, tzinfo=dt.UTC), end=dt.datetime(2026, 10, 26, tzinfo=dt.UTC)
    )
    # Sunday 25 October: 01:30-03:10 local is 23:30 (CEST) .. 02:10 UTC (CET), the repeated hour twice
    assert (
        dt.datetime(2026, 10, 24, 23, 30, tzinfo=dt.UTC).timestamp(),
        dt.datetime(2026, 10, 25, 2, 10, tzinfo=dt.UTC).timestamp(),
    ) in autumn.windows[night_key]


def test_offset_segments_find_the_transition() -> None:
    start = int(dt.datetime(2026, 3, 28, tzinfo=dt.UTC).timestamp())
    segments = offset_segments(BERLIN, start, start + 3 * 86400)
    change = int(dt.datetime(2026, 3, 29, 1, 0, tzinfo=dt.UTC).timestamp())
    assert segments == [(start, change, 3600), (change, start + 3 * 86400, 7200)]
    assert offset_segments(zoneinfo.ZoneInfo("UTC"), start, start + 86400) == [(start, start + 86400, 0)]


def test_a_door_in_lockdown_lets_nobody_pass(site) -> None:
    door: Door = site["door"]  # type: ignore[assignment]
    door.mode = Door.Mode.LOCKDOWN
    start = dt.datetime(2026, 3, 28, tzinfo=dt.UTC)
    access = door_access_compile(door, start=start, end=start + dt.timedelta(days=1))
    assert access.people == () and access.windows == {}
