"""The access policy: may this (recognised) person pass this door now?

Pure domain rules, no I/O beyond reading the person's groups and schedules. Every outcome carries
a reason code. Order matters and is part of the contract:

1. door in lockdown            -> deny ``lockdown`` (whoever it is)
2. door requires liveness, and the face was compared with the gallery (recognised, unknown or
   ambiguous; input problems keep their own reason):
   no live score from the device -> deny ``liveness_not_measured``;
   score below the door's threshold (:func:`liveness_threshold`) -> deny ``presentation_attack``
   (whoever it looked like: a photo of an enrolled person is the attack this rule is for)
3. no person (unknown face)    -> deny with the matcher's reason
4. watchlist                   -> deny ``watchlist``
5. suspended                   -> deny ``suspended``
6. before valid_from           -> deny ``not_yet_valid``; after valid_until -> deny ``expired``
7. no group with this door     -> deny ``not_in_group``
8. no group whose schedule is open now in the door's time zone (holidays close it)
                               -> deny ``outside_schedule``
9. otherwise                   -> grant ``matched``
10. anti-passback (applied by ``accessctl.decisions`` after the cooldown, :mod:`accessctl.passback`):
   a grant at an entry door of an area the person entered and never left -> hard: deny
   ``anti_passback``; soft: grant and the ``anti_passback`` alarm
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from accessctl.codes import Decision, Reason
from accessctl.models import AccessGroup, Door, Holiday, Person, ScheduleWindow


@dataclass(frozen=True)
class PolicyResult:
    decision: Decision
    reason: Reason

    @property
    def granted(self) -> bool:
        return self.decision is Decision.GRANT


@dataclass(frozen=True)
class AccessRequest:
    """One question for the policy: ``person`` (None: not recognised, for ``unknown_reason``) at
    ``door`` at time ``at``; ``liveness``: the device's live score of the face (None: not measured)."""

    person: Person | None
    door: Door
    at: dt.datetime
    unknown_reason: Reason
    liveness: float | None = None


#: Faces the matcher compared with the gallery: the ones the liveness rule judges.
_COMPARED = frozenset({Reason.MATCHED, Reason.UNKNOWN_FACE, Reason.AMBIGUOUS_MATCH})


def liveness_threshold(door: Door) -> float | None:
    """The live-score threshold ``door`` applies: its own, else the site's calibrated one
    (``settings.LIVENESS_THRESHOLD``); None when the door does not require liveness."""
    if not door.liveness_required:
        return None
    return door.liveness_threshold if door.liveness_threshold is not None else settings.LIVENESS_THRESHOLD


def _deny(reason: Reason) -> PolicyResult:
    return PolicyResult(Decision.DENY, reason)


def access_evaluate(
    *, person: Person | None, door: Door, at: dt.datetime, unknown_reason: Reason, liveness: float | None = None
) -> PolicyResult:
    """Apply the policy for ``person`` (None when not recognised) at ``door`` at time ``at``."""
    return access_evaluate_many([AccessRequest(person, door, at, unknown_reason, liveness)])[0]


def access_evaluate_many(requests: Sequence[AccessRequest]) -> list[PolicyResult]:
    """:func:`access_evaluate` for several requests; rules 6 and 7 are read in one query for all."""
    results = [_person_rules(request) for request in requests]
    pending = [i for i, result in enumerate(results) if result is None]
    if pending:
        for i, (in_group, open_now) in zip(pending, _memberships([requests[i] for i in pending]), strict=True):
            if open_now:
                results[i] = PolicyResult(Decision.GRANT, Reason.MATCHED)
            else:
                results[i] = _deny(Reason.OUTSIDE_SCHEDULE if in_group else Reason.NOT_IN_GROUP)
    return [result for result in results if result is not None]


def _person_rules(request: AccessRequest) -> PolicyResult | None:
    """Rules 1-6 (the door and the person alone); None when groups and schedules decide."""
    person, at = request.person, request.at
    if request.door.mode == Door.Mode.LOCKDOWN:
        return _deny(Reason.LOCKDOWN)
    threshold = liveness_threshold(request.door)
    if threshold is not None and (person is not None or request.unknown_reason in _COMPARED):
        if request.liveness is None:
            return _deny(Reason.LIVENESS_NOT_MEASURED)
        if request.liveness < threshold:
            return _deny(Reason.PRESENTATION_ATTACK)
    if person is None:
        return _deny(request.unknown_reason)
    if person.watchlist:
        return _deny(Reason.WATCHLIST)
    if person.status != Person.Status.ACTIVE:
        return _deny(Reason.SUSPENDED)
    if person.valid_from and at < person.valid_from:
        return _deny(Reason.NOT_YET_VALID)
    if person.valid_until and at >= person.valid_until:
        return _deny(Reason.EXPIRED)
    return None


def _memberships(requests: Sequence[AccessRequest]) -> list[tuple[bool, bool]]:
    """Per request: (the person is in a group with the door, one such group is open at ``at``).

    A group without a schedule is always open; a scheduled one is open when ``at``, in the door's
    time zone, is not one of the schedule's holidays and falls in one of its windows of that
    weekday (``start`` inclusive, ``end`` exclusive).
    """
    days, weekdays, times = [], [], []
    for request in requests:
        local = request.at.astimezone(zoneinfo.ZoneInfo(request.door.timezone))
        days.append(local.date())
        weekdays.append(local.weekday())
        times.append(local.time().replace(tzinfo=None))
    with connection.cursor() as cursor:
        cursor.execute(
            _MEMBERSHIP_SQL,
            [
                [request.person.pk for request in requests],  # type: ignore[union-attr]  # rule 2 passed
                [request.door.pk for request in requests],
                days,
                weekdays,
                times,
            ],
        )
        found = {int(n): (bool(in_group), bool(open_now)) for n, in_group, open_now in cursor.fetchall()}
    return [found.get(n, (False, False)) for n in range(1, len(requests) + 1)]


def _membership_sql() -> str:
    group_people = AccessGroup.people.through._meta.db_table
    group_doors = AccessGroup.doors.through._meta.db_table
    return (
        "SELECT r.n, true, bool_or(g.schedule_id IS NULL OR ("
        f"NOT EXISTS (SELECT 1 FROM {Holiday._meta.db_table} h WHERE h.schedule_id = g.schedule_id AND h.date = r.day) "
        f"AND EXISTS (SELECT 1 FROM {ScheduleWindow._meta.db_table} w WHERE w.schedule_id = g.schedule_id "
        'AND w.weekday = r.weekday AND w.start <= r.at AND w."end" > r.at))) '
        "FROM unnest(%s::bigint[], %s::bigint[], %s::date[], %s::int[], %s::time[]) "
        "WITH ORDINALITY AS r(person_id, door_id, day, weekday, at, n) "
        f"JOIN {group_people} gp ON gp.person_id = r.person_id "
        f"JOIN {group_doors} gd ON gd.accessgroup_id = gp.accessgroup_id AND gd.door_id = r.door_id "
        f"JOIN {AccessGroup._meta.db_table} g ON g.id = gp.accessgroup_id "
        "GROUP BY r.n"
    )


_MEMBERSHIP_SQL = _membership_sql()
