"""A second factor at a door: the face must be confirmed by the same person's PIN or card.

A door's ``second_factor``: ``off``; ``required``; ``outside_schedule`` (required unless its
``second_factor_schedule`` is open at that moment, in the door's time zone; no schedule: always
required). The device carries what was entered (``faceengine.protocol.SecondFactor``: PIN or card,
and when) inside the signed detection. For a face the policy grants (rules 1-9), applied by
:mod:`accessctl.decisions` before the cooldown:

- no factor, or one entered more than ``SECOND_FACTOR_WINDOW_S`` from the face's capture:
  deny ``second_factor_required`` (the door waits for it: the next detection may carry it);
- a PIN that does not verify against the person's (Django's hashers), or a card that is not the
  person's (another person's, or nobody's): deny ``second_factor_mismatch``; repeated ones at a door
  raise the ``second_factor_mismatch`` alarm (``SECOND_FACTOR_ALARM_COUNT`` in
  ``SECOND_FACTOR_ALARM_WINDOW_S``);
- the person's own PIN or card: the grant stands.

The access log records the factor's kind and the result, never the PIN or the card number.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import re
import zoneinfo
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.hashers import check_password, make_password
from django.core.exceptions import ValidationError

from accessctl.codes import Reason
from accessctl.models import Door, Holiday, Person, ScheduleWindow
from faceengine import protocol as p

logger = logging.getLogger(__name__)

_PIN_RE = re.compile(r"^[0-9]{4,12}$")


@dataclass(frozen=True)
class FactorResult:
    reason: Reason | None  # None: confirmed (or not required)
    details: dict[str, object]


def person_pin_set(*, person: Person, pin: str | None) -> None:
    """Set (or clear, with None / "") ``person``'s PIN: 4-12 digits, stored hashed."""
    if pin and not _PIN_RE.match(pin):
        raise ValidationError("A PIN is 4 to 12 digits.")
    person.pin_hash = make_password(pin) if pin else ""
    Person.objects.filter(pk=person.pk).update(pin_hash=person.pin_hash)
    logger.info("PIN of person %s %s", person.pk, "set" if pin else "cleared")


def factor_required(door: Door, at: dt.datetime) -> bool:
    """Whether ``door`` needs a second factor at ``at``."""
    if door.second_factor == Door.SecondFactor.REQUIRED:
        return True
    if door.second_factor != Door.SecondFactor.OUTSIDE_SCHEDULE:
        return False
    if door.second_factor_schedule_id is None:
        return True
    local = at.astimezone(zoneinfo.ZoneInfo(door.timezone))
    if Holiday.objects.filter(schedule_id=door.second_factor_schedule_id, date=local.date()).exists():
        return True
    now = local.time().replace(tzinfo=None)
    return not ScheduleWindow.objects.filter(
        schedule_id=door.second_factor_schedule_id, weekday=local.weekday(), start__lte=now, end__gt=now
    ).exists()


def factor_check(*, person: Person, door: Door, at: dt.datetime, factor: p.SecondFactor | None) -> FactorResult:
    """The second-factor rule for a face of ``person`` granted at ``door`` (see the module docstring)."""
    if not factor_required(door, at):
        return FactorResult(None, {})
    if factor is None:
        return FactorResult(Reason.SECOND_FACTOR_REQUIRED, {"second_factor": {"result": "missing"}})
    shown: dict[str, object] = {"kind": str(factor.kind)}
    if abs(factor.entered_at - at.timestamp()) > settings.SECOND_FACTOR_WINDOW_S:
        return FactorResult(Reason.SECOND_FACTOR_REQUIRED, {"second_factor": {**shown, "result": "late"}})
    if factor.kind is p.SecondFactorKind.PIN:
        ok = bool(person.pin_hash) and check_password(factor.value, person.pin_hash)
    else:
        ok = bool(person.card_number) and hmac.compare_digest(str(person.card_number), factor.value)
        if not ok:
            shown["other_person"] = Person.objects.filter(card_number=factor.value).exclude(pk=person.pk).exists()
    if not ok:
        return FactorResult(Reason.SECOND_FACTOR_MISMATCH, {"second_factor": {**shown, "result": "mismatch"}})
    return FactorResult(None, {"second_factor": {**shown, "result": "ok"}})
