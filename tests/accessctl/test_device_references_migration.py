"""A database made when events and alarms had a foreign key to devices migrates to plain references."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from accessctl.models import Alarm, Door
from devices.provisioning import device_provision
from tests.accessctl.helpers import event_make, owner_execute

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "owner"])

FOREIGN_KEYS = (
    "SELECT count(*) FROM pg_constraint c JOIN pg_class t ON t.oid = c.confrelid "
    "WHERE c.contype = 'f' AND t.relname = 'devices_edgedevice' "
    "AND c.conrelid IN ('accessctl_accessevent'::regclass, 'accessctl_alarm'::regclass)"
)


def test_foreign_keys_to_devices_are_dropped_and_alarms_get_the_uid() -> None:
    device = device_provision(uid="dock-1", door=Door.objects.create(name="Dock")).device
    event = event_make(device_id=device.pk, device_uid=device.uid)
    call_command("migrate", "accessctl", "0011", database="owner", verbosity=0)
    try:
        # What 0002 and 0004 made before: foreign keys from the domain's tables to the registry.
        for table in ("accessctl_accessevent", "accessctl_alarm"):
            owner_execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {table}_device_fk FOREIGN KEY (device_id) "
                "REFERENCES devices_edgedevice (id) DEFERRABLE INITIALLY DEFERRED"
            )
        owner_execute(
            "INSERT INTO accessctl_alarm (kind, door_id, device_id, raised_at, last_seen_at, count, details) "
            "VALUES ('device_offline', NULL, %s, now(), now(), 1, '{}')",
            [device.pk],
        )
        assert owner_execute(FOREIGN_KEYS) == [(2,)]
    finally:
        call_command("migrate", database="owner", verbosity=0)
    assert owner_execute(FOREIGN_KEYS) == [(0,)]
    assert list(Alarm.objects.values_list("device_id", "device_uid")) == [(device.pk, "dock-1")]
    event.refresh_from_db()
    assert (event.device_id, event.device_uid) == (device.pk, "dock-1")
