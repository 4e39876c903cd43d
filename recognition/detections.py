"""Decide staged detections: embed the crop if needed, match, hand the outcome to the policy.

A detection that carries track probes (the next best faces of the same track) is matched on all
of them, fused by :func:`recognition.track_fusion.tracks_match`; the event records how many.

This is what the ``recognition.decide`` and ``recognition.decide_many`` tasks run; detections the
bridge staged together are decided in one transaction. It is idempotent on ``detection_id``: when
the AccessEvent exists already (a redelivered task) nothing is repeated. Any input problem ends
in a recorded denial with a reason code, never in a lost detection.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction

from accessctl import metrics
from accessctl.codes import Reason
from accessctl.decisions import DecisionInput, access_decide_many
from accessctl.models import AccessEvent
from accessctl.offline_decisions import OfflineInput, offline_decisions_record
from faceengine import protocol as p
from recognition.calibration import threshold_measured
from recognition.engine import door_crop_embedder
from recognition.gallery_versions import gallery_removed
from recognition.liveness import crop_liveness_score
from recognition.models import EMBEDDING_DIMS, InboundDetection
from recognition.shadow_sampling import ShadowCandidate, shadow_offer_after_commit
from recognition.staging import staged_digest
from recognition.track_fusion import probe_weights, tracks_match

logger = logging.getLogger(__name__)


class ProbeError(Exception):
    """The detection cannot be turned into a usable probe vector."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def crop_array(jpeg: bytes, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(jpeg)) as image:
            if image.width * image.height > 4096 * 4096:
                raise ProbeError(Reason.BAD_IMAGE, f"crop too large: {image.width}x{image.height}")
            rgb = image.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise ProbeError(Reason.BAD_IMAGE, f"crop is not a readable image: {exc}") from exc


def crop_read(crop_name: str) -> bytes:
    """The stored crop's JPEG bytes."""
    with default_storage.open(crop_name, "rb") as handle:
        return handle.read()


def probe_vector(detection: p.Detection, crop: str | bytes) -> tuple[np.ndarray, str]:
    """The probe embedding and its model version, from the device's vector or by embedding the crop
    (``crop``: its storage name, or its JPEG bytes already read)."""
    if detection.mode == p.Mode.EMBEDDING:
        model_version = str(detection.model_version or "")
        if model_version not in EMBEDDING_DIMS:
            raise ProbeError(Reason.MODEL_MISMATCH, f"no gallery for model version {model_version!r}")
        if gallery_removed(model_version):  # not "unknown face": the device runs a model no longer served
            raise ProbeError(
                Reason.MODEL_MISMATCH,
                f"model version {model_version} is retired and its gallery removed: roll the "
                "device to the active version",
            )
        vector = np.asarray(detection.embedding_values(), dtype=np.float32)
        if vector.shape[0] != EMBEDDING_DIMS[model_version]:
            raise ProbeError(Reason.BAD_EMBEDDING, f"{model_version} vectors have {EMBEDDING_DIMS[model_version]} dims")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ProbeError(Reason.BAD_EMBEDDING, "embedding is zero or not finite")
        return vector / norm, model_version
    if not crop:
        raise ProbeError(Reason.MALFORMED, "crop-mode detection without a crop")
    jpeg = crop if isinstance(crop, bytes) else crop_read(crop)
    embedder = door_crop_embedder()
    crop = crop_array(jpeg, embedder.input_size)
    return embedder.embed(crop)[0], embedder.model_version


def track_probes_usable(detection: p.Detection) -> list[p.TrackProbe]:
    """The detection's track probes whose face is big enough (the main face's rule; a smaller one is
    left out of the fusion, it does not deny the detection)."""
    minimum = settings.RECOGNITION_MIN_FACE_PX
    return [probe for probe in detection.track_probes if float(probe.quality.get("face_px", minimum)) >= minimum]


