"""Model rollouts to devices in embedding mode: offer a signed bundle, follow each device, pause, roll back.

A rollout (:class:`~devices.models.ModelRollout`) offers one registered, signed model version to
devices that embed faces themselves (they report a model version in their heartbeats): the devices
at some doors, named devices, or a percentage canary of them (chosen by a hash of the rollout and
the device uid, so the same devices are chosen however the list is ordered). It is refused when the
version is not registered and signed, when its bundle does not verify on this server, or when the
server could not decide that version's detections (:func:`recognition.model_registry.model_version_decidable`:
its gallery must cover the active version's people).

Each chosen device gets a signed ``model_offer`` command (``faceengine/PROTOCOL.md``) with the
signed manifest and the URL of the bundle's files, which it downloads with requests signed by its
own key (:mod:`devices.model_download`). The device reports where it is in its heartbeats
(``model_update_*``); :func:`rollout_progress_record` keeps one row per device
(offered / downloading / verified / switched / failed / rolled_back, with the reason and times) and
marks the rollout done once every device switched. Paused: no download is served and nothing more
is offered; resumed: the offer is sent again to the devices that have not switched. Rolled back:
every device of the rollout is told to go back to its previous model (``model_rollback``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

from accessctl.exceptions import InvalidInput
from devices.commands import command_send, commands_flush
from devices.models import EdgeDevice, ModelRollout, ModelRolloutDevice
from faceengine import protocol as p
from faceengine.protocol.envelope import loads_strict
from faceengine.protocol.model_manifest import ManifestError, agent_version_allowed
from recognition.model_registry import (
    BundleRefused,
    model_signed_manifest,
    model_version_decidable,
    model_version_verify,
)
from recognition.models import ModelVersion

logger = logging.getLogger(__name__)

State = ModelRollout.State
Status = ModelRolloutDevice.Status
#: rollouts a device may still be moved by (one at a time per device)
OPEN_STATES = (State.RUNNING, State.PAUSED)
#: where a device still works on an offer (a download is served to it)
DOWNLOADABLE = (Status.OFFERED, Status.DOWNLOADING)


class RolloutRefused(InvalidInput):
    """A rollout that cannot be started or changed (``code`` says why)."""


# --------------------------------------------------------------------------- selectors


def fleet_model_counts() -> list[dict[str, Any]]:
    """Per model version, how many enabled devices run it (from their heartbeats), most first."""
    rows = (
        EdgeDevice.objects.exclude(status=EdgeDevice.Status.DISABLED)
        .values("model_version")
        .annotate(devices=Count("id"))
        .order_by("-devices", "model_version")
    )
    return [{"model_version": r["model_version"] or "", "devices": r["devices"]} for r in rows]


def rollout_counts(rollout: ModelRollout) -> dict[str, int]:
    """How many of the rollout's devices are at each status."""
    counts = {s.value: 0 for s in Status}
    for row in rollout.targets.values("status").annotate(n=Count("id")):
        counts[row["status"]] = row["n"]
    return counts


def embedding_devices() -> Any:
    """Devices that embed faces themselves: enabled, and reporting a model version in heartbeats."""
    return EdgeDevice.objects.exclude(status=EdgeDevice.Status.DISABLED).exclude(model_version="")


def bundle_url(model_version: str) -> str:
    """The folder URL of a version's files, as devices reach the server."""
    path = reverse("api-model-bundle-file", kwargs={"model_version": model_version, "file_name": "x"})
    return settings.MODEL_DOWNLOAD_BASE_URL + path[: -len("x")]


def _agent_allowed(spec: str, version: str) -> bool:
    try:
        return agent_version_allowed(spec, version)
    except ManifestError:  # a version that does not start with numbers: let the device decide
        return True


def _canary_key(rollout_id: int, uid: str) -> str:
    return hashlib.sha256(f"{rollout_id}:{uid}".encode()).hexdigest()


# --------------------------------------------------------------------------- services


def _history(rollout: ModelRollout, action: str, actor: Any) -> None:
    name = str(getattr(actor, "username", None) or "system")
    rollout.history = [*rollout.history, {"at": timezone.now().isoformat(), "action": action, "actor": name}]


