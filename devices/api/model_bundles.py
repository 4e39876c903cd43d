"""``GET /api/v1/model-bundles/<model_version>/<file>``: a bundle file for a device that was offered it
(device-signed request, :mod:`devices.model_download`); ``Range`` answers ``206``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.http import require_GET

from devices.model_download import (
    DownloadRefused,
    bundle_request_authorize,
    byte_range,
    download_refusal_record,
    download_started,
)

logger = logging.getLogger(__name__)
_CHUNK = 1 << 16


def _read(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(start)
        left = length
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


@login_not_required
@require_GET
def model_bundle_file(request: HttpRequest, model_version: str, file_name: str) -> HttpResponse:
    header = request.headers.get("Authorization")
    try:
        bundle = bundle_request_authorize(
            header=header, method="GET", path=request.path, model_version=model_version, file_name=file_name
        )
    except DownloadRefused as refused:
        download_refusal_record(refused, header=header, path=request.path)
        logger.warning("model download refused (%s): %s", refused.reason, refused.message)
        return JsonResponse({"error": {"code": str(refused.reason), "message": refused.message}}, status=refused.status)
    try:
        span = byte_range(request.headers.get("Range"), bundle.size)
    except ValueError as exc:
        response = JsonResponse({"error": {"code": "range_not_satisfiable", "message": str(exc)}}, status=416)
        response["Content-Range"] = f"bytes */{bundle.size}"
        return response
    download_started(bundle)
    start, end = span if span is not None else (0, bundle.size - 1)
    length = end - start + 1 if bundle.size else 0
    response = StreamingHttpResponse(
        _read(bundle.path, start, length), status=206 if span else 200, content_type="application/octet-stream"
    )
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = f'"{bundle.sha256}"'
    response["Cache-Control"] = "no-store"
    if span:
        response["Content-Range"] = f"bytes {start}-{end}/{bundle.size}"
    logger.info(
        "model %s: %s bytes %d-%d of %s to device %s",
        model_version, file_name, start, end, bundle.size, bundle.device.uid,
    )  # fmt: skip
    return response
