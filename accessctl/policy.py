"""The access policy: may this (recognised) person pass this door now?

Pure domain rules, no I/O beyond reading the person's groups and schedules. Every outcome carries
a reason code. Order matters and is part of the contract:

1. door in lockdown            -> deny ``lockdown`` (whoever it is)
2. no person (unknown face)    -> deny with the matcher's reason
3. watchlist                   -> deny ``watchlist``
4. suspended                   -> deny ``suspended``
5. before valid_from           -> deny ``not_yet_valid``; after valid_until -> deny ``expired``
6. no group with this door     -> deny ``not_in_group``
7. no group whose schedule is open now in the door's time zone (holidays close it)
                               -> deny ``outside_schedule``
8. otherwise                   -> grant ``matched``
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

from accessctl.codes import Decision, Reason
from accessctl.models import AccessGroup, Door, Holiday, Person, Schedule, ScheduleWindow


@dataclass(frozen=True)
class PolicyResult:
    decision: Decision
    reason: Reason

    @property
    def granted(self) -> bool:
        return self.decision is Decision.GRANT


def _deny(reason: Reason) -> PolicyResult:
    return PolicyResult(Decision.DENY, reason)


def schedule_is_open(schedule: Schedule, at: dt.datetime, tz: zoneinfo.ZoneInfo) -> bool:
    """True when ``at`` falls in one of the schedule's weekly windows, in time zone ``tz``."""
    local = at.astimezone(tz)
    if Holiday.objects.filter(schedule=schedule, date=local.date()).exists():
        return False
    now = local.time().replace(tzinfo=None)
    return ScheduleWindow.objects.filter(
        schedule=schedule, weekday=local.weekday(), start__lte=now, end__gt=now
    ).exists()


def access_evaluate(*, person: Person | None, door: Door, at: dt.datetime, unknown_reason: Reason) -> PolicyResult:
    """Apply the policy for ``person`` (None when not recognised) at ``door`` at time ``at``."""
    if door.mode == Door.Mode.LOCKDOWN:
        return _deny(Reason.LOCKDOWN)
    if person is None:
        return _deny(unknown_reason)
    if person.watchlist:
        return _deny(Reason.WATCHLIST)
    if person.status != Person.Status.ACTIVE:
        return _deny(Reason.SUSPENDED)
    if person.valid_from and at < person.valid_from:
        return _deny(Reason.NOT_YET_VALID)
    if person.valid_until and at >= person.valid_until:
        return _deny(Reason.EXPIRED)
    groups = list(AccessGroup.objects.filter(people=person, doors=door).select_related("schedule"))
    if not groups:
        return _deny(Reason.NOT_IN_GROUP)
    tz = zoneinfo.ZoneInfo(door.timezone)
    if any(group.schedule is None or schedule_is_open(group.schedule, at, tz) for group in groups):
        return PolicyResult(Decision.GRANT, Reason.MATCHED)
    return _deny(Reason.OUTSIDE_SCHEDULE)
