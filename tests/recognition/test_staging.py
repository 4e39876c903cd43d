"""Staging: the durable hand-off from the bridge to the decision, and the sweep that recovers lost tasks."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from accessctl.models import Door
from faceengine import protocol as p
from recognition.models import InboundDetection
from recognition.staging import inbound_requeue

pytestmark = pytest.mark.django_db


def test_lost_decisions_are_enqueued_again() -> None:
    door = Door.objects.create(name="Hall")
    sent: list[list[str]] = []
    old = InboundDetection.objects.create(detection_id=p.new_id(), device_uid="hall-1", door=door, payload={})
    InboundDetection.objects.filter(pk=old.pk).update(received_at=timezone.now() - dt.timedelta(minutes=5))
    InboundDetection.objects.create(detection_id=p.new_id(), device_uid="hall-1", payload={})  # fresh: left alone
    assert inbound_requeue(send=sent.append) == 1
    assert sent == [[str(old.detection_id)]]
    assert InboundDetection.objects.get(pk=old.pk).enqueued == 2
