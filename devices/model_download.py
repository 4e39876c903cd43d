"""Serving model bundle files to devices: device-signed, short-lived, single-use, offered only.

``GET /api/v1/model-bundles/<model_version>/<file>`` with ``Authorization: AcsDevice <token>``
(:mod:`faceengine.protocol.model_download`). :func:`bundle_request_authorize` checks, in order:
the token's shape, the device (known, enabled), its signature by the device's key, that it was
signed for this method and path, its expiry (in the future, at most two minutes ahead), the nonce
(never seen: kept in the cache until the token expires), the device's request budget
(``MODEL_DOWNLOAD_REQUESTS_PER_MIN``), and that a running rollout offered this version to this
device and the file is one of the bundle's. Every refusal is recorded once in the access log
(``accessctl.decisions.rejection_record``, ``details.topic = model_download``), as refused door
messages are; a forged signature or a replay raises its alarm there.

Responses are bounded by the manifest's size of the file; ``Range: bytes=a-`` / ``a-b`` (one
range) answers ``206`` with ``Content-Range`` so that a device resumes an interrupted download.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

from accessctl.codes import Reason
from accessctl.decisions import rejection_record
from devices.model_rollout import download_offer
from devices.models import EdgeDevice, ModelRolloutDevice
from faceengine import protocol as p
from faceengine.protocol.model_download import MAX_REQUEST_TTL_S, request_token_split, request_token_verify
from recognition.model_registry import model_file_paths
from recognition.models import ModelVersion

logger = logging.getLogger(__name__)

#: Ids of the access-log records of refused download requests.
DOWNLOAD_REJECT_NAMESPACE = uuid.UUID("5b0f7c1e-8f3a-4d7e-a8c4-2e9d6a1b3f70")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class DownloadRefused(Exception):
    def __init__(self, reason: Reason, message: str, *, status: int, device: EdgeDevice | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.status, self.device = reason, message, status, device


@dataclass(frozen=True)
class BundleFile:
    device: EdgeDevice
    offer: ModelRolloutDevice
    path: Path
    size: int
    sha256: str


def bundle_request_authorize(
    *, header: str | None, method: str, path: str, model_version: str, file_name: str, now: float | None = None
) -> BundleFile:
    """The file a device may fetch, or :class:`DownloadRefused` (recorded by :func:`download_refusal_record`)."""
    now = time.time() if now is None else now
    try:
        request = request_token_split(header)
    except p.ProtocolError as exc:
        raise DownloadRefused(exc.code, exc.message, status=401) from None
    device = EdgeDevice.objects.filter(uid=request.device_uid).first()
    if device is None:
        raise DownloadRefused(Reason.UNKNOWN_DEVICE, f"no device {request.device_uid}", status=401)
    if device.status == EdgeDevice.Status.DISABLED:
        raise DownloadRefused(Reason.DEVICE_DISABLED, "device is disabled", status=403, device=device)
    try:
        request_token_verify(request, device.public_key, method=method, path=path, now=now)
    except p.ProtocolError as exc:
        raise DownloadRefused(exc.code, exc.message, status=401, device=device) from None
    # single use: the nonce is kept until the token could no longer be accepted anyway
    if not cache.add(f"acs:model-dl:nonce:{request.nonce}", 1, timeout=int(MAX_REQUEST_TTL_S) + 5):
        raise DownloadRefused(
            Reason.REPLAY, f"request nonce {request.nonce} was used before", status=401, device=device
        )
    window = int(now // 60)
    key = f"acs:model-dl:rate:{device.uid}:{device.public_key}:{window}"  # per device key (re-provisioned: anew)
    cache.add(key, 0, timeout=120)
    if cache.incr(key) > settings.MODEL_DOWNLOAD_REQUESTS_PER_MIN:
        raise DownloadRefused(
            Reason.RATE_LIMITED,
            f"more than {settings.MODEL_DOWNLOAD_REQUESTS_PER_MIN} download requests this minute",
            status=429,
            device=device,
        )
    offer = download_offer(device=device, model_version=model_version)
    if offer is None:
        raise DownloadRefused(
            Reason.MODEL_NOT_OFFERED, f"no running offer of {model_version} to this device", status=403, device=device
        )
    model = ModelVersion.objects.filter(model_version=model_version).first()
    entry = next((f for f in (model.files if model else []) if f["name"] == file_name), None)
    if model is None or entry is None:
        raise DownloadRefused(
            Reason.MODEL_NOT_OFFERED, f"{file_name} is not a file of {model_version}", status=404, device=device
        )
    file_path = model_file_paths(model).get(file_name)
    if file_path is None or not file_path.is_file() or file_path.stat().st_size != int(entry["size"]):
        logger.error("model %s: file %s missing or altered on this server (%s)", model_version, file_name, file_path)
        raise DownloadRefused(
            Reason.PROCESSING_ERROR, f"{file_name} of {model_version} is not available here", status=503, device=device
        )
    return BundleFile(device=device, offer=offer, path=file_path, size=int(entry["size"]), sha256=entry["sha256"])


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive of a one-range ``Range`` header; None: the whole file. Raises
    ``ValueError`` when it cannot be satisfied (the view answers 416)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match:
        raise ValueError("only one range, bytes=a- or bytes=a-b")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) else size - 1
    if start >= size or end < start:
        raise ValueError(f"range {start}-{end} outside a file of {size} bytes")
    return start, min(end, size - 1)


def download_started(bundle: BundleFile) -> None:
    """The device fetches its offer: shown as downloading until its heartbeat says more."""
    if bundle.offer.status == ModelRolloutDevice.Status.OFFERED:
        ModelRolloutDevice.objects.filter(pk=bundle.offer.pk, status=ModelRolloutDevice.Status.OFFERED).update(
            status=ModelRolloutDevice.Status.DOWNLOADING
        )


def download_refusal_record(refused: DownloadRefused, *, header: str | None, path: str) -> None:
    """Record one refusal in the access log (once per token; rate-limit refusals once a minute)."""
    device = refused.device
    uid = device.uid if device is not None else "unknown"
    if refused.reason == Reason.RATE_LIMITED:
        basis = f"{int(time.time() // 60)}"
    else:
        basis = hashlib.sha256((header or "").encode("utf-8", "replace")).hexdigest()
    rejection_record(
        detection_id=uuid.uuid5(DOWNLOAD_REJECT_NAMESPACE, f"{refused.reason}:{uid}:{path}:{basis}"),
        reason=refused.reason,
        message=refused.message,
        device_uid=uid,
        size=len(header or ""),
        device_id=device.pk if device else None,
        door_id=device.door_id if device else None,
        details={"topic": "model_download", "path": path[:200]},
    )
