"""Devices API: read-only, status filter, no secrets beyond the public key."""

from __future__ import annotations

import pytest

from accessctl.models import Door
from devices.models import EdgeDevice
from tests.api_support import token_client

pytestmark = pytest.mark.django_db

DEVICES = "/api/v1/devices/"


@pytest.fixture
def fleet() -> list[EdgeDevice]:
    door = Door.objects.create(name="Lobby")
    return [
        EdgeDevice.objects.create(
            uid="cam-b", door=door, public_key="PUB-B", status="online", config={"mqtt_password": "hunter2"}
        ),
        EdgeDevice.objects.create(uid="cam-a", public_key="PUB-A", status="offline"),
        EdgeDevice.objects.create(uid="cam-c", public_key="PUB-C", status="disabled"),
    ]


def test_devices_list_and_detail_expose_no_secrets(fleet, django_assert_num_queries) -> None:
    client = token_client(["devices:read"])
    client.get(DEVICES)
    # 2 of them: the token owner's permissions; 1: the devices' unacknowledged revocations (prefetched,
    # the allow-list state is joined): constant, whatever the number of devices
    with django_assert_num_queries(6):
        listed = client.get(DEVICES).json()
    assert [d["uid"] for d in listed["results"]] == ["cam-a", "cam-b", "cam-c"]
    detail = client.get(f"{DEVICES}{fleet[0].pk}/").json()
    assert detail["public_key"] == "PUB-B" and detail["status"] == "online" and detail["door"] == fleet[0].door_id
    assert "config" not in detail and "hunter2" not in str(listed)
    assert not {k for k in detail if "private" in k or "secret" in k}


def test_devices_filters(fleet) -> None:
    client = token_client(["devices:read"])
    assert [d["uid"] for d in client.get(DEVICES, {"status": "online"}).json()["results"]] == ["cam-b"]
    assert [d["uid"] for d in client.get(DEVICES, {"door": fleet[0].door_id}).json()["results"]] == ["cam-b"]
    assert client.get(DEVICES, {"status": "exploded"}).status_code == 400


def test_devices_are_read_only_and_scoped(fleet) -> None:
    assert token_client(["people:read"]).get(DEVICES).status_code == 403
    client = token_client()
    assert client.post(DEVICES, {"uid": "x", "public_key": "y"}, format="json").status_code == 405
    assert client.patch(f"{DEVICES}{fleet[0].pk}/", {"status": "online"}, format="json").status_code == 405
    assert client.delete(f"{DEVICES}{fleet[0].pk}/").status_code == 405
