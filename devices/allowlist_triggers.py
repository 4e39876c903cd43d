"""Keep offline allow-lists current: revoke at once, recompile soon (signal receivers).

Wired in ``DevicesConfig.ready`` (the domain does not know devices; this app listens to its models):

* **revocation first**: a person suspended, put on the watchlist, erased, removed from a group (or
  their group losing a door, or deleted) is revoked, on commit, on every device whose list may hold
  them and whose door they lost (:func:`devices.allowlist.revoke`), before any recompilation;
* **recompile**: every change that affects a list (person status, validity, watchlist; group
  membership, doors, schedule; schedule windows, holidays; door settings; accepted or erased
  embeddings; calibrations; a device's door) schedules, on commit, one debounced task per door
  (``devices.allowlist_door_recompile`` after ``ALLOWLIST_DEBOUNCE_S``): several edits, one version.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Model, Q
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete, pre_save

from accessctl.models import AccessGroup, Door, Holiday, Person, Schedule, ScheduleWindow
from devices.allowlist import doors_lost, doors_needing_lists, revocations_resend, revoke
from devices.models import DeviceAllowlist, EdgeDevice
from recognition.models import FaceEmbedding, ModelCalibration

logger = logging.getLogger(__name__)

_PENDING_KEY = "devices:allowlist-recompile:{}"


@dataclass
class AllowlistTasks:
    """The Celery tasks this module and ``devices.health`` enqueue, handed over by
    ``DevicesConfig.ready`` (the tasks module imports these services, not the other way round)."""

    recompile: Any = None  # devices.tasks.allowlist_door_recompile(door_id)
    push: Any = None  # devices.tasks.allowlist_device_push(device_id, full)


TASKS = AllowlistTasks()


def allowlist_tasks_register(*, recompile: Any, push: Any) -> None:
    TASKS.recompile, TASKS.push = recompile, push


# --- Scheduling ---------------------------------------------------------------------------------


def recompile_schedule(door_ids: Iterable[int]) -> list[int]:
    """Enqueue one recompile per door that needs lists, unless one is already pending; returns them."""
    scheduled = []
    for door_id in doors_needing_lists(door_ids):
        try:
            if cache.add(_PENDING_KEY.format(door_id), 1, timeout=int(settings.ALLOWLIST_DEBOUNCE_S) + 120):
                TASKS.recompile.apply_async((door_id,), countdown=settings.ALLOWLIST_DEBOUNCE_S)
                scheduled.append(door_id)
        except Exception:
            logger.exception("allow-list recompile of door %s not scheduled (the re-issue sweep will)", door_id)
            cache.delete(_PENDING_KEY.format(door_id))
    return scheduled


def recompile_started(door_id: int) -> None:
    """The task runs: changes from now on schedule another one."""
    cache.delete(_PENDING_KEY.format(door_id))


def recompile_on_commit(door_ids: Iterable[int]) -> None:
    ids = {int(d) for d in door_ids if d is not None}
    if ids:
        transaction.on_commit(lambda: recompile_schedule(ids), robust=True)


def revoke_on_commit(refs: Iterable[str], reason: str, door_ids: Iterable[int] | None = None) -> None:
    refs, doors = sorted(set(refs)), None if door_ids is None else sorted(set(door_ids))
    if refs and (doors is None or doors):
        transaction.on_commit(lambda: revoke(refs, reason=reason, door_ids=doors), robust=True)


def allowlists_reissue() -> int:
    """Beat: recompile the doors whose lists are past half their age or missing; resend revocations."""
    from django.utils import timezone

    half = timezone.now() + timezone.timedelta(seconds=settings.ALLOWLIST_MAX_AGE_S / 2)
    aging = DeviceAllowlist.objects.filter(version__gt=0, refused="", expires_at__lt=half).values_list(
        "device__door_id", flat=True
    )
    missing = (
        EdgeDevice.objects.filter(door__fail_mode=Door.FailMode.ALLOWLIST)
        .exclude(status=EdgeDevice.Status.DISABLED)
        .filter(Q(allowlist__isnull=True) | Q(allowlist__version=0))
        .values_list("door_id", flat=True)
    )
    revocations_resend()
    return len(recompile_schedule({*aging, *missing} - {None}))


# --- Who is affected ----------------------------------------------------------------------------


def _person_doors(person_ids: Iterable[int]) -> set[int]:
    rows = AccessGroup.objects.filter(people__in=list(person_ids)).values_list("doors", flat=True)
    return {d for d in rows if d is not None}


def _group_doors(group_ids: Iterable[int]) -> set[int]:
    rows = AccessGroup.doors.through.objects.filter(accessgroup_id__in=list(group_ids))
    return set(rows.values_list("door_id", flat=True))


def _schedule_doors(schedule_id: int | None) -> set[int]:
    if schedule_id is None:
        return set()
    return _group_doors(AccessGroup.objects.filter(schedule_id=schedule_id).values_list("pk", flat=True))


def _revoke_lost(person_ids: Iterable[int], door_ids: Iterable[int], reason: str) -> None:
    """Revoke each person on the devices of the doors no group of theirs opens any more."""
    doors = set(door_ids)
    if not doors:
        return
    lost = doors_lost(person_ids, doors)
    uids = dict(Person.objects.filter(pk__in=list(lost)).values_list("pk", "uid"))
    for person_id, gone in lost.items():
        if gone and person_id in uids:
            revoke_on_commit([str(uids[person_id])], reason, door_ids=gone)


# --- Receivers ----------------------------------------------------------------------------------


def person_pre_save(sender: type[Model], instance: Person, **kwargs: Any) -> None:
    instance._allowlist_before = (  # type: ignore[attr-defined]
        Person.objects.filter(pk=instance.pk).values("status", "watchlist").first() if instance.pk else None
    )


def person_saved(sender: type[Model], instance: Person, created: bool, **kwargs: Any) -> None:
    before = getattr(instance, "_allowlist_before", None)
    if before is not None:
        if not before["watchlist"] and instance.watchlist:
            revoke_on_commit([str(instance.uid)], "watchlist")
        elif before["status"] == Person.Status.ACTIVE and instance.status != Person.Status.ACTIVE:
            revoke_on_commit([str(instance.uid)], "suspended")
    if not created:
        recompile_on_commit(_person_doors([instance.pk]))


def person_pre_delete(sender: type[Model], instance: Person, **kwargs: Any) -> None:
    instance._allowlist_doors = _person_doors([instance.pk])  # type: ignore[attr-defined]


def person_deleted(sender: type[Model], instance: Person, **kwargs: Any) -> None:
    revoke_on_commit([str(instance.uid)], "erased")
    recompile_on_commit(getattr(instance, "_allowlist_doors", ()))


def _m2m_change(instance: Model, action: str, reverse: bool, pk_set: Any, *, forward: str) -> tuple[set, set] | None:
    """The two sides of an ``AccessGroup`` many-to-many change, ``(the other model's pks, group pks)``,
    from either side; None for the actions that change nothing yet (a ``clear`` remembers what it
    will remove in its ``pre_clear``). ``forward``: the group's attribute (``people`` / ``doors``)."""
    if action == "pre_clear":
        others = instance.access_groups.all() if reverse else getattr(instance, forward).all()  # type: ignore[attr-defined]
        instance._allowlist_cleared = set(others.values_list("pk", flat=True))  # type: ignore[attr-defined]
        return None
    if action not in ("post_add", "post_remove", "post_clear"):
        return None
    others = set(pk_set or ()) if action != "post_clear" else getattr(instance, "_allowlist_cleared", set())
    return ({instance.pk}, others) if reverse else (others, {instance.pk})


def membership_changed(
    sender: type[Model], instance: Model, action: str, reverse: bool, pk_set: Any, **kw: Any
) -> None:
    """``AccessGroup.people`` changed, from either side."""
    change = _m2m_change(instance, action, reverse, pk_set, forward="people")
    if change is None:
        return
    people, groups = change
    doors = _group_doors(groups)
    if action != "post_add":
        _revoke_lost(people, doors, "removed_from_group")
    recompile_on_commit(doors)


def group_doors_changed(
    sender: type[Model], instance: Model, action: str, reverse: bool, pk_set: Any, **kw: Any
) -> None:
    """``AccessGroup.doors`` changed, from either side."""
    change = _m2m_change(instance, action, reverse, pk_set, forward="doors")
    if change is None:
        return
    doors, groups = change
    if action != "post_add":
        members = AccessGroup.people.through.objects.filter(accessgroup_id__in=groups).values_list(
            "person_id", flat=True
        )
        _revoke_lost(set(members), doors, "door_removed")
    recompile_on_commit(doors)


def group_saved(sender: type[Model], instance: AccessGroup, **kwargs: Any) -> None:
    recompile_on_commit(_group_doors([instance.pk]))


def group_pre_delete(sender: type[Model], instance: AccessGroup, **kwargs: Any) -> None:
    instance._allowlist_members = set(instance.people.values_list("pk", flat=True))  # type: ignore[attr-defined]
    instance._allowlist_doors = _group_doors([instance.pk])  # type: ignore[attr-defined]


def group_deleted(sender: type[Model], instance: AccessGroup, **kwargs: Any) -> None:
    doors = getattr(instance, "_allowlist_doors", set())
    _revoke_lost(getattr(instance, "_allowlist_members", set()), doors, "removed_from_group")
    recompile_on_commit(doors)


def schedule_part_changed(sender: type[Model], instance: ScheduleWindow | Holiday | Schedule, **kwargs: Any) -> None:
    schedule_id = instance.pk if isinstance(instance, Schedule) else instance.schedule_id
    recompile_on_commit(_schedule_doors(schedule_id))


def door_saved(sender: type[Model], instance: Door, **kwargs: Any) -> None:
    recompile_on_commit([instance.pk])


def embedding_changed(sender: type[Model], instance: FaceEmbedding, **kwargs: Any) -> None:
    recompile_on_commit(_person_doors([instance.person_id]))


def calibration_changed(sender: type[Model], instance: ModelCalibration, **kwargs: Any) -> None:
    recompile_on_commit(Door.objects.filter(fail_mode=Door.FailMode.ALLOWLIST).values_list("pk", flat=True))


def device_saved(sender: type[Model], instance: EdgeDevice, **kwargs: Any) -> None:
    recompile_on_commit([instance.door_id] if instance.door_id else [])


def allowlist_triggers_connect() -> None:
    """Connect the receivers (``DevicesConfig.ready``)."""
    uid = "devices-allowlist-"
    pre_save.connect(person_pre_save, sender=Person, dispatch_uid=uid + "person-pre-save")
    post_save.connect(person_saved, sender=Person, dispatch_uid=uid + "person-save")
    pre_delete.connect(person_pre_delete, sender=Person, dispatch_uid=uid + "person-pre-delete")
    post_delete.connect(person_deleted, sender=Person, dispatch_uid=uid + "person-delete")
    m2m_changed.connect(membership_changed, sender=AccessGroup.people.through, dispatch_uid=uid + "members")
    m2m_changed.connect(group_doors_changed, sender=AccessGroup.doors.through, dispatch_uid=uid + "group-doors")
    post_save.connect(group_saved, sender=AccessGroup, dispatch_uid=uid + "group-save")
    pre_delete.connect(group_pre_delete, sender=AccessGroup, dispatch_uid=uid + "group-pre-delete")
    post_delete.connect(group_deleted, sender=AccessGroup, dispatch_uid=uid + "group-delete")
    for model in (Schedule, ScheduleWindow, Holiday):
        post_save.connect(schedule_part_changed, sender=model, dispatch_uid=f"{uid}{model.__name__}-save")
        post_delete.connect(schedule_part_changed, sender=model, dispatch_uid=f"{uid}{model.__name__}-delete")
    post_save.connect(door_saved, sender=Door, dispatch_uid=uid + "door-save")
    post_save.connect(embedding_changed, sender=FaceEmbedding, dispatch_uid=uid + "embedding-save")
    post_delete.connect(embedding_changed, sender=FaceEmbedding, dispatch_uid=uid + "embedding-delete")
    post_save.connect(calibration_changed, sender=ModelCalibration, dispatch_uid=uid + "calibration-save")
    post_delete.connect(calibration_changed, sender=ModelCalibration, dispatch_uid=uid + "calibration-delete")
    post_save.connect(device_saved, sender=EdgeDevice, dispatch_uid=uid + "device-save")