def track_vectors(detection: p.Detection, model_version: str, probes: Sequence[p.TrackProbe]) -> list[np.ndarray]:
    """The normalised embeddings of ``probes`` (the detection's, after its main one), checked like
    the main probe: the device's vectors (embedding mode) or the server's of each crop (crop mode)."""
    if not probes:
        return []
    if detection.mode == p.Mode.EMBEDDING:
        out = []
        for probe in probes:
            if probe.embedding is None or detection.embedding_encoding is None or detection.dim is None:
                raise ProbeError(Reason.BAD_EMBEDDING, "a track probe carries no embedding")
            values = p.decode_embedding(
                probe.embedding, detection.embedding_encoding, detection.dim, probe.embedding_scale
            )
            vector = np.asarray(values, dtype=np.float32)
            norm = float(np.linalg.norm(vector))
            if vector.shape[0] != EMBEDDING_DIMS[model_version] or not np.isfinite(norm) or norm == 0.0:
                raise ProbeError(
                    Reason.BAD_EMBEDDING, "a track probe's embedding is zero, not finite or of the wrong size"
                )
            out.append(vector / norm)
        return out
    embedder = door_crop_embedder()
    crops = np.stack([crop_array(probe.crop_jpeg or b"", embedder.input_size) for probe in probes])
    return [np.asarray(v, dtype=np.float32) for v in embedder.embed(crops)]


@dataclass
class _Prepared:
    """A staged detection read and turned into a probe, ready to be matched and decided."""

    inbound: InboundDetection
    decision: DecisionInput
    vector: np.ndarray | None = None
    model_version: str = ""
    #: the track's other faces (after ``vector``) and every face's weight, main one first
    track: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    #: Set when the device decided alone: recorded with the server's verdict, answered only "recorded".
    offline: OfflineInput | None = None


def detection_decide(*, detection_id: str) -> str:
    """Decide the staged detection ``detection_id``; returns the reason code recorded."""
    return detections_decide([detection_id])[0]


def detections_decide(detection_ids: Sequence[str]) -> list[str]:
    """Decide staged detections together; returns the reason code recorded for each id, in order.

    Everything CPU-bound (embedding crops) happens first; then one transaction unstages them,
    searches the gallery once per model version, applies the policy with one query and writes
    the events with one INSERT under one lock of the access log. A detection that is not staged
    any more was decided before (a redelivered task): its recorded reason is returned, nothing
    is repeated. If deciding them together fails for another reason than the database (a bug,
    a bad row), they are decided one by one, so one bad detection does not hold up the others.
    The door commands are published as each transaction commits (see :mod:`accessctl.decisions`).
    """
    ids = list(dict.fromkeys(str(i) for i in detection_ids))
    staged = InboundDetection.objects.filter(detection_id__in=ids).select_related("door").order_by("pk")
    prepared = [_prepare(inbound) for inbound in staged]
    reasons: dict[str, str] = {}
    try:
        if prepared:
            reasons.update(_decide_together(prepared))
    except (OperationalError, InterfaceError):
        raise  # transient: the task retries (each decision is idempotent)
    except Exception:
        if len(prepared) == 1:
            raise
        logger.exception("deciding %d detections together failed; deciding them one by one", len(prepared))
        reasons.update(_decide_one_by_one(prepared))
    missing = [i for i in ids if i not in reasons]
    if missing:
        # Decided already (a redelivered task: the event and the unstaging commit together).
        reasons.update(
            (str(detection_id), reason)
            for detection_id, reason in AccessEvent.objects.filter(detection_id__in=missing).values_list(
                "detection_id", "reason"
            )
        )
        for detection_id in missing:
            if detection_id not in reasons:
                logger.error("detection %s: nothing staged and no event; cannot decide", detection_id)
    return [reasons.get(str(i), "missing") for i in detection_ids]


def _decide_one_by_one(prepared: list[_Prepared]) -> dict[str, str]:
    reasons: dict[str, str] = {}
    failed: Exception | None = None
    for item in prepared:
        try:
            reasons.update(_decide_together([item]))
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            logger.exception("detection %s could not be decided", item.decision.detection_id)
            failed = failed or exc
    if failed is not None:
        raise failed  # the task fails for the bad one; the others are decided
    return reasons


def _staged_detection(inbound: InboundDetection) -> p.Detection:
    """The staged payload parsed once (it was verified at the bridge; the crop is in storage)."""
    return p.Detection.from_dict(inbound.payload, crop_stored=True)


