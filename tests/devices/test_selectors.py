"""The devices app shows its devices on the domain's dashboard tiles through a registered prefetch."""

from __future__ import annotations

import pytest

from accessctl import selectors
from accessctl.models import Door
from devices.models import EdgeDevice
from tests.accessctl.helpers import user_create

pytestmark = pytest.mark.django_db


def test_door_tiles_list_the_enabled_devices_in_one_query_more(django_assert_num_queries) -> None:
    watcher = user_create("wanda", "accessctl.view_dashboard")
    door = Door.objects.create(name="Main")
    for uid, status in (("main-2", "online"), ("main-1", "offline"), ("main-3", "disabled")):
        EdgeDevice.objects.create(uid=uid, door=door, public_key="x", status=status)
    assert selectors.may_watch_dashboard(watcher)  # permissions cached on the user
    # doors, their devices (the registered prefetch), and recognition health (one query for all doors)
    with django_assert_num_queries(3):
        doors = selectors.door_list_with_devices(user=watcher)
        assert [d.uid for d in doors[0].devices.all()] == ["main-1", "main-2"]
