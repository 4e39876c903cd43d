"""An existing database keeps what it had staged when staging moves from devices to recognition."""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.management import call_command

from accessctl.models import Door
from devices.provisioning import device_provision
from tests.accessctl.helpers import owner_execute


@pytest.mark.django_db(transaction=True, databases=["default", "owner"])
def test_staged_rows_move_from_devices_to_recognition() -> None:
    door = Door.objects.create(name="Dock")
    device = device_provision(uid="dock-1", door=door).device
    detection_id = str(uuid.uuid4())
    call_command("migrate", "devices", "0004", database="owner", verbosity=0)
    try:
        owner_execute(
            "INSERT INTO devices_inbounddetection (detection_id, device_id, received_at, payload, crop, enqueued) "
            "VALUES (%s, %s, now(), %s::jsonb, 'crops/x.jpg', 2)",
            [detection_id, device.pk, json.dumps({"mode": "crop"})],
        )
    finally:
        call_command("migrate", database="owner", verbosity=0)
    rows = owner_execute(
        "SELECT detection_id::text, device_uid, device_id, door_id, payload->>'mode', crop, enqueued "
        "FROM recognition_inbounddetection"
    )
    assert rows == [(detection_id, "dock-1", device.pk, door.pk, "crop", "crops/x.jpg", 2)]
    assert owner_execute("SELECT to_regclass('devices_inbounddetection')") == [(None,)]