def rollout_check(*, model_version: str) -> ModelVersion:
    """The version, when it may be rolled out: registered, signed, not retired, its bundle verifies
    on this server, and the server can decide its detections. Raises :class:`RolloutRefused`."""
    model = ModelVersion.objects.filter(model_version=model_version).first()
    if model is None:
        raise RolloutRefused(f"{model_version} is not registered.", code="not_registered")
    if not model.signature:
        raise RolloutRefused(f"{model_version} is not signed: run manage.py model_registry register.", code="unsigned")
    if model.state == ModelVersion.State.RETIRED:
        raise RolloutRefused(f"{model_version} is retired.", code="retired")
    try:
        model_version_verify(model=model)
    except BundleRefused as exc:
        raise RolloutRefused(str(exc), code=exc.code) from None
    if not model_version_decidable(model_version):
        raise RolloutRefused(
            f"The gallery has no {model_version} vectors for every person of the active model yet: "
            "the server could not decide its detections (re-embed the gallery first).",
            code="gallery_missing",
        )
    return model


def rollout_candidates(*, doors: Sequence[int] = (), devices: Sequence[str] = ()) -> Any:
    """The embedding devices at ``doors`` or named in ``devices`` (neither: the whole fleet)."""
    candidates = embedding_devices()
    if doors or devices:
        candidates = candidates.filter(Q(door_id__in=list(doors)) | Q(uid__in=list(devices)))
        unknown = set(devices) - set(EdgeDevice.objects.filter(uid__in=list(devices)).values_list("uid", flat=True))
        if unknown:
            raise RolloutRefused(f"Unknown devices: {', '.join(sorted(unknown))}.", code="unknown_device")
    return candidates


def rollout_create(
    *,
    model_version: str,
    doors: Sequence[int] = (),
    devices: Sequence[str] = (),
    percent: int | None = None,
    actor: Any = None,
    note: str = "",
) -> ModelRollout:
    """Start a rollout of ``model_version`` to the embedding devices at ``doors`` and the devices
    ``devices`` (uids; neither: the whole fleet), or to ``percent`` % of those. Offers go out when
    the transaction commits. Raises :class:`RolloutRefused`."""
    model = rollout_check(model_version=model_version)
    if percent is not None and not 1 <= int(percent) <= 100:
        raise RolloutRefused("percent must be 1..100.", code="invalid")
    candidates = rollout_candidates(doors=doors, devices=devices)
    with transaction.atomic():
        chosen = [
            d
            for d in candidates.select_for_update().exclude(model_version=model_version).order_by("uid")
            # an agent the manifest does not allow would refuse it: not offered (unknown version: offered)
            if not d.agent_version or _agent_allowed(model.agent_versions, d.agent_version)
        ]
        busy = ModelRolloutDevice.objects.filter(device__in=chosen, rollout__state__in=OPEN_STATES)
        if busy.exists():
            uids = sorted(set(busy.values_list("device__uid", flat=True)))
            raise RolloutRefused(
                f"Devices already in a running or paused rollout: {', '.join(uids)}.", code="device_busy"
            )
        rollout = ModelRollout.objects.create(
            model_version=model_version,
            scope={"doors": list(doors), "devices": list(devices), "percent": percent},
            note=note[:300],
            created_by=actor if getattr(actor, "pk", None) else None,
            created_by_name=str(getattr(actor, "username", None) or "system")[:150],
        )
        if percent is not None:
            chosen.sort(key=lambda d: _canary_key(rollout.pk, d.uid))
            chosen = chosen[: max(1, math.ceil(len(chosen) * int(percent) / 100))] if chosen else []
        if not chosen:
            raise RolloutRefused("No device in embedding mode in that scope needs this version.", code="no_devices")
        ModelRolloutDevice.objects.bulk_create(
            ModelRolloutDevice(rollout=rollout, device=d, previous_model_version=d.model_version) for d in chosen
        )
        _history(rollout, f"created ({len(chosen)} devices)", actor)
        rollout.save(update_fields=["history"])
        transaction.on_commit(lambda: rollout_offers_send(rollout_id=rollout.pk))
    logger.warning(
        "rollout %s of %s to %d device(s) by %s", rollout.pk, model_version, len(chosen), rollout.created_by_name
    )
    return rollout


