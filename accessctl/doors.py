"""Operator actions on doors: remote unlock, lockdown and lifting it.

Each action checks the actor's ``accessctl.operate_doors`` permission (fail closed, also when called
outside a view), writes its audit event through ``event_record`` in the same transaction as the
door's new mode, and only after commit tells the dashboards and the door devices.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accessctl import realtime
from accessctl.audit import event_record
from accessctl.codes import Decision, Reason
from accessctl.door_commands import door_command_send
from accessctl.exceptions import Conflict
from accessctl.models import AccessEvent, Door
from faceengine import protocol

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

logger = logging.getLogger(__name__)

OPERATE_PERMISSION = "accessctl.operate_doors"


class DoorActionError(Conflict):
    """An operator action that the door's current state does not allow (e.g. unlock during lockdown)."""

    code = "door_state"


class DoorAction:
    """Values stored in ``AccessEvent.details["action"]`` for operator events."""

    REMOTE_UNLOCK = "remote_unlock"
    LOCKDOWN = "lockdown"
    LOCKDOWN_LIFT = "lockdown_lift"


def _require_operator(actor: AbstractBaseUser | AnonymousUser) -> None:
    if not (actor.is_authenticated and actor.is_active and actor.has_perm(OPERATE_PERMISSION)):
        raise PermissionDenied("operating doors needs the accessctl.operate_doors permission")


def _commands_send(door_id: int, kind: protocol.CommandKind, *, reason: str, pulse_ms: int = 0) -> None:
    """Publish ``kind`` to the door's devices; a broker problem is logged, never raised after commit."""
    try:
        sent = door_command_send(door_id, kind, reason=reason, pulse_ms=pulse_ms)
    except Exception:
        logger.exception("command %s to door %s failed", kind, door_id)
        return
    logger.info("command %s to door %s: %d device(s)", kind, door_id, sent)


def _operator_event(
    *, door: Door, actor_id: int, decision: Decision, reason: Reason, action: str, **details: object
) -> AccessEvent:
    event, _ = event_record(
        detection_id=None,
        occurred_at=timezone.now(),
        decision=decision,
        reason=reason,
        source=AccessEvent.Source.OPERATOR,
        door_id=door.pk,
        actor_id=actor_id,
        details={"action": action, **details},
    )
    return event


def door_unlock(*, door: Door, actor: AbstractBaseUser) -> AccessEvent:
    """Open ``door`` once (one relay pulse) on an operator's request; refused while locked down."""
    _require_operator(actor)
    with transaction.atomic():
        door = Door.objects.select_for_update().get(pk=door.pk)
        if door.mode == Door.Mode.LOCKDOWN:
            raise DoorActionError(f"{door.name} is locked down; lift the lockdown before unlocking it")
        event = _operator_event(
            door=door,
            actor_id=actor.pk,
            decision=Decision.GRANT,
            reason=Reason.REMOTE_UNLOCK,
            action=DoorAction.REMOTE_UNLOCK,
        )
        door_id, pulse_ms = door.pk, door.relay_pulse_ms
        event.door = door
        realtime.event_broadcast(event)
        transaction.on_commit(
            lambda: _commands_send(door_id, protocol.CommandKind.OPEN, reason=Reason.REMOTE_UNLOCK, pulse_ms=pulse_ms)
        )
    logger.info("door %s remote unlock by user %s (event %s)", door.pk, actor.pk, event.pk)
    return event


def _doors_locked(door: Door | None) -> list[Door]:
    queryset = Door.objects.select_for_update().order_by("pk")
    return list(queryset.filter(pk=door.pk) if door is not None else queryset)


def _mode_set(
    *,
    door: Door | None,
    actor: AbstractBaseUser,
    mode: str,
    decision: Decision,
    reason: Reason,
    action: str,
    command: protocol.CommandKind,
    only_from: str | None = None,
) -> list[Door]:
    _require_operator(actor)
    scope = "door" if door is not None else "all"
    changed: list[Door] = []
    with transaction.atomic():
        for current in _doors_locked(door):
            if current.mode == mode or (only_from is not None and current.mode != only_from):
                continue
            previous = current.mode
            current.mode = mode
            current.save(update_fields=["mode"])
            event = _operator_event(
                door=current,
                actor_id=actor.pk,
                decision=decision,
                reason=reason,
                action=action,
                scope=scope,
                previous_mode=previous,
            )
            event.door = current
            realtime.event_broadcast(event)
            realtime.broadcast(realtime.MessageType.DOOR_STATE, dict(realtime.door_payload(current)))
            door_id = current.pk
            transaction.on_commit(lambda door_id=door_id: _commands_send(door_id, command, reason=reason))
            changed.append(current)
    logger.info(
        "%s (%s) by user %s: doors %s", action, scope, actor.pk, ",".join(str(d.pk) for d in changed) or "none changed"
    )
    return changed


def door_lockdown(*, door: Door | None = None, actor: AbstractBaseUser) -> list[Door]:
    """Lock down ``door`` (or every door when ``None``): devices refuse everyone until lifted.

    Returns the doors whose mode changed; doors already locked down are left as they are.
    """
    return _mode_set(
        door=door,
        actor=actor,
        mode=Door.Mode.LOCKDOWN,
        decision=Decision.DENY,
        reason=Reason.LOCKDOWN,
        action=DoorAction.LOCKDOWN,
        command=protocol.CommandKind.LOCKDOWN,
    )


def door_lockdown_lift(*, door: Door | None = None, actor: AbstractBaseUser) -> list[Door]:
    """Return ``door`` (or every door when ``None``) from lockdown to normal operation.

    Only locked-down doors change: lifting a lockdown leaves a held-open door held open.
    """
    return _mode_set(
        door=door,
        actor=actor,
        mode=Door.Mode.NORMAL,
        only_from=Door.Mode.LOCKDOWN,
        decision=Decision.GRANT,
        reason=Reason.LOCKDOWN_LIFTED,
        action=DoorAction.LOCKDOWN_LIFT,
        command=protocol.CommandKind.LIFT_LOCKDOWN,
    )