def _prepare(inbound: InboundDetection) -> _Prepared:
    """Parse the staged detection and compute the probe (or the reason there is none)."""
    detection_id = str(inbound.detection_id)
    device_uid = inbound.device_uid
    try:
        detection = _staged_detection(inbound)
    except p.ProtocolError as exc:  # verified at the bridge, so only a row staged by other means
        logger.error("staged detection %s from %s unreadable: %s", detection_id, device_uid, exc)
        decision = DecisionInput(
            detection_id=detection_id, occurred_at=inbound.received_at, device_id=inbound.device_id,
            device_uid=device_uid, door=inbound.door, person_id=None, unknown_reason=Reason(exc.code),
            snapshot=inbound.crop, details={"error": str(exc)[:300]},
        )  # fmt: skip
        return _Prepared(inbound=inbound, decision=decision)
    quality = detection.quality
    details: dict[str, Any] = {
        "mode": str(detection.mode),
        "detector_score": detection.detector_score,
        "quality": quality,
    }
    if detection.liveness_model is not None:
        details["liveness_model"] = detection.liveness_model
    # A backlog must not open a door long after the person left: the same rule as at the bridge.
    window_s = settings.DEVICE_TIMESTAMP_WINDOW_S
    too_late = not p.detection_is_fresh(detection, time.time(), window_s)
    item = _Prepared(
        inbound=inbound,
        decision=DecisionInput(
            detection_id=detection_id,
            occurred_at=dt.datetime.fromtimestamp(detection.captured_at, tz=dt.UTC),
            device_id=inbound.device_id,
            device_uid=device_uid,
            door=inbound.door,
            person_id=None,
            snapshot=inbound.crop,
            details=details,
            too_late=too_late,
            # The device's signed live score, fused over the track (None: not measured).
            liveness_edge=detection.liveness,
            liveness_frames=detection.liveness_frames,
            # What the person entered besides the face (PIN or card), signed with the detection.
            second_factor=detection.second_factor,
        ),
    )
    if detection.offline_decision is not None:
        item.decision.too_late = False  # decided at the door already; the server only checks it
        item.offline = OfflineInput(
            detection=item.decision,
            offline=detection.offline_decision,
            recognised=False,
            received_at=inbound.received_at,
            late=not p.detection_is_fresh(detection, inbound.received_at.timestamp(), window_s),
            sent_at=detection.sent_at,
            payload_sha256=staged_digest(inbound),
        )
    face_px = quality.get("face_px")
    if face_px is not None and float(face_px) < settings.RECOGNITION_MIN_FACE_PX:
        item.decision.unknown_reason = Reason.LOW_QUALITY
        return item
    jpeg: bytes | None = None
    try:
        if detection.mode == p.Mode.CROP and inbound.crop:
            jpeg = crop_read(inbound.crop)  # read once: embedded, and scored for liveness below
        item.vector, item.model_version = probe_vector(detection, jpeg or inbound.crop)
        usable = track_probes_usable(detection)
        item.track = track_vectors(detection, item.model_version, usable)
        item.weights = probe_weights([quality, *(probe.quality for probe in usable)])
    except (ProbeError, p.ProtocolError) as exc:
        item.vector = None  # one unusable face of the track: the detection is denied, as for the main one
        reason = exc.reason if isinstance(exc, ProbeError) else Reason(exc.code)
        logger.warning("detection %s from %s unusable: %s (%s)", detection_id, device_uid, reason, exc)
        item.decision.unknown_reason = reason
        details["error"] = str(exc)[:300]
    except (OperationalError, InterfaceError):
        raise  # transient: the task retries
    except Exception as exc:
        # Unforeseen input or engine failure: deny with a reason rather than fail the task, which
        # would leave the detection staged and re-enqueued by the sweep forever.
        logger.exception("detection %s from %s could not be processed", detection_id, device_uid)
        item.decision.unknown_reason = Reason.PROCESSING_ERROR
        details["error"] = f"{type(exc).__name__}: {exc}"[:300]
    door = inbound.door
    if jpeg is not None and item.vector is not None and settings.LIVENESS_SERVER_SCORE and door is not None:
        if door.liveness_required:  # doors without liveness decide, and cost, exactly as before
            item.decision.liveness_server = crop_liveness_score(jpeg, detection_id=detection_id)
    return item


