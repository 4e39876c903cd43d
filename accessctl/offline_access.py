"""Who may pass a door, compiled for a period: what a door's offline allow-list is made of.

The same rules as :mod:`accessctl.policy`, turned from a question ("may this person pass now?")
into an answer for a whole period ``[start, end)`` that a device can apply alone:

* the people: active, not on the watchlist, in at least one group that has the door, whose
  validity overlaps the period (a door in lockdown lets nobody pass: no people; nor does a door
  that may require a second factor: the device cannot check a PIN or card alone, so it stays locked);
* per person: their validity (unix seconds, None: unbounded) and the schedule keys of their groups
  at this door (:func:`schedule_key`, or :data:`ALWAYS` for a group without a schedule);
* per schedule key: the UTC intervals ``[start, end)`` in which the schedule is open, its weekly
  windows read in the door's time zone (DST-correct: a window is the set of instants whose local
  wall time falls in it, so a window in a repeated hour is open twice, one in a skipped hour never)
  and the schedule's holidays (local dates) closed all day.

The device then answers ``valid_from <= at < valid_until`` and ``at`` in one of the windows of one of
the person's keys, exactly what :func:`accessctl.policy.access_evaluate` answers for a recognised
person at that instant (tests/accessctl/test_offline_access.py samples instants to prove it).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from accessctl.models import AccessGroup, Door, Holiday, Person, ScheduleWindow

#: The schedule key of a group without a schedule (the wire protocol's ``ALWAYS``).
ALWAYS = "always"
_DAY_S = 86_400
#: Offsets are sampled this often to find the time zone's transitions (none are closer together).
_SAMPLE_S = 1800

Interval = tuple[float, float]


def schedule_key(schedule_id: int | None) -> str:
    """The key of a schedule in a compiled list: ``s<id>``, or :data:`ALWAYS` for no schedule."""
    return ALWAYS if schedule_id is None else f"s{schedule_id}"


@dataclass(frozen=True)
class AllowedPerson:
    """One person allowed at the door during the period, with their validity and schedule keys."""

    person_id: int
    uid: str
    schedules: tuple[str, ...]
    valid_from: float | None
    valid_until: float | None


@dataclass(frozen=True)
class DoorAccess:
    """A door's compiled access for ``[start, end)`` (unix seconds)."""

    door_id: int
    start: int
    end: int
    people: tuple[AllowedPerson, ...]
    windows: dict[str, tuple[Interval, ...]]