def rollout_offers_send(*, rollout_id: int, rows: Iterable[ModelRolloutDevice] | None = None) -> int:
    """Send the signed offer to the rollout's devices that have not switched (or to ``rows``);
    returns how many were sent. Nothing is sent unless the rollout is running."""
    rollout = ModelRollout.objects.get(pk=rollout_id)
    if rollout.state != State.RUNNING:
        return 0
    model = ModelVersion.objects.get(model_version=rollout.model_version)
    data = {
        "manifest": loads_strict(model_signed_manifest(model)),
        "url": bundle_url(model.model_version),
        "rollout": rollout.pk,
    }
    targets = rows if rows is not None else rollout.targets.select_related("device").filter(status__in=DOWNLOADABLE)
    sent = 0
    for row in targets:
        try:
            command = command_send(row.device, p.CommandKind.MODEL_OFFER, reason="model_rollout", data=data, wait=False)
        except Exception as exc:  # the broker is down: shown per device, sent again on resume
            logger.warning("rollout %s: offer to %s not sent: %s", rollout.pk, row.device.uid, exc)
            row.send_error = str(exc)[:300]
            row.save(update_fields=["send_error", "updated_at"])
            continue
        row.command_id, row.send_error, row.offered_at = command.command_id, "", timezone.now()
        row.save(update_fields=["command_id", "send_error", "offered_at", "updated_at"])
        sent += 1
    if sent and (missing := commands_flush()):  # one wait for the broker's acknowledgements of them all
        logger.warning("rollout %s: %d of %d offers not acknowledged by the broker", rollout.pk, missing, sent)
    return sent


def _locked(rollout: ModelRollout) -> ModelRollout:
    return ModelRollout.objects.select_for_update().get(pk=rollout.pk)


def rollout_pause(*, rollout: ModelRollout, actor: Any = None) -> ModelRollout:
    """Stop serving downloads and offering; devices that switched stay switched."""
    with transaction.atomic():
        rollout = _locked(rollout)
        if rollout.state != State.RUNNING:
            raise RolloutRefused(f"Rollout {rollout.pk} is {rollout.state}, not running.", code="not_running")
        rollout.state = State.PAUSED
        _history(rollout, "paused", actor)
        rollout.save(update_fields=["state", "history", "updated_at"])
    logger.warning("rollout %s of %s paused", rollout.pk, rollout.model_version)
    return rollout


def rollout_resume(*, rollout: ModelRollout, actor: Any = None) -> ModelRollout:
    """Running again: the offer goes again to every device that has not switched (failed ones too)."""
    with transaction.atomic():
        rollout = _locked(rollout)
        if rollout.state != State.PAUSED:
            raise RolloutRefused(f"Rollout {rollout.pk} is {rollout.state}, not paused.", code="not_paused")
        rollout.state = State.RUNNING
        _history(rollout, "resumed", actor)
        rollout.save(update_fields=["state", "history", "updated_at"])
        rollout.targets.filter(status=Status.FAILED).update(status=Status.OFFERED, reason="")
        transaction.on_commit(lambda: rollout_offers_send(rollout_id=rollout.pk))
    logger.warning("rollout %s of %s resumed", rollout.pk, rollout.model_version)
    return rollout


def rollout_roll_back(*, rollout: ModelRollout, actor: Any = None) -> ModelRollout:
    """Fleet-wide rollback: every device of the rollout is told to go back to its previous model
    (those that never switched ignore it); no download is served any more."""
    with transaction.atomic():
        rollout = _locked(rollout)
        if rollout.state not in OPEN_STATES and rollout.state != State.DONE:
            raise RolloutRefused(f"Rollout {rollout.pk} is already {rollout.state}.", code="rolled_back")
        rollout.state = State.ROLLED_BACK
        rollout.finished_at = timezone.now()
        _history(rollout, "rolled back", actor)
        rollout.save(update_fields=["state", "finished_at", "history", "updated_at"])
        rows = list(rollout.targets.select_related("device").exclude(status=Status.ROLLED_BACK))

    for row in rows:
        try:
            command_send(row.device, p.CommandKind.MODEL_ROLLBACK, reason="rollout_rolled_back")
        except Exception as exc:
            row.send_error = str(exc)[:300]
            row.save(update_fields=["send_error", "updated_at"])
            continue
        row.rollback_sent_at = timezone.now()
        row.save(update_fields=["rollback_sent_at", "updated_at"])
    logger.warning("rollout %s of %s rolled back (%d devices told)", rollout.pk, rollout.model_version, len(rows))
    return rollout


