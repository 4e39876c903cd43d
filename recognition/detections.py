"""Decide one staged detection: embed the crop if needed, match it, hand the outcome to the policy.

This is what the ``recognition.decide`` task runs. It is idempotent on ``detection_id``: when
the AccessEvent exists already (a redelivered task) nothing is repeated. Any input problem ends
in a recorded denial with a reason code, never in a lost detection.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import InterfaceError, OperationalError, transaction

from accessctl.codes import Reason
from accessctl.decisions import access_decide
from accessctl.models import AccessEvent
from devices.models import InboundDetection
from edge_agent import protocol as p
from recognition.engine import active_embedder
from recognition.matcher import match_decide
from recognition.models import EMBEDDING_DIMS

logger = logging.getLogger(__name__)


class ProbeError(Exception):
    """The detection cannot be turned into a usable probe vector."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _crop_array(jpeg: bytes, size: int) -> np.ndarray:
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


def probe_vector(payload: dict[str, Any], crop_name: str) -> tuple[np.ndarray, str]:
    """The probe embedding and its model version, from the device's vector or by embedding the crop."""
    if payload.get("mode") == p.Mode.EMBEDDING:
        detection = p.Detection.from_dict(payload)  # the verified payload, complete in this mode
        model_version = str(detection.model_version or "")
        if model_version not in EMBEDDING_DIMS:
            raise ProbeError(Reason.MODEL_MISMATCH, f"no gallery for model version {model_version!r}")
        vector = np.asarray(detection.embedding_values(), dtype=np.float32)
        if vector.shape[0] != EMBEDDING_DIMS[model_version]:
            raise ProbeError(Reason.BAD_EMBEDDING, f"{model_version} vectors have {EMBEDDING_DIMS[model_version]} dims")
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ProbeError(Reason.BAD_EMBEDDING, "embedding is zero or not finite")
        return vector / norm, model_version
    if not crop_name:
        raise ProbeError(Reason.MALFORMED, "crop-mode detection without a crop")
    with default_storage.open(crop_name, "rb") as handle:
        jpeg = handle.read()
    embedder = active_embedder()
    crop = _crop_array(jpeg, embedder.input_size)
    return embedder.embed(crop)[0], embedder.model_version


def detection_decide(*, detection_id: str) -> str:
    """Decide the staged detection ``detection_id``; returns the reason code recorded."""
    inbound = InboundDetection.objects.filter(detection_id=detection_id).select_related("device__door").first()
    if inbound is None:
        # Decided already (a redelivered task: the event and the unstaging commit together).
        existing = AccessEvent.objects.filter(detection_id=detection_id).values_list("reason", flat=True).first()
        if existing is None:
            logger.error("detection %s: nothing staged and no event; cannot decide", detection_id)
        return existing or "missing"
    payload, device = inbound.payload, inbound.device
    occurred_at = dt.datetime.fromtimestamp(float(payload["captured_at"]), tz=dt.UTC)
    quality = payload.get("quality") or {}
    common: dict[str, Any] = {
        "detection_id": detection_id,
        "occurred_at": occurred_at,
        "device_id": device.pk,
        "device_uid": device.uid,
        "door": device.door,
        "snapshot": inbound.crop,
        "details": {"mode": payload.get("mode"), "detector_score": payload.get("detector_score"), "quality": quality},
    }
    vector: np.ndarray | None = None
    outcome: dict[str, Any] = {"person_id": None}
    face_px = quality.get("face_px")
    if face_px is not None and float(face_px) < settings.RECOGNITION_MIN_FACE_PX:
        outcome["unknown_reason"] = Reason.LOW_QUALITY
    else:
        try:
            vector, model_version = probe_vector(payload, inbound.crop)
        except (ProbeError, p.ProtocolError) as exc:
            reason = exc.reason if isinstance(exc, ProbeError) else Reason(exc.code)
            logger.warning("detection %s from %s unusable: %s (%s)", detection_id, device.uid, reason, exc)
            outcome["unknown_reason"] = reason
            common["details"]["error"] = str(exc)[:300]
        except (OperationalError, InterfaceError):
            raise  # transient: the task retries
        except Exception as exc:
            # Unforeseen input or engine failure: deny with a reason rather than fail the task, which
            # would leave the detection staged and re-enqueued by the sweep forever.
            logger.exception("detection %s from %s could not be processed", detection_id, device.uid)
            outcome["unknown_reason"] = Reason.PROCESSING_ERROR
            common["details"]["error"] = f"{type(exc).__name__}: {exc}"[:300]
    # A backlog must not open a door long after the person left: same window as at the bridge,
    # and for a re-sent detection (signed anew) also from when the face was seen.
    now, window = time.time(), settings.DEVICE_TIMESTAMP_WINDOW_S
    too_late = now - float(payload["sent_at"]) > window or (
        bool(payload.get("attempt")) and now - float(payload["captured_at"]) > window
    )
    # One transaction: search, policy, the event and the unstaging. Unstaging goes first so that
    # the access log's lock (taken when the event is written) is held as briefly as possible.
    with transaction.atomic():
        InboundDetection.objects.filter(pk=inbound.pk).delete()
        if vector is not None:
            match = match_decide(vector, model_version=model_version, door=device.door)
            outcome = {
                "person_id": match.person_id,
                "unknown_reason": match.reason,
                "similarity": match.similarity,
                "margin": match.margin,
                "threshold": match.threshold,
                "model_version": model_version,
            }
        event, _ = access_decide(**common, **outcome, too_late=too_late)
    return event.reason
