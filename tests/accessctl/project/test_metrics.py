"""GET /metrics (issue 22): counters moved by a real decision, every process's values added up,
gauges read from the database at scrape time, and only scrapers with the token or on an allowed
address get an answer."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import time

import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from accessctl.models import AccessGroup, Door, Person
from devices import ingest
from devices.models import EdgeDevice
from devices.provisioning import device_provision
from faceengine import protocol as p
from recognition.detections import detections_decide
from recognition.models import FaceEmbedding
from recognition.queueing import DecisionQueue

pytestmark = pytest.mark.django_db(transaction=True)

SFACE = "sface-2021dec-int8bq"
TOKEN = "metrics-token-0123456789abcdef"


def scrape(client: Client | None = None, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exposition parsed: (sample name, sorted labels) -> value."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _axis(i: int) -> list[float]:
    return [1.0 if j == i else 0.0 for j in range(128)]


@pytest.fixture
def door_device(media_root, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("accessctl.decisions._door_command", lambda event, door, **_: None)
    door = Door.objects.create(name="Lab")
    provisioned = device_provision(uid="lab-1", door=door)
    return provisioned.device, p.load_private_key(provisioned.private_key_pem)


def test_a_real_decision_moves_the_counters_and_the_histograms(door_device) -> None:
    """A signed embedding-mode detection through the bridge's ingest, its batch out through the
    decision queue, decided with a real gallery search: each step shows in the scrape."""
    device, key = door_device
    ada = Person.objects.create(name="Ada")
    group = AccessGroup.objects.create(name="Lab")
    group.people.add(ada)
    group.doors.add(device.door)
    FaceEmbedding.objects.create(person=ada, model_version=SFACE, embedding=_axis(0))
    before = scrape()
    now = time.time()
    detection = p.Detection.with_embedding(
        values=_axis(0), model_version=SFACE, device_uid=device.uid, detection_id=p.new_id(), captured_at=now,
        sent_at=now, detector_score=0.9, box=(0, 0, 120, 120), quality={"face_px": 120.0},
    )  # fmt: skip
    sent: list[str] = []
    with DecisionQueue(send=sent.extend, backlog=lambda: 0) as queue:
        assert ingest.detection_ingest(device_uid=device.uid, raw=p.seal(detection, key), queue=queue) == "staged"
    assert sent == [detection.detection_id]
    staged = scrape()
    assert value(staged, "accessctl_recognition_staged") == 1
    assert value(staged, "accessctl_recognition_oldest_staged_age_seconds") >= 0
    assert detections_decide(sent) == ["matched"]
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("accessctl_decisions_total", decision="grant", reason="matched") == 1
    assert moved("accessctl_decision_latency_seconds_count", mode="embedding") == 1
    assert moved("accessctl_decision_latency_seconds_bucket", mode="embedding", le="+Inf") == 1
    assert moved("accessctl_decision_latency_seconds_sum", mode="embedding") > 0
    assert moved("accessctl_bridge_lag_seconds_count", step="stage") == 1
    assert moved("accessctl_bridge_lag_seconds_count", step="enqueue") == 1
    assert moved("accessctl_gallery_search_seconds_count", model_version=SFACE) == 1
    assert value(after, "accessctl_recognition_staged") == 0
    assert value(after, "accessctl_device_online", device=device.uid) == 1
    assert value(after, "accessctl_device_last_seen_age_seconds", device=device.uid) < 60
    assert value(after, "accessctl_recognition_queue_tasks") >= 0  # nothing is sent to the broker here
    for collector in ("accessctl", "broker", "devices", "heartbeats", "recognition"):
        assert value(after, "accessctl_metrics_collector_up", collector=collector) == 1


def test_rejections_offline_decisions_and_alarms_are_counted(door_device, monkeypatch: pytest.MonkeyPatch) -> None:
    device, key = door_device
    staged: list[str] = []  # an offline decision is staged; the decision task records it
    monkeypatch.setattr(ingest, "decision_enqueue", lambda detection_id, queue=None: staged.append(str(detection_id)))
    before = scrape()
    old = time.time() - 3600
    offline = p.OfflineDecision(action=p.OfflineAction.OPEN, basis="fail_safe", decided_at=old + 0.25)
    late = p.Detection.with_embedding(
        values=_axis(0), model_version=SFACE, device_uid=device.uid, detection_id=p.new_id(), captured_at=old,
        sent_at=old, detector_score=0.9, box=(0, 0, 120, 120), quality={"face_px": 120.0}, offline_decision=offline,
    )  # fmt: skip
    ingest.detection_ingest(device_uid=device.uid, raw=p.seal(late, key))
    assert detections_decide(staged) == ["offline_allowed"]
    forged = p.seal(late, p.load_private_key(device_provision(uid="other-2").private_key_pem))
    ingest.detection_ingest(device_uid=device.uid, raw=forged)
    ingest.detection_ingest(device_uid=device.uid, raw=forged)  # the same bad bytes again: recorded once
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("accessctl_decisions_total", decision="grant", reason="offline_allowed") == 1
    assert moved("accessctl_decision_latency_seconds_count", mode="offline") == 1
    assert moved("accessctl_decision_latency_seconds_sum", mode="offline") == pytest.approx(0.25, abs=1e-3)
    assert moved("accessctl_decisions_total", decision="deny", reason="bad_signature") == 1
    assert moved("accessctl_alarms_raised_total", kind="forged_signature") == 1
    assert value(after, "accessctl_alarms_open", kind="forged_signature") == 1


def test_values_written_in_another_process_are_added_up(test_env) -> None:
    """A worker, the bridge and the web are separate processes: the scrape adds up their files."""
    before = scrape()
    code = (
        "import django; django.setup()\n"
        "from accessctl.metrics import WEBHOOK_DELIVERIES, BRIDGE_LAG\n"
        "WEBHOOK_DELIVERIES.labels('retry').inc(3)\n"
        "BRIDGE_LAG.labels('wait').observe(0.004)\n"
    )
    subprocess.run([sys.executable, "-c", code], env=test_env, check=True, timeout=120)
    from accessctl.metrics import WEBHOOK_DELIVERIES

    WEBHOOK_DELIVERIES.labels("retry").inc()  # and this process's own
    after = scrape()
    assert (
        value(after, "accessctl_webhook_deliveries_total", outcome="retry")
        - value(before, "accessctl_webhook_deliveries_total", outcome="retry")
        == 4
    )
    assert (
        value(after, "accessctl_bridge_lag_seconds_bucket", step="wait", le="0.005")
        - value(before, "accessctl_bridge_lag_seconds_bucket", step="wait", le="0.005")
        == 1
    )


def test_device_gauges_come_from_the_registry_and_the_last_heartbeat(media_root) -> None:
    door = Door.objects.create(name="Front")
    seen = timezone.now() - dt.timedelta(seconds=42)
    EdgeDevice.objects.create(
        uid="front-1", door=door, public_key="x", status=EdgeDevice.Status.ONLINE, last_seen=seen,
        agent_version="1.4.0", model_version=SFACE, last_heartbeat={"spool_depth": 7, "camera_fps": 14.5},
    )  # fmt: skip
    EdgeDevice.objects.create(uid="back-1", public_key="y", status=EdgeDevice.Status.OFFLINE)
    samples = scrape()
    assert value(samples, "accessctl_device_online", device="front-1") == 1
    assert value(samples, "accessctl_device_online", device="back-1") == 0
    assert value(samples, "accessctl_device_last_seen_age_seconds", device="front-1") == pytest.approx(42, abs=5)
    assert ("accessctl_device_last_seen_age_seconds", (("device", "back-1"),)) not in samples  # never seen
    assert value(samples, "accessctl_device_spool_depth", device="front-1") == 7
    assert value(samples, "accessctl_device_camera_fps", device="front-1") == 14.5
    info = {"device": "front-1", "door": "Front", "fail_mode": "secure", "status": "online", "agent_version": "1.4.0",
            "model_version": SFACE}  # fmt: skip
    assert value(samples, "accessctl_device_info", **info) == 1
    assert value(samples, "accessctl_devices", status="offline") == 1


def test_a_failing_collector_is_reported_and_the_rest_still_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from accessctl import metrics

    def broken() -> list:
        raise RuntimeError("database gone")

    monkeypatch.setitem(metrics._collectors, "broken", broken)
    samples = scrape()
    assert value(samples, "accessctl_metrics_collector_up", collector="broken") == 0
    assert value(samples, "accessctl_metrics_collector_up", collector="devices") == 1


def test_a_broker_that_is_down_leaves_the_other_gauges_alone(settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed}/0"
    settings.READY_CHECK_TIMEOUT_S = 0.5
    samples = scrape()
    assert value(samples, "accessctl_metrics_collector_up", collector="broker") == 0
    assert ("accessctl_recognition_queue_tasks", ()) not in samples
    assert value(samples, "accessctl_metrics_collector_up", collector="recognition") == 1


# --------------------------------------------------------------------------- who may scrape


def _status(remote: str = "127.0.0.1", **headers: str) -> int:
    return Client(REMOTE_ADDR=remote).get("/metrics", **headers).status_code


def test_loopback_may_scrape_without_a_token_and_nothing_else_may(settings) -> None:
    settings.METRICS_TOKEN = None
    assert _status("127.0.0.1") == 200
    assert _status("::1") == 200
    assert _status("10.1.2.3") == 403
    assert _status("192.168.0.9") == 403


def test_the_token_opens_it_from_anywhere_a_wrong_one_never(settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    assert _status("10.1.2.3") == 401  # no credentials: asked for them
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics")["WWW-Authenticate"].startswith("Bearer")
    assert _status("10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {TOKEN}") == 200
    assert _status("10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {TOKEN[:-1]}x") == 403
    assert _status("10.1.2.3", HTTP_AUTHORIZATION=f"Bearer {TOKEN}extra") == 403
    assert _status("10.1.2.3", HTTP_AUTHORIZATION=f"Basic {TOKEN}") == 403
    assert _status("10.1.2.3", HTTP_AUTHORIZATION="Bearer ") == 403
    # Wrong credentials are refused even from an allowed address (someone tried, and failed).
    assert _status("127.0.0.1", HTTP_AUTHORIZATION="Bearer guess") == 403


def test_a_token_is_not_accepted_when_none_is_configured(settings) -> None:
    settings.METRICS_TOKEN = None
    assert _status("10.1.2.3", HTTP_AUTHORIZATION="Bearer ") == 403
    assert _status("10.1.2.3", HTTP_AUTHORIZATION="Bearer None") == 403


def test_a_proxied_request_from_loopback_needs_the_token(settings) -> None:
    """Behind a reverse proxy on the same host every request comes from loopback: the proxy's
    headers show it is not the scraper's own address."""
    settings.METRICS_TOKEN = TOKEN
    assert _status("127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7") == 401
    assert _status("127.0.0.1", HTTP_FORWARDED="for=203.0.113.7") == 401
    assert _status("127.0.0.1", HTTP_X_REAL_IP="203.0.113.7") == 401
    assert _status("127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7", HTTP_AUTHORIZATION=f"Bearer {TOKEN}") == 200


def test_allowed_networks_come_from_the_settings(settings) -> None:
    settings.METRICS_TOKEN = None
    settings.METRICS_ALLOW = ["10.0.0.0/8", "fd00::/8"]
    assert _status("10.1.2.3") == 200
    assert _status("fd00::5") == 200
    assert _status("::ffff:10.1.2.3") == 200  # an IPv4 peer on a dual-stack socket
    assert _status("127.0.0.1") == 403
    assert _status("not-an-address") == 403
    settings.METRICS_ALLOW = []
    assert _status("127.0.0.1") == 403


def test_only_get(settings) -> None:
    assert Client().post("/metrics").status_code == 405


@pytest.mark.parametrize(
    ("variable", "bad"), [("ACCESSCTL_METRICS_TOKEN", "short"), ("ACCESSCTL_METRICS_ALLOW", "10.0.0.0/8,intranet")]
)
def test_bad_access_settings_stop_the_process_at_start(test_env, variable: str, bad: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import accessctl.project.settings"],
        env={**test_env, variable: bad},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert variable in result.stderr
