"""Model rollouts (devices/model_rollout.py) and the device-authenticated bundle download
(devices/model_download.py): refusals, canaries, signed offers, progress from heartbeats, pause /
resume / roll back, the API and the admin; forged, expired, replayed and other-device requests."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from django.test import Client

from accessctl.models import AccessEvent, Door, Person
from accessctl.server_key import server_public_key_b64
from devices import health
from devices.model_rollout import RolloutRefused, bundle_url, fleet_model_counts, rollout_create
from devices.models import EdgeDevice, ModelRollout, ModelRolloutDevice
from devices.provisioning import device_provision
from faceengine import protocol as p
from faceengine.backends.sface import SFACE_MODEL_VERSION, default_model_path
from faceengine.protocol.model_download import request_token_sign
from faceengine.protocol.model_manifest import bundle_verify
from recognition.model_registry import model_version_decidable, model_version_register
from recognition.models import EMBEDDING_DIMS, FaceEmbedding, ModelVersion
from tests.accessctl.helpers import user_create
from tests.api_support import token_client
from tests.devices import e2e

pytestmark = pytest.mark.django_db(transaction=True)

NEW = "sface-canary"
Status = ModelRolloutDevice.Status


@pytest.fixture
def candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelVersion:
    """A signed candidate whose weights are a copy of sface's file (served from where it was registered),
    known to the gallery as a 128-dimension version (as a release adds its version to EMBEDDING_DIMS)."""
    monkeypatch.setitem(EMBEDDING_DIMS, NEW, 128)
    copy = tmp_path / "sface-canary.onnx"
    shutil.copyfile(default_model_path(), copy)
    return model_version_register(
        backend="sface", model_version=NEW, options={"model_path": str(copy)}, agent_versions=">=0.1.0"
    )


@pytest.fixture
def fleet() -> dict[str, tuple[EdgeDevice, object]]:
    """Four devices in embedding mode (they report sface) at two doors, and one in crop mode."""
    doors = [Door.objects.create(name="Hall"), Door.objects.create(name="Lab")]
    out = {}
    for uid in ["hall-1", "hall-2", "lab-1", "lab-2", "crop-1"]:
        provisioned = device_provision(uid=uid, door=doors[0] if uid.startswith("hall") else doors[1])
        model = "" if uid.startswith("crop") else SFACE_MODEL_VERSION
        EdgeDevice.objects.filter(uid=uid).update(model_version=model, status=EdgeDevice.Status.ONLINE)
        out[uid] = (EdgeDevice.objects.get(uid=uid), p.load_private_key(provisioned.private_key_pem))
    return out


def heartbeat(uid: str, key: object, *, model: str = SFACE_MODEL_VERSION, **update: object) -> None:
    hb = p.Heartbeat(
        device_uid=uid, sent_at=time.time(), agent_version="0.1.0", model_version=model, camera_fps=10.0,
        spool_depth=0, spool_dropped=0, uptime_s=5.0, temperature_c=None, **update,
    )  # fmt: skip
    health.heartbeat_ingest(device_uid=uid, raw=p.seal(hb, key))


def get(client: Client, path: str, key: object, uid: str, **headers: str) -> object:
    token = request_token_sign(device_uid=uid, path=path, private_key=key)
    return client.get(path, headers={"Authorization": token, **headers})


def refusals(reason: str) -> int:
    return AccessEvent.objects.filter(reason=reason, details__topic="model_download").count()


# --------------------------------------------------------------------------- rollouts


def test_a_version_not_registered_unsigned_or_without_its_gallery_is_refused(candidate, fleet) -> None:
    with pytest.raises(RolloutRefused) as refused:
        rollout_create(model_version="nope")
    assert refused.value.code == "not_registered"
    ModelVersion.objects.filter(model_version="facenet-casia-20180408").update(signature="")
    with pytest.raises(RolloutRefused) as refused:
        rollout_create(model_version="facenet-casia-20180408")
    assert refused.value.code == "unsigned"
    # the active model knows a person the candidate's gallery does not: the server could not decide
    person = Person.objects.create(name="Ada")
    FaceEmbedding.objects.create(person=person, model_version=SFACE_MODEL_VERSION, embedding=np.ones(128) / 128**0.5)
    assert not model_version_decidable(NEW) and model_version_decidable(SFACE_MODEL_VERSION)
    with pytest.raises(RolloutRefused) as refused:
        rollout_create(model_version=NEW)
    assert refused.value.code == "gallery_missing"
    FaceEmbedding.objects.create(person=person, model_version=NEW, embedding=np.ones(128) / 128**0.5)
    assert model_version_decidable(NEW)
    assert rollout_create(model_version=NEW, doors=[fleet["hall-1"][0].door_id]).targets.count() == 2
    # an agent the manifest does not allow (">=0.1.0") is not offered it
    EdgeDevice.objects.filter(uid="lab-1").update(agent_version="0.0.9")
    assert [
        t.device.uid for t in rollout_create(model_version=NEW, doors=[fleet["lab-1"][0].door_id]).targets.all()
    ] == ["lab-2"]
    assert not ModelRollout.objects.exclude(model_version=NEW).exists()


def test_a_canary_offers_the_signed_bundle_to_a_stable_share_of_embedding_devices_and_follows_them(
    candidate, fleet
) -> None:
    host, port = e2e.mqtt_address()
    listener = e2e.CommandListener(host, port, server_public_key_b64())
    try:
        rollout = rollout_create(model_version=NEW, percent=50, note="canary")
        targets = list(rollout.targets.select_related("device"))
        assert len(targets) == 2  # half of the four embedding devices; the crop-mode device never
        assert "crop-1" not in {t.device.uid for t in targets}
        for target in targets:
            with listener._event:
                assert listener._event.wait_for(lambda t=target: t.command_id in listener.commands, 10)
            command = listener.commands[target.command_id]
            assert command.command is p.CommandKind.MODEL_OFFER and command.device_uid == target.device.uid
            assert command.data["url"] == bundle_url(NEW)
            # what the device verifies the bundle with: the server's signature over the registry's manifest
            manifest = bundle_verify(command.data["manifest"], server_public_key_b64(), Path("."), paths={
                "sface-canary.onnx": Path(candidate.options["model_path"])})  # fmt: skip
            assert manifest.model_version == NEW
        with pytest.raises(RolloutRefused) as busy:
            rollout_create(model_version=NEW, devices=[targets[0].device.uid])
        assert busy.value.code == "device_busy"
    finally:
        listener.close()

    first, second = (fleet[t.device.uid] for t in targets)
    heartbeat(first[0].uid, first[1], model_update_version=NEW, model_update_state=p.ModelUpdateState.DOWNLOADING)
    heartbeat(first[0].uid, first[1], model=NEW, model_update_version=NEW, model_update_state="switched")
    heartbeat(second[0].uid, second[1], model_update_version=NEW, model_update_state="failed",
              model_update_reason="self_test_collapsed")  # fmt: skip
    rows = {r.device.uid: r for r in ModelRolloutDevice.objects.select_related("device")}
    assert rows[first[0].uid].status == Status.SWITCHED and rows[first[0].uid].switched_at is not None
    assert rows[first[0].uid].download_started_at is not None
    assert (rows[second[0].uid].status, rows[second[0].uid].reason) == (Status.FAILED, "self_test_collapsed")
    assert ModelRollout.objects.get().state == ModelRollout.State.RUNNING
    assert {r["model_version"]: r["devices"] for r in fleet_model_counts()} == {SFACE_MODEL_VERSION: 3, NEW: 1, "": 1}
    # the failed device is offered again on resume, then switches: the rollout is done
    from devices.model_rollout import rollout_pause, rollout_resume

    rollout_resume(rollout=rollout_pause(rollout=rollout))
    assert ModelRolloutDevice.objects.get(device=second[0]).status == Status.OFFERED
    heartbeat(second[0].uid, second[1], model=NEW, model_update_version=NEW, model_update_state="switched")
    assert ModelRollout.objects.get().state == ModelRollout.State.DONE


def test_an_unanswered_offer_is_sent_again_with_the_devices_next_heartbeat(candidate, fleet) -> None:
    import datetime as dt

    rollout_create(model_version=NEW, devices=["lab-1"])
    row = ModelRolloutDevice.objects.get()
    first = row.command_id
    assert first
    heartbeat("lab-1", fleet["lab-1"][1])  # too soon: not again
    assert ModelRolloutDevice.objects.get().command_id == first
    ModelRolloutDevice.objects.update(offered_at=row.offered_at - dt.timedelta(minutes=5))
    heartbeat("lab-1", fleet["lab-1"][1])  # the device was away: it never answered
    again = ModelRolloutDevice.objects.get()
    assert again.command_id and again.command_id != first and again.status == Status.OFFERED
    heartbeat("lab-1", fleet["lab-1"][1], model_update_version=NEW, model_update_state="downloading")
    assert ModelRolloutDevice.objects.get().status == Status.DOWNLOADING
    # switched, then the fleet is rolled back while the device is away: told again when it is heard from
    heartbeat("lab-1", fleet["lab-1"][1], model=NEW, model_update_version=NEW, model_update_state="switched")
    from devices.model_rollout import rollout_roll_back

    rollout_roll_back(rollout=ModelRollout.objects.get())
    sent = ModelRolloutDevice.objects.get().rollback_sent_at
    ModelRolloutDevice.objects.update(rollback_sent_at=sent - dt.timedelta(minutes=5))
    heartbeat("lab-1", fleet["lab-1"][1], model=NEW, model_update_version=NEW, model_update_state="switched")
    assert ModelRolloutDevice.objects.get().rollback_sent_at > sent - dt.timedelta(minutes=1)
    heartbeat("lab-1", fleet["lab-1"][1], model_update_version=NEW, model_update_state="rolled_back")
    assert ModelRolloutDevice.objects.get().status == Status.ROLLED_BACK


def test_api_starts_pauses_and_rolls_back_for_device_managers_only(candidate, fleet) -> None:
    reader = Client()
    reader.force_login(user_create("reader", "devices.view_edgedevice"))
    assert reader.post("/api/v1/rollouts/", {"model_version": NEW}, content_type="application/json").status_code == 403
    manager = Client()
    manager.force_login(user_create("manager", "devices.view_edgedevice", "devices.change_edgedevice"))
    response = manager.post(
        "/api/v1/rollouts/", {"model_version": NEW, "devices": ["lab-1"]}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    rollout_id = response.json()["id"]
    assert [d["device"] for d in response.json()["devices"]] == ["lab-1"]
    refused = manager.post("/api/v1/rollouts/", {"model_version": "nope"}, content_type="application/json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_registered"
    assert manager.post(f"/api/v1/rollouts/{rollout_id}/pause/").json()["state"] == "paused"
    assert manager.post(f"/api/v1/rollouts/{rollout_id}/rollback/").json()["state"] == "rolled_back"
    assert ModelRolloutDevice.objects.get().rollback_sent_at is not None
    # tokens: devices:write starts one, devices:read only reads
    writer = token_client(["devices:read", "devices:write"])
    created = writer.post("/api/v1/rollouts/", {"model_version": NEW, "devices": ["lab-2"]}, format="json")
    assert created.status_code == 201, created.content
    read_only = token_client(["devices:read"])
    assert read_only.get("/api/v1/rollouts/").status_code == 200
    assert read_only.post(f"/api/v1/rollouts/{created.json()['id']}/rollback/").status_code == 403
    fleet_rows = reader.get("/api/v1/rollouts/fleet/").json()
    assert {"model_version": SFACE_MODEL_VERSION, "devices": 4} in fleet_rows
    assert reader.get(f"/api/v1/rollouts/{rollout_id}/").json()["counts"]["offered"] == 1


def test_admin_lists_devices_per_model_and_starts_a_rollout_through_the_service(admin_client, candidate, fleet) -> None:
    page = admin_client.get("/admin/devices/modelrollout/")
    assert page.status_code == 200 and b"Devices per model version" in page.content
    response = admin_client.post(
        "/admin/devices/modelrollout/add/", {"model_version": NEW, "devices": [fleet["hall-2"][0].pk], "note": ""}
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    rollout = ModelRollout.objects.get()
    assert [t.device.uid for t in rollout.targets.all()] == ["hall-2"]
    assert rollout.created_by_name == "admin"
    bad = admin_client.post("/admin/devices/modelrollout/add/", {"model_version": "nope", "note": ""})
    assert bad.status_code == 200 and b"not registered" in bad.content


# --------------------------------------------------------------------------- download


def test_an_offered_device_downloads_the_bundle_whole_or_resumed_and_others_are_refused(candidate, fleet) -> None:
    rollout_create(model_version=NEW, devices=["hall-1"])
    _device, key = fleet["hall-1"]
    path = bundle_url(NEW).removeprefix("http://127.0.0.1:8000") + "sface-canary.onnx"
    data = Path(candidate.options["model_path"]).read_bytes()
    client = Client()

    whole = get(client, path, key, "hall-1")
    assert whole.status_code == 200 and b"".join(whole.streaming_content) == data
    assert ModelRolloutDevice.objects.get().status == Status.DOWNLOADING
    part = get(client, path, key, "hall-1", Range="bytes=1000-")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert b"".join(part.streaming_content) == data[1000:]
    assert get(client, path, key, "hall-1", Range=f"bytes={len(data)}-").status_code == 416

    # replayed: the same token twice
    token = request_token_sign(device_uid="hall-1", path=path, private_key=key)
    assert client.get(path, headers={"Authorization": token}).status_code == 200
    again = client.get(path, headers={"Authorization": token})
    assert again.status_code == 401 and again.json()["error"]["code"] == "replay"
    # expired, or valid for longer than a request needs
    old = request_token_sign(device_uid="hall-1", path=path, private_key=key, now=time.time() - 120)
    assert client.get(path, headers={"Authorization": old}).json()["error"]["code"] == "stale_timestamp"
    far = request_token_sign(device_uid="hall-1", path=path, private_key=key, ttl_s=3600)
    assert client.get(path, headers={"Authorization": far}).json()["error"]["code"] == "stale_timestamp"
    # forged: hall-1's uid signed with another key
    forger = p.load_private_key(p.generate_keypair()[0])
    forged = get(client, path, forger, "hall-1")
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_signature"
    # signed for another path (a token lifted from one request, used on another file)
    other_path = request_token_sign(device_uid="hall-1", path=path + "x", private_key=key)
    assert client.get(path, headers={"Authorization": other_path}).json()["error"]["code"] == "topic_mismatch"
    # another device with its own valid key, but nothing was offered to it
    _lab, lab_key = fleet["lab-1"]
    other = get(client, path, lab_key, "lab-1")
    assert other.status_code == 403 and other.json()["error"]["code"] == "model_not_offered"
    # no token at all; a file the bundle does not have
    assert client.get(path).status_code == 401
    assert get(client, path.replace("sface-canary.onnx", "secrets.txt"), key, "hall-1").status_code == 404
    # each refusal is in the access log, once
    assert refusals("replay") == 1 and refusals("bad_signature") == 1 and refusals("model_not_offered") == 2
    assert refusals("stale_timestamp") == 2 and refusals("topic_mismatch") == 1
    assert AccessEvent.objects.filter(details__topic="model_download", device_uid="lab-1").exists()


def test_paused_rolled_back_or_over_budget_downloads_are_refused(candidate, fleet, settings) -> None:
    from devices.model_rollout import rollout_pause, rollout_resume

    rollout = rollout_create(model_version=NEW, devices=["hall-1"])
    _device, key = fleet["hall-1"]
    path = bundle_url(NEW).removeprefix("http://127.0.0.1:8000") + "sface-canary.onnx"
    client = Client()
    rollout_pause(rollout=rollout)
    assert get(client, path, key, "hall-1").json()["error"]["code"] == "model_not_offered"
    rollout_resume(rollout=ModelRollout.objects.get())
    settings.MODEL_DOWNLOAD_REQUESTS_PER_MIN = 2  # the refused request above counted too
    first = get(client, path, key, "hall-1", Range="bytes=0-9")
    assert first.status_code == 206 and b"".join(first.streaming_content) == default_model_path().read_bytes()[:10]
    limited = get(client, path, key, "hall-1")
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    EdgeDevice.objects.filter(uid="hall-1").update(status=EdgeDevice.Status.DISABLED)
    assert get(client, path, key, "hall-1").json()["error"]["code"] == "device_disabled"
