"""Recognition health per door and model version, read from the access log (recognition/health.py),
its alarm, the beat task and the API."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from django.urls import reverse

from accessctl.audit import EventDraft, events_record
from accessctl.codes import Decision, Reason
from accessctl.models import Alarm, Door
from recognition.health import health_evaluate, health_evaluate_all, health_rebaseline
from recognition.models import RecognitionHealth
from recognition.tasks import health_evaluate as health_task
from tests.api_support import make_user, session_client, token_client

pytestmark = pytest.mark.django_db

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # the API and the beat task evaluate at "now"
MODEL = "sface-2021dec-int8bq"
Status = RecognitionHealth.Status


def _decisions(
    door: Door, *, n: int, start: dt.datetime, hours: float, seed: int, mean: float = 0.62, unknown: float = 0.1,
    low_quality: float = 0.0, model_version: str = MODEL,
) -> None:  # fmt: skip
    """``n`` decisions at ``door`` spread over ``hours`` from ``start`` (plus quality-gate refusals)."""
    rng = np.random.default_rng(seed)
    drafts = []
    for i in range(n):
        at = start + dt.timedelta(hours=hours * i / n)
        known = rng.random() >= unknown
        drafts.append(
            EventDraft(
                detection_id=None,
                occurred_at=at,
                door_id=door.pk,
                device_uid="cam-1",
                model_version=model_version,
                decision=Decision.GRANT if known else Decision.DENY,
                reason=Reason.MATCHED if known else Reason.UNKNOWN_FACE,
                similarity=float(rng.normal(mean, 0.07) if known else rng.normal(0.25, 0.08)),
                margin=float(rng.gamma(4.0, 0.06) if known else rng.gamma(1.5, 0.02)),
                threshold=0.4,
            )
        )
        if rng.random() < low_quality:
            drafts.append(
                EventDraft(
                    detection_id=None,
                    occurred_at=at,
                    door_id=door.pk,
                    device_uid="cam-1",
                    decision=Decision.DENY,
                    reason=Reason.LOW_QUALITY,
                )
            )
    events_record(drafts)


def _history(door: Door, *, seed: int = 1) -> None:
    """Ten days of normal traffic before the recent window (600 decisions, 5 % quality refusals)."""
    _decisions(door, n=600, start=NOW - dt.timedelta(days=10), hours=9 * 24, seed=seed, low_quality=0.05)


@pytest.fixture
def door() -> Door:
    return Door.objects.create(name="Main entrance")


def test_a_moved_camera_drifts_and_raises_one_alarm(door: Door) -> None:
    _history(door)
    # The last 6 hours: faces smaller and darker, similarity down, more unknown faces and refusals.
    _decisions(door, n=200, start=NOW - dt.timedelta(hours=5), hours=5, seed=2, mean=0.5, unknown=0.3, low_quality=0.3)
    rows = health_evaluate_all(now=NOW)
    assert [(r.door_id, r.model_version, r.status) for r in rows] == [(door.pk, MODEL, Status.DRIFT)]
    row = rows[0]
    assert row.baseline_count == 600 and row.recent_count == 200
    assert row.baseline_until == NOW - dt.timedelta(hours=6)
    signals = {s["signal"] for s in row.recent["signals"]}
    assert {"similarity", "unknown_rate", "quality_rate"} <= signals
    alarm = Alarm.objects.get(kind=Alarm.Kind.RECOGNITION_DRIFT)
    assert alarm.door_id == door.pk and alarm.details["model_version"] == MODEL and alarm.count == 1
    # Still drifting a quarter of an hour later: the alarm is not repeated.
    again = health_evaluate(door=door, model_version=MODEL, now=NOW + dt.timedelta(minutes=15))
    assert again.status == Status.DRIFT
    assert Alarm.objects.get(kind=Alarm.Kind.RECOGNITION_DRIFT).count == 1


def test_the_drift_alarm_webhook_says_what_drifted_from_what_to_what(door: Door, settings) -> None:
    from accessctl.models import WebhookDelivery, WebhookSubscription

    WebhookSubscription.objects.create(
        name="noc", url="https://noc.example/hook", secret="s", event_types=["alarm.raised"]
    )
    _history(door)
    _decisions(door, n=200, start=NOW - dt.timedelta(hours=5), hours=5, seed=2, mean=0.5, unknown=0.3, low_quality=0.3)
    health_evaluate_all(now=NOW)
    (delivery,) = WebhookDelivery.objects.filter(event_type="alarm.raised")
    payload = delivery.payload
    assert payload["kind"] == "recognition_drift" and payload["door_id"] == door.pk
    details = payload["details"]
    assert details["door_id"] == door.pk and details["door_name"] == "Main entrance"
    assert details["model_version"] == MODEL
    assert {"similarity", "unknown_rate", "quality_rate"} <= set(details["drifted"])
    signals = {s["signal"]: s for s in details["signals"]}
    similarity = signals["similarity"]
    assert similarity["test"] == "psi" and similarity["value"] >= similarity["limit"] == 0.25
    # baseline about 0.62 for the known faces, now about 0.5: the mean and the median moved down
    assert similarity["current"]["mean"] < similarity["baseline"]["mean"] - 0.05
    assert similarity["current"]["p50"] < similarity["baseline"]["p50"]
    assert similarity["baseline"]["n"] == 600 and similarity["current"]["n"] == 200
    unknown = signals["unknown_rate"]
    assert unknown["test"] == "two_proportion_z" and unknown["current"]["rate"] > unknown["baseline"]["rate"] + 0.1
    assert unknown["current"]["n"] == 200 and unknown["baseline"]["n"] == 600
    assert details["baseline_window"]["decisions"] == 600 and details["current_window"]["decisions"] == 200
    assert details["current_window"]["until"] == NOW.isoformat()


def test_a_steady_door_is_ok_and_quiet(door: Door) -> None:
    _history(door)
    _decisions(door, n=200, start=NOW - dt.timedelta(hours=5), hours=5, seed=3, low_quality=0.05)
    assert health_task.run() == 0  # the beat task itself: nothing drifts
    row = RecognitionHealth.objects.get()
    assert row.status == Status.OK, row.recent["signals"]
    assert row.recent["unknown"]["n"] == 200 and 0.0 < row.recent["quality"]["rate"] < 0.15
    assert not Alarm.objects.filter(kind=Alarm.Kind.RECOGNITION_DRIFT).exists()


def test_no_baseline_then_too_few_then_a_verdict(door: Door) -> None:
    _decisions(door, n=50, start=NOW - dt.timedelta(hours=2), hours=1, seed=4)
    assert health_evaluate(door=door, model_version=MODEL, now=NOW).status == Status.NO_BASELINE
    _history(door)
    row = health_evaluate(door=door, model_version=MODEL, now=NOW)
    assert row.status == Status.TOO_FEW and row.baseline_count == 600 and row.recent_count == 50
    # Another model version at the same door has its own row and baseline.
    _decisions(door, n=10, start=NOW - dt.timedelta(hours=1), hours=1, seed=5, model_version="facenet-casia-20180408")
    rows = {r.model_version: r.status for r in health_evaluate_all(now=NOW)}
    assert rows == {MODEL: Status.TOO_FEW, "facenet-casia-20180408": Status.NO_BASELINE}


def test_a_change_of_person_score_rebaselines_instead_of_alarming(door: Door, settings) -> None:
    """Scoring people by another rule moves similarities by design: no drift alarm; the door
    collects a new baseline from the change on."""
    settings.RECOGNITION_PERSON_SCORE = "best_photo"
    _history(door)
    row = health_evaluate(door=door, model_version=MODEL, now=NOW)
    assert row.baseline["person_score"] == "best_photo" and row.status == Status.TOO_FEW
    settings.RECOGNITION_PERSON_SCORE = "mean_template"
    _decisions(door, n=200, start=NOW + dt.timedelta(hours=1), hours=4, seed=2, mean=0.72)
    row = health_evaluate(door=door, model_version=MODEL, now=NOW + dt.timedelta(hours=5))
    assert row.status == Status.NO_BASELINE and row.baseline == {} and row.baseline_from == NOW + dt.timedelta(hours=5)
    assert not Alarm.objects.filter(kind=Alarm.Kind.RECOGNITION_DRIFT).exists()


def test_rebaseline_accepts_the_new_normal(door: Door) -> None:
    _history(door)
    _decisions(door, n=300, start=NOW - dt.timedelta(hours=5), hours=5, seed=6, mean=0.5)
    row = health_evaluate(door=door, model_version=MODEL, now=NOW)
    assert row.status == Status.DRIFT
    operator = make_user(perms=["recognition.change_recognitionhealth"])
    # Too few decisions since the change for a baseline yet: collecting, no alarm either way.
    row = health_rebaseline(row=row, actor=operator, now=NOW)
    assert row.status == Status.NO_BASELINE and row.baseline == {} and row.baseline_set_by == operator
    # Later: 300 more decisions like the last ones; the new baseline is taken from the change on.
    later = NOW + dt.timedelta(hours=3)
    _decisions(door, n=300, start=NOW, hours=2.9, seed=7, mean=0.5)
    row = health_evaluate(door=door, model_version=MODEL, now=later)
    assert row.baseline_count == 600 and row.baseline_from == NOW - dt.timedelta(hours=6)
    assert row.status == Status.OK, row.recent["signals"]
    from accessctl.exceptions import InvalidInput

    with pytest.raises(InvalidInput):
        health_rebaseline(row=row, actor=operator, since=later + dt.timedelta(hours=1), now=later)


def test_api_lists_health_with_a_read_token_and_rebaselines_for_operators_only(
    door: Door, django_assert_max_num_queries, settings
) -> None:
    _history(door)
    _decisions(door, n=200, start=NOW - dt.timedelta(hours=5), hours=5, seed=8, mean=0.5, unknown=0.3)
    row = health_evaluate(door=door, model_version=MODEL, now=NOW)
    url = reverse("api-recognition-health-list")
    client = token_client(["events:read"])
    with django_assert_max_num_queries(8):
        body = client.get(url, {"door": door.pk}).json()
    [item] = body["results"]
    assert item["door_name"] == "Main entrance" and item["status"] == "drift"
    assert {"similarity", "unknown_rate"} <= {s["signal"] for s in item["signals"]}
    assert item["baseline"]["decisions"] == 600 and item["recent"]["similarity"]["mean"] < 0.5
    assert client.get(url, {"since": "yesterday"}).status_code == 400
    rebaseline = reverse("api-recognition-health-rebaseline", args=[row.pk])
    assert token_client().post(rebaseline).status_code == 403  # tokens never re-baseline
    viewer = session_client(make_user(perms=["accessctl.view_accessevent"]))
    assert viewer.get(url).status_code == 200 and viewer.post(rebaseline).status_code == 403
    operator = session_client(make_user(perms=["recognition.change_recognitionhealth"]))
    settings.RECOGNITION_HEALTH_MIN_BASELINE = 150  # the 200 decisions since the change are enough
    answer = operator.post(rebaseline, {"since": (NOW - dt.timedelta(hours=5, minutes=1)).isoformat()})
    assert answer.status_code == 200, answer.content
    assert answer.json()["baseline"]["decisions"] == 200 and answer.json()["status"] == "ok"
    assert operator.post(rebaseline, {"since": "soon"}).status_code == 400


def test_the_beat_task_is_scheduled_and_routed_off_the_decision_queue(settings) -> None:
    from accessctl.project.celery import app

    name = settings.CELERY_BEAT_SCHEDULE["recognition-health"]["task"]
    assert app.tasks[name].name == health_task.name == "recognition.health_evaluate"
    route = app.amqp.router.route({}, name)
    assert route["queue"].name == settings.CELERY_TASK_DEFAULT_QUEUE
    assert app.amqp.router.route({}, "recognition.decide")["queue"].name == settings.RECOGNITION_QUEUE


def test_the_dashboard_tile_shows_the_drift(door: Door, client) -> None:
    from tests.accessctl.helpers import user_create

    _history(door)
    _decisions(door, n=200, start=NOW - dt.timedelta(hours=5), hours=5, seed=2, mean=0.5, unknown=0.3)
    health_evaluate(door=door, model_version=MODEL, now=NOW)
    Door.objects.create(name="Quiet door")  # no health row: shows nothing about recognition
    client.force_login(user_create("guard", "accessctl.view_dashboard"))
    page = client.get(reverse("dashboard")).content.decode()
    assert page.count('class="sub recognition-health') == 1
    assert "Recognition: drifted from the baseline (similarity" in page and "unknown rate" in page
