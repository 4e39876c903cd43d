"""Device-signed request tokens (faceengine/protocol/model_download.py) and the heartbeat's model update fields."""

from __future__ import annotations

import base64
import json
import time

import pytest

from faceengine import protocol as p
from faceengine.protocol.model_download import (
    AUTH_SCHEME,
    MAX_REQUEST_TTL_S,
    request_token_sign,
    request_token_split,
    request_token_verify,
)

PATH = "/api/v1/model-bundles/v2/weights.onnx"


@pytest.fixture(scope="module")
def device() -> tuple[str, str]:
    return p.generate_keypair()


def _verify(header: str, public: str, **kw: object) -> p.ProtocolError | None:
    try:
        request_token_verify(request_token_split(header), public, **{"method": "GET", "path": PATH, **kw})
    except p.ProtocolError as exc:
        return exc
    return None


def test_a_token_verifies_for_its_device_method_path_and_time_only(device) -> None:
    private, public = device
    header = request_token_sign(device_uid="door-1", path=PATH, private_key=private)
    request = request_token_split(header)
    assert (request.device_uid, request.path, request.method, request.purpose) == (
        "door-1", PATH, "GET", "model_download"
    )  # fmt: skip
    assert _verify(header, public) is None
    assert _verify(header, p.generate_keypair()[1]).code is p.Reason.BAD_SIGNATURE
    assert _verify(header, public, path=PATH + "x").code is p.Reason.TOPIC_MISMATCH
    assert _verify(header, public, method="POST").code is p.Reason.TOPIC_MISMATCH
    assert _verify(header, public, now=time.time() + 120).code is p.Reason.STALE_TIMESTAMP
    long_lived = request_token_sign(device_uid="door-1", path=PATH, private_key=private, ttl_s=MAX_REQUEST_TTL_S + 60)
    assert _verify(long_lived, public).code is p.Reason.STALE_TIMESTAMP


def test_a_tampered_or_foreign_envelope_is_not_a_token(device) -> None:
    private, public = device
    header = request_token_sign(device_uid="door-1", path=PATH, private_key=private)
    raw = base64.urlsafe_b64decode(header.split(" ", 1)[1] + "==")
    doc = json.loads(raw)
    doc["payload"]["path"] = "/api/v1/model-bundles/v2/other.onnx"  # the signature no longer covers it
    forged = f"{AUTH_SCHEME} " + base64.urlsafe_b64encode(p.canonical_json(doc)).decode().rstrip("=")
    assert _verify(forged, public, path=doc["payload"]["path"]).code is p.Reason.BAD_SIGNATURE
    # a signed heartbeat of the same device is never a token (no purpose, other keys)
    beat = p.Heartbeat(device_uid="door-1", sent_at=time.time(), agent_version="0.1.0", model_version=None,
                       camera_fps=1.0, spool_depth=0, spool_dropped=0, uptime_s=1.0)  # fmt: skip
    as_token = f"{AUTH_SCHEME} " + base64.urlsafe_b64encode(p.seal(beat, private)).decode().rstrip("=")
    with pytest.raises(p.ProtocolError) as refused:
        request_token_split(as_token)
    assert refused.value.code is p.Reason.MALFORMED
    for header in (None, "", "Bearer abc", f"{AUTH_SCHEME} !!!", f"{AUTH_SCHEME} " + "A" * 5000):
        with pytest.raises(p.ProtocolError):
            request_token_split(header)


def test_heartbeat_carries_model_update_progress_and_refuses_unknown_states() -> None:
    beat = p.Heartbeat(
        device_uid="door-1", sent_at=time.time(), agent_version="0.1.0", model_version="v2", camera_fps=1.0,
        spool_depth=0, spool_dropped=0, uptime_s=1.0, model_update_version="v2",
        model_update_state=p.ModelUpdateState.FAILED, model_update_reason="self_test_collapsed",
    )  # fmt: skip
    data = beat.to_dict()
    assert data["model_update_state"] == "failed"
    assert p.Heartbeat.from_dict(data) == beat
    assert "model_update_state" not in p.Heartbeat.from_dict({**data, "model_update_state": None}).to_dict()
    with pytest.raises(p.ProtocolError):
        p.Heartbeat.from_dict({**data, "model_update_state": "exploded"})
    with pytest.raises(p.ProtocolError):
        p.Heartbeat.from_dict({**data, "model_update_reason": "Not A Code!"})