def _latency_observe(prepared: list[_Prepared]) -> None:
    """Each decision's latency, staged at the bridge to committed (both on the database's clock
    and this host's: ``received_at`` is the database's ``now()`` at staging)."""
    now = time.time()
    for item in prepared:
        mode = (item.decision.details or {}).get("mode", "other")
        metrics.decision_latency_observe(str(mode), now - item.inbound.received_at.timestamp())


def _decide_together(prepared: list[_Prepared]) -> dict[str, str]:
    """One transaction: unstage, search (per model version), policy, events. Unstaging goes
    first so that the access log's lock (taken when the events are written) is held briefly."""
    with transaction.atomic():
        InboundDetection.objects.filter(pk__in=[item.inbound.pk for item in prepared]).delete()
        by_version: dict[str, list[_Prepared]] = {}
        for item in prepared:
            if item.vector is not None:
                by_version.setdefault(item.model_version, []).append(item)
        for model_version, items in by_version.items():
            matches = tracks_match(
                [[item.vector, *item.track] for item in items],  # type: ignore[list-item]
                weights=[item.weights or None for item in items],
                model_version=model_version,
                doors=[item.decision.door for item in items],
            )
            for item, match in zip(items, matches, strict=True):
                item.decision.person_id = match.person_id
                item.decision.unknown_reason = match.reason
                item.decision.similarity = match.similarity
                item.decision.margin = match.margin
                item.decision.threshold = match.threshold
                item.decision.model_version = model_version
                item.decision.probes_fused = 1 + len(item.track)
                if not threshold_measured(model_version, item.decision.door):
                    # Matched for the record (similarity, nearest person), never for a decision.
                    item.decision.person_id = None
                    item.decision.unknown_reason = Reason.MODEL_NOT_CALIBRATED
                    details = item.decision.details if item.decision.details is not None else {}
                    details["best_person_id"] = match.best_person_id
                    item.decision.details = details
                    logger.warning(
                        "detection %s: model %s has no measured door threshold; denied model_not_calibrated",
                        item.decision.detection_id, model_version,
                    )  # fmt: skip
                if item.offline is not None:
                    item.offline.recognised = True
        online = [item for item in prepared if item.offline is None]
        # Oldest first: a synced spool batch is chained in the order the door decided it.
        offline = sorted((item for item in prepared if item.offline is not None), key=lambda i: i.decision.occurred_at)
        recorded = access_decide_many([item.decision for item in online])
        # Decided at the door already: recorded with the server's verdict, answered with a deny (never open).
        reconciled = offline_decisions_record([item.offline for item in offline])  # type: ignore[misc]
        metrics.on_commit(lambda: _latency_observe(online))  # offline ones: the device's own time
        # Last: a sample of the crop-mode decisions goes to the shadow versions once all is done.
        shadow_offer_after_commit(_shadow_candidates(online, recorded))
    return {
        item.decision.detection_id: event.reason
        for item, (event, _) in zip(online + offline, recorded + reconciled, strict=True)
    }


def _shadow_candidates(online: list[_Prepared], recorded: list[tuple[AccessEvent, bool]]) -> list[ShadowCandidate]:
    """The decisions a shadow version may be compared on: crop mode, matched against the gallery by
    the active model (not refused before), recorded now (not a redelivery), the crop kept."""
    candidates = []
    for item, (event, created) in zip(online, recorded, strict=True):
        mode = (item.decision.details or {}).get("mode")
        if not created or item.vector is None or not item.decision.model_version or not item.inbound.crop:
            continue
        if item.decision.door is None or mode != str(p.Mode.CROP):
            continue
        candidates.append(
            ShadowCandidate(
                event_id=event.pk,
                active_model_version=item.decision.model_version,
                active_person_id=item.decision.person_id,
                active_reason=str(item.decision.unknown_reason),
            )
        )
    return candidates