def _ts(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def door_access_compile(door: Door, *, start: dt.datetime, end: dt.datetime) -> DoorAccess:
    """The people allowed at ``door`` in ``[start, end)`` and the open windows of their schedules."""
    if end <= start:
        raise ValueError("the period must end after it starts")
    start_s, end_s = int(start.timestamp()), int(end.timestamp())
    people: tuple[AllowedPerson, ...] = ()
    windows: dict[str, tuple[Interval, ...]] = {}
    if door.mode != Door.Mode.LOCKDOWN and door.second_factor == Door.SecondFactor.OFF:
        people = _allowed_people(door, start_s, end_s)
        schedule_ids = sorted({int(k[1:]) for person in people for k in person.schedules if k != ALWAYS})
        tz = zoneinfo.ZoneInfo(door.timezone)
        windows = schedules_compile(schedule_ids, tz, start_s, end_s)
    return DoorAccess(door_id=door.pk, start=start_s, end=end_s, people=people, windows=windows)


def _allowed_people(door: Door, start_s: int, end_s: int) -> tuple[AllowedPerson, ...]:
    membership = AccessGroup.people.through
    rows = (
        membership.objects.filter(accessgroup__doors=door, person__status=Person.Status.ACTIVE, person__watchlist=False)
        .values_list(
            "person_id", "person__uid", "person__valid_from", "person__valid_until", "accessgroup__schedule_id"
        )
        .order_by("person_id")
    )
    keys: dict[int, set[str]] = defaultdict(set)
    found: dict[int, tuple[str, float | None, float | None]] = {}
    for person_id, uid, valid_from, valid_until, schedule_id in rows:
        vf, vu = _ts(valid_from), _ts(valid_until)
        if (vu is not None and vu <= start_s) or (vf is not None and vf >= end_s):
            continue  # not valid at any instant of the period
        keys[person_id].add(schedule_key(schedule_id))
        found[person_id] = (str(uid), vf, vu)
    return tuple(
        AllowedPerson(person_id=pid, uid=uid, schedules=tuple(sorted(keys[pid])), valid_from=vf, valid_until=vu)
        for pid, (uid, vf, vu) in sorted(found.items())
    )


def schedules_compile(
    schedule_ids: Sequence[int], tz: zoneinfo.ZoneInfo, start_s: int, end_s: int
) -> dict[str, tuple[Interval, ...]]:
    """Per schedule key, its open UTC intervals in ``[start_s, end_s)`` in time zone ``tz``."""
    weekly: dict[int, dict[int, list[tuple[float, float]]]] = {sid: defaultdict(list) for sid in schedule_ids}
    for sid, weekday, w_start, w_end in ScheduleWindow.objects.filter(schedule_id__in=schedule_ids).values_list(
        "schedule_id", "weekday", "start", "end"
    ):
        weekly[sid][weekday].append((_seconds(w_start), _seconds(w_end)))
    holidays: dict[int, set[dt.date]] = defaultdict(set)
    for sid, date in Holiday.objects.filter(schedule_id__in=schedule_ids).values_list("schedule_id", "date"):
        holidays[sid].add(date)
    segments = offset_segments(tz, start_s, end_s)
    return {
        schedule_key(sid): _schedule_intervals(weekly[sid], holidays[sid], segments) for sid in sorted(schedule_ids)
    }


def _seconds(value: dt.time) -> float:
    return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6


def _offset(tz: zoneinfo.ZoneInfo, at: int) -> int:
    offset = dt.datetime.fromtimestamp(at, tz).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def offset_segments(tz: zoneinfo.ZoneInfo, start_s: int, end_s: int) -> list[tuple[int, int, int]]:
    """``[start_s, end_s)`` cut where ``tz``'s UTC offset changes: ``(start, end, offset_s)`` each."""
    segments: list[tuple[int, int, int]] = []
    seg_start, current = start_s, _offset(tz, start_s)
    probe = start_s
    while probe < end_s - 1:
        nxt = min(probe + _SAMPLE_S, end_s - 1)
        if _offset(tz, nxt) != current:
            lo, hi = probe, nxt  # offset(lo) == current != offset(hi): the change is in (lo, hi]
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if _offset(tz, mid) == current else (lo, mid)
            segments.append((seg_start, hi, current))
            seg_start, current = hi, _offset(tz, hi)
            probe = hi
            continue
        probe = nxt
    segments.append((seg_start, end_s, current))
    return segments


def _schedule_intervals(
    weekly: dict[int, list[tuple[float, float]]], holidays: set[dt.date], segments: Iterable[tuple[int, int, int]]
) -> tuple[Interval, ...]:
    spans: list[Interval] = []
    for seg_start, seg_end, offset in segments:
        local_start, local_end = seg_start + offset, seg_end + offset  # wall-clock seconds since the epoch
        for day in range(local_start // _DAY_S, (local_end - 1) // _DAY_S + 1):
            date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
            if date in holidays:
                continue
            for w_start, w_end in weekly.get(date.weekday(), ()):
                lo = max(day * _DAY_S + w_start, local_start)
                hi = min(day * _DAY_S + w_end, local_end)
                if lo < hi:
                    spans.append((lo - offset, hi - offset))
    return _merged(spans)


def _merged(spans: list[Interval]) -> tuple[Interval, ...]:
    out: list[list[float]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def compiled_may_pass(access: DoorAccess, person_id: int, at: float) -> bool:
    """The compiled answer for ``person_id`` at ``at`` (what a device decides for a matched face)."""
    for person in access.people:
        if person.person_id != person_id:
            continue
        if person.valid_from is not None and at < person.valid_from:
            return False
        if person.valid_until is not None and at >= person.valid_until:
            return False
        return any(
            key == ALWAYS or any(lo <= at < hi for lo, hi in access.windows.get(key, ())) for key in person.schedules
        )
    return False