def _rollback_refresh(device: EdgeDevice, heartbeat: p.Heartbeat) -> bool:
    """A device still running the version of a rolled-back rollout: tell it again (it was offline)."""
    row = (
        ModelRolloutDevice.objects.select_related("rollout", "device")
        .filter(device=device, rollout__state=State.ROLLED_BACK, rollout__model_version=heartbeat.model_version or "")
        .exclude(status=Status.ROLLED_BACK)
        .order_by("-rollout__created_at")
        .first()
    )
    if row is None or (
        row.rollback_sent_at is not None
        and (timezone.now() - row.rollback_sent_at).total_seconds() < settings.MODEL_OFFER_RESEND_S
    ):
        return False
    try:
        command_send(row.device, p.CommandKind.MODEL_ROLLBACK, reason="rollout_rolled_back")
    except Exception as exc:
        row.send_error = str(exc)[:300]
        row.save(update_fields=["send_error", "updated_at"])
        return False
    row.rollback_sent_at = timezone.now()
    row.save(update_fields=["rollback_sent_at", "updated_at"])
    logger.warning(
        "rollout %s: rollback sent again to %s (still on %s)", row.rollout_id, device.uid, heartbeat.model_version
    )
    return True


def rollout_offer_refresh(*, device: EdgeDevice, heartbeat: p.Heartbeat) -> bool:
    """A heartbeat from a device whose offer is still unanswered: send it again when it is older than
    ``MODEL_OFFER_RESEND_S`` (a device offline when it was sent refuses it on reconnecting: commands
    older than its window are stale) or was never sent (the broker was down). Likewise a rollback to
    a device still on the rolled-back version. True when something was sent again."""
    if _rollback_refresh(device, heartbeat):
        return True
    row = (
        ModelRolloutDevice.objects.select_related("rollout", "device")
        .filter(device=device, status=Status.OFFERED, rollout__state=State.RUNNING)
        .first()
    )
    if row is None or heartbeat.model_update_version == row.rollout.model_version:
        return False  # nothing open, or the device works on it
    if row.offered_at is not None and (timezone.now() - row.offered_at).total_seconds() < settings.MODEL_OFFER_RESEND_S:
        return False
    logger.info("rollout %s: offer to %s sent again (unanswered)", row.rollout_id, device.uid)
    return rollout_offers_send(rollout_id=row.rollout_id, rows=[row]) == 1


_ORDER = {
    Status.OFFERED: 0, Status.DOWNLOADING: 1, Status.VERIFIED: 2, Status.SWITCHED: 3, Status.FAILED: 3,
    Status.ROLLED_BACK: 4,
}  # fmt: skip


def rollout_progress_record(*, device: EdgeDevice, heartbeat: p.Heartbeat) -> ModelRolloutDevice | None:
    """A heartbeat's ``model_update_*``: the device's row in the latest rollout of that version moves
    on (never back, except a failed one offered again); the rollout is done when every device switched."""
    version, state = heartbeat.model_update_version, heartbeat.model_update_state
    if not version or state is None:
        return None
    with transaction.atomic():
        row = (
            ModelRolloutDevice.objects.select_for_update()
            .select_related("rollout")
            .filter(device=device, rollout__model_version=version)
            .order_by("-rollout__created_at", "-rollout_id")
            .first()
        )
        if row is None:
            return None
        status = Status(str(state))
        if row.status == status or (_ORDER[status] < _ORDER[Status(row.status)] and row.status != Status.FAILED):
            return row
        row.status = status
        row.reason = (heartbeat.model_update_reason or "")[:64]
        now = timezone.now()
        if status == Status.DOWNLOADING and row.download_started_at is None:
            row.download_started_at = now
        if status == Status.SWITCHED:
            row.switched_at = now
        row.save()
        rollout = row.rollout
        if rollout.state == State.RUNNING and not rollout.targets.exclude(status=Status.SWITCHED).exists():
            rollout.state, rollout.finished_at = State.DONE, now
            _history(rollout, "done", None)
            rollout.save(update_fields=["state", "finished_at", "history", "updated_at"])
    log = logger.warning if status in (Status.FAILED, Status.ROLLED_BACK) else logger.info
    log(
        "rollout %s: device %s %s %s%s",
        row.rollout_id,
        device.uid,
        status,
        version,
        f" ({row.reason})" if row.reason else "",
    )
    return row


def download_offer(*, device: EdgeDevice, model_version: str) -> ModelRolloutDevice | None:
    """The device's open offer of ``model_version`` in a running rollout (None: nothing to serve)."""
    return (
        ModelRolloutDevice.objects.select_related("rollout")
        .filter(
            device=device, rollout__model_version=model_version, rollout__state=State.RUNNING, status__in=DOWNLOADABLE
        )
        .first()
    )
