"""The offline allow-list gauges (issue 22) and the AccessctlAllowlistStale alert that reads them: a
list compiled and pushed for real, acknowledged by a signed heartbeat, then aged, superseded,
refused; the rule's expression evaluated over the scraped values."""

from __future__ import annotations

import datetime as dt
import operator
import re
import time
from pathlib import Path

import pytest
import yaml
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accessctl.models import AccessGroup, Door, Person
from devices import allowlist as al
from devices import health
from devices.models import DeviceAllowlist, EdgeDevice
from devices.provisioning import device_provision
from faceengine import protocol as p
from tests.devices.test_allowlist import MODEL, enrol, heartbeat

pytestmark = pytest.mark.django_db

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"
MAX_AGE = 86_400


def scrape() -> dict[str, dict[str, float]]:
    """Per metric name: device (or "") -> value."""
    response = Client().get("/metrics")
    assert response.status_code == 200
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[sample.labels.get("device", "")] = sample.value
    return out


_OPS = {">": operator.gt, "<": operator.lt, "==": operator.eq}
_CLAUSE = re.compile(
    r"(accessctl_device_allowlist_[a-z_]+)\s*(==|<|>)\s*"
    r"(?:(\d+)|ignoring \(device\) group_left \(\) \(accessctl_allowlist_max_age_seconds / 2\))"
)


def stale_alert() -> dict:
    document = yaml.safe_load(ALERTS.read_text())
    (rule,) = [r for g in document["groups"] for r in g["rules"] if r["alert"] == "AccessctlAllowlistStale"]
    return rule


def firing(samples: dict[str, dict[str, float]]) -> set[str]:
    """The devices AccessctlAllowlistStale's expression selects (``a or b or c`` of comparisons,
    each against a number or half the scraped max age), read from the rule file itself."""
    expr = " ".join(stale_alert()["expr"].split())
    clauses = [c.strip() for c in expr.split(" or ")]
    half = samples["accessctl_allowlist_max_age_seconds"][""] / 2
    devices: set[str] = set()
    for clause in clauses:
        match = _CLAUSE.fullmatch(clause)
        assert match, f"the test reads only simple comparisons: {clause!r}"
        name, op, number = match.groups()
        bound = float(number) if number is not None else half
        devices |= {device for device, v in samples.get(name, {}).items() if _OPS[op](v, bound)}
    return devices


@pytest.fixture
def door_site(settings) -> dict[str, object]:
    settings.ALLOWLIST_MAX_AGE_S = MAX_AGE
    door = Door.objects.create(name="Vault", fail_mode=Door.FailMode.ALLOWLIST)
    secure = Door.objects.create(name="Lobby", fail_mode=Door.FailMode.SECURE)
    group = AccessGroup.objects.create(name="Staff")
    group.doors.add(door)
    people = [Person.objects.create(name=f"P{i}") for i in range(2)]
    group.people.add(*people)
    enrol(people)
    made = {}
    for uid, at in (("vault-1", door), ("vault-2", door), ("lobby-1", secure)):
        provisioned = device_provision(uid=uid, door=at)
        EdgeDevice.objects.filter(pk=provisioned.device.pk).update(model_version=MODEL, status="online")
        provisioned.device.refresh_from_db()
        made[uid] = (provisioned.device, p.load_private_key(provisioned.private_key_pem))
    return made


def _acknowledge(device: EdgeDevice, key: object, version: int | None, expires_at: float | None) -> None:
    beat = heartbeat(device, allowlist_version=version, allowlist_expires_at=expires_at, allowlist_entries=2,
                     offline_mode=p.OfflineMode.ALLOWLIST)  # fmt: skip
    health.heartbeat_ingest(device_uid=device.uid, raw=p.seal(beat, key))


