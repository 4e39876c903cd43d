"""Anti-passback per area: a person who entered an area must leave it before entering again.

An :class:`~accessctl.models.Area` has entry doors, exit doors and a mode (``off`` / ``soft`` /
``hard``). Rule 10 of the policy (after a grant by rules 1-9, see :mod:`accessctl.policy`), applied by
:mod:`accessctl.decisions` to a face granted at an entry door, not to a suppressed repeat:

- the person is inside one of the door's areas (their last grant there was at an entry door):
  ``hard`` denies ``anti_passback``; ``soft`` grants and raises the ``anti_passback`` alarm;
- every recorded grant at an area's door moves the person: in at an entry door, out at an exit door
  (:func:`presences_record`, in the decision's transaction);
- an operator resets one person (:func:`area_presence_reset`: out of the area, audited).

Exits are never refused: a person the system did not see enter may still leave. Offline grants
(a door deciding alone) do not move anyone. Two detections of one person at two entry doors decided
at the same instant by two workers are serialised: :mod:`accessctl.decisions` takes a Postgres
advisory lock per person+area (and per person+door for the cooldown) before reading the presences,
held until its transaction commits, so the second decision sees the first's entry.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.models import AccessEvent, Area, AreaPresence, Door, Person

if TYPE_CHECKING:
    import datetime as dt

    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

RESET_PERMISSION = "accessctl.operate_doors"


@dataclass(frozen=True)
class AreaDoor:
    area_id: int
    area: str
    passback: str
    entry: bool  # True: an entry door of the area; False: an exit door


@dataclass(frozen=True)
class PassbackViolation:
    """A grant at an entry door of ``area`` the person entered and never left."""

    area_id: int
    area: str
    passback: str  # soft | hard

    @property
    def denies(self) -> bool:
        return self.passback == Area.Passback.HARD

    def as_details(self) -> dict[str, object]:
        return {"area_id": self.area_id, "area": self.area, "mode": self.passback}


def area_doors(door_ids: Sequence[int]) -> dict[int, list[AreaDoor]]:
    """The anti-passback areas (mode not ``off``) of each door: 2 queries whatever the count."""
    found: dict[int, list[AreaDoor]] = defaultdict(list)
    if not door_ids:
        return found
    for relation, entry in ((Area.entry_doors.through, True), (Area.exit_doors.through, False)):
        rows = (
            relation.objects.filter(door_id__in=set(door_ids))
            .exclude(area__passback=Area.Passback.OFF)
            .values_list("door_id", "area_id", "area__name", "area__passback")
        )
        for door_id, area_id, name, mode in rows:
            found[door_id].append(AreaDoor(area_id, name, mode, entry))
    return found


def passback_evaluate(
    grants: Sequence[tuple[Person, Door]], doors: Mapping[int, list[AreaDoor]]
) -> list[PassbackViolation | None]:
    """Rule 10 for each granted ``(person, door)``, in order (a person entering twice in one batch
    is caught at the second): the violation, or None. ``doors``: :func:`area_doors` of (at least)
    the grants' doors."""
    if not any(doors.get(door.pk) for _, door in grants):
        return [None] * len(grants)
    areas = {a.area_id for roles in doors.values() for a in roles}
    inside = set(
        AreaPresence.objects.filter(area_id__in=areas, person_id__in={p.pk for p, _ in grants}, inside=True)
        .order_by()
        .values_list("area_id", "person_id")
    )
    results: list[PassbackViolation | None] = []
    for person, door in grants:
        roles = doors.get(door.pk, [])
        entered = [a for a in roles if a.entry and (a.area_id, person.pk) in inside]
        entered.sort(key=lambda a: a.passback != Area.Passback.HARD)  # hard first
        violation = PassbackViolation(entered[0].area_id, entered[0].area, entered[0].passback) if entered else None
        results.append(violation)
        if violation is None or not violation.denies:  # granted: the person moves (for the next in the batch)
            for a in roles:
                (inside.add if a.entry else inside.discard)((a.area_id, person.pk))
    return results


def presences_record(
    moves: Sequence[tuple[int, int, dt.datetime, AccessEvent]], doors: Mapping[int, list[AreaDoor]]
) -> int:
    """Move each person of ``(person_id, door_id, at, event)`` (recorded grants, in order) in or out of
    the door's anti-passback areas (``doors``: :func:`area_doors` of at least the moves' doors);
    returns how many presences changed. Call inside the decision's transaction."""
    changed = 0
    for person_id, door_id, at, event in moves:
        for a in doors.get(door_id, []):
            AreaPresence.objects.update_or_create(
                area_id=a.area_id, person_id=person_id, defaults={"inside": a.entry, "changed_at": at, "event": event}
            )
            changed += 1
    return changed


def area_presence_reset(*, area: Area, person: Person, actor: AbstractBaseUser) -> AccessEvent:
    """An operator says ``person`` is not inside ``area`` (lost track: left by a door without a
    reader, tailgated out): their next entry is granted. Needs ``accessctl.operate_doors``; recorded
    in the access log (``anti_passback_reset``, the operator as actor) in the same transaction."""
    if not (actor.is_authenticated and actor.is_active and actor.has_perm(RESET_PERMISSION)):
        raise PermissionDenied("resetting anti-passback needs the accessctl.operate_doors permission")
    now = timezone.now()
    with transaction.atomic():
        previous = AreaPresence.objects.select_for_update().filter(area=area, person=person).first()
        event, _ = event_record(
            detection_id=None, occurred_at=now, decision=Decision.GRANT, reason=Reason.ANTI_PASSBACK_RESET,
            source=AccessEvent.Source.OPERATOR, person_id=person.pk, subject_uid=person.uid, actor_id=actor.pk,
            details={"area_id": area.pk, "area": area.name, "was_inside": bool(previous and previous.inside)},
        )  # fmt: skip
        AreaPresence.objects.update_or_create(
            area=area, person=person, defaults={"inside": False, "changed_at": now, "event": event}
        )
    logger.info(
        "anti-passback reset: person %s in area %s by user %s (event %s)", person.pk, area.pk, actor.pk, event.pk
    )
    return event