def test_a_fresh_acknowledged_list_is_fine_and_every_way_of_going_stale_alerts(door_site, settings) -> None:
    vault1, key1 = door_site["vault-1"]
    vault2, key2 = door_site["vault-2"]
    for device in (vault1, vault2):
        al.allowlist_push(device)
    v1 = DeviceAllowlist.objects.get(device=vault1)
    assert v1.version >= 1 and v1.expires_at is not None and not v1.refused
    _acknowledge(vault1, key1, v1.version, v1.expires_at.timestamp())
    samples = scrape()
    assert samples["accessctl_allowlist_max_age_seconds"][""] == MAX_AGE
    assert samples["accessctl_device_allowlist_acknowledged"] == {"vault-1": 1.0, "vault-2": 0.0}
    assert samples["accessctl_device_allowlist_age_seconds"]["vault-1"] < 60
    assert samples["accessctl_device_allowlist_expires_in_seconds"]["vault-1"] == pytest.approx(MAX_AGE, abs=60)
    assert "vault-2" not in samples["accessctl_device_allowlist_expires_in_seconds"]  # holds none
    # the secure door's device has no list to be stale; its door's fail mode shows in the info gauge
    for name in ("acknowledged", "age_seconds", "expires_in_seconds"):
        assert "lobby-1" not in samples.get(f"accessctl_device_allowlist_{name}", {})
    assert firing(samples) == {"vault-2"}  # issued, never acknowledged

    # vault-2 acknowledges; vault-1's list was compiled 13 h ago and the beat's reissue never came
    v2 = DeviceAllowlist.objects.get(device=vault2)
    _acknowledge(vault2, key2, v2.version, v2.expires_at.timestamp())
    assert firing(scrape()) == set()
    aged = timezone.now() - dt.timedelta(hours=13)
    DeviceAllowlist.objects.filter(device=vault1).update(issued_at=aged, expires_at=aged + dt.timedelta(days=1))
    _acknowledge(vault1, key1, v1.version, (aged + dt.timedelta(days=1)).timestamp())
    samples = scrape()
    assert samples["accessctl_device_allowlist_age_seconds"]["vault-1"] == pytest.approx(13 * 3600, abs=60)
    assert samples["accessctl_device_allowlist_expires_in_seconds"]["vault-1"] == pytest.approx(11 * 3600, abs=60)
    assert samples["accessctl_device_allowlist_acknowledged"]["vault-1"] == 1
    assert firing(samples) == {"vault-1"}

    # the server reissued (fresh v+1) but vault-1 still reports the old one: unacknowledged and its
    # held list still old
    al.allowlist_push(vault1)
    newer = DeviceAllowlist.objects.get(device=vault1)
    assert newer.version > v1.version
    samples = scrape()
    assert samples["accessctl_device_allowlist_acknowledged"]["vault-1"] == 0
    assert samples["accessctl_device_allowlist_age_seconds"]["vault-1"] < 60
    assert firing(samples) == {"vault-1"}
    _acknowledge(vault1, key1, newer.version, newer.expires_at.timestamp())
    assert firing(scrape()) == set()

    # a refused list (the door stays secure offline) is never "acknowledged"
    DeviceAllowlist.objects.filter(device=vault2).update(refused="no calibrated threshold")
    assert firing(scrape()) == {"vault-2"}
    # a held list past its expiry shows a negative expiry
    past = time.time() - 60
    _acknowledge(vault2, key2, v2.version, past)
    assert scrape()["accessctl_device_allowlist_expires_in_seconds"]["vault-2"] < 0


def test_devices_without_a_list_on_an_allowlist_door_alert_and_disabled_ones_do_not(door_site) -> None:
    samples = scrape()
    assert samples["accessctl_device_allowlist_acknowledged"] == {"vault-1": 0.0, "vault-2": 0.0}
    assert firing(samples) == {"vault-1", "vault-2"}
    EdgeDevice.objects.filter(uid="vault-2").update(status=EdgeDevice.Status.DISABLED)
    assert firing(scrape()) == {"vault-1"}
    info = {
        s.labels["device"]: s.labels["fail_mode"]
        for f in text_string_to_metric_families(Client().get("/metrics").content.decode())
        if f.name == "accessctl_device_info"
        for s in f.samples
    }
    assert info == {"vault-1": "allowlist", "vault-2": "allowlist", "lobby-1": "secure"}


def test_the_rule_waits_before_firing_and_is_a_warning() -> None:
    rule = stale_alert()
    assert rule["labels"]["severity"] == "warning"
    assert rule["for"] == "30m"  # the beat reissues every 10 min; the heartbeat acknowledges within a minute
