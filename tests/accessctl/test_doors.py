"""Operator door actions: audited, permission-checked, broadcast and pushed to the devices."""

from __future__ import annotations

import json
import threading

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from accessctl import realtime
from accessctl.codes import Decision, Reason
from accessctl.doors import DoorActionError, door_lockdown, door_lockdown_lift, door_unlock
from accessctl.models import AccessEvent, Door
from devices.models import EdgeDevice
from faceengine import protocol
from tests.accessctl.helpers import user_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """Realtime messages, as the channel layer would receive them."""
    messages: list[tuple[str, dict]] = []
    monkeypatch.setattr(realtime, "_send", lambda kind, payload: messages.append((str(kind), payload)))
    return messages


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str, dict]]:
    calls: list[tuple[int, str, dict]] = []

    def fake(door_id: int, kind: protocol.CommandKind, **kwargs: object) -> int:
        calls.append((door_id, str(kind), kwargs))
        return 1

    monkeypatch.setattr("devices.commands.door_command_send", fake)
    return calls


@pytest.fixture
def operator():
    return user_create("olga", "accessctl.view_dashboard", "accessctl.operate_doors")


@pytest.fixture
def doors() -> list[Door]:
    return [Door.objects.create(name="Main entrance", relay_pulse_ms=2500), Door.objects.create(name="Loading dock")]


def test_unlock_is_audited_broadcast_and_sent_after_commit(
    operator, doors, sent, commands, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        event = door_unlock(door=doors[0], actor=operator)
    event = AccessEvent.objects.get(pk=event.pk)
    assert (event.source, event.decision, event.reason) == ("operator", Decision.GRANT, Reason.REMOTE_UNLOCK)
    assert event.actor_id == operator.pk and event.door_id == doors[0].pk
    assert event.details["action"] == "remote_unlock"
    assert commands == [(doors[0].pk, "open", {"reason": Reason.REMOTE_UNLOCK, "pulse_ms": 2500})]
    assert [kind for kind, _ in sent] == ["access.event"]
    assert sent[0][1]["door"] == "Main entrance" and sent[0][1]["reason"] == "remote_unlock"


def test_nothing_is_sent_when_the_transaction_rolls_back(operator, doors, sent, commands) -> None:
    # Without executing on-commit callbacks (the test transaction never commits) nothing leaves.
    door_unlock(door=doors[0], actor=operator)
    assert sent == [] and commands == []


def test_actions_need_the_operate_permission(doors, commands) -> None:
    watcher = user_create("wanda", "accessctl.view_dashboard")
    for action in (
        lambda: door_unlock(door=doors[0], actor=watcher),
        lambda: door_lockdown(actor=watcher),
        lambda: door_lockdown_lift(door=doors[0], actor=watcher),
    ):
        with pytest.raises(PermissionDenied):
            action()
    assert AccessEvent.objects.count() == 0
    assert set(Door.objects.values_list("mode", flat=True)) == {"normal"}


def test_unlock_is_refused_during_lockdown(operator, doors, commands) -> None:
    door_lockdown(door=doors[0], actor=operator)
    with pytest.raises(DoorActionError):
        door_unlock(door=doors[0], actor=operator)
    assert not AccessEvent.objects.filter(reason=Reason.REMOTE_UNLOCK).exists()


def test_lockdown_of_all_doors_and_lift(operator, doors, sent, commands, django_capture_on_commit_callbacks) -> None:
    held = Door.objects.create(name="Lobby", mode=Door.Mode.HELD_OPEN)
    with django_capture_on_commit_callbacks(execute=True):
        changed = door_lockdown(actor=operator)
    assert {d.pk for d in changed} == {doors[0].pk, doors[1].pk, held.pk}
    assert set(Door.objects.values_list("mode", flat=True)) == {"lockdown"}
    events = AccessEvent.objects.filter(details__action="lockdown")
    assert events.count() == 3 and {e.details["scope"] for e in events} == {"all"}
    assert all(e.source == "operator" and e.actor_id == operator.pk and e.decision == "deny" for e in events)
    assert sorted(c[0] for c in commands if c[1] == "lockdown") == sorted(d.pk for d in changed)
    door_states = [p for kind, p in sent if kind == "door.state"]
    assert {(p["id"], p["mode"]) for p in door_states} == {(d.pk, "lockdown") for d in changed}

    # Locking down again changes nothing and records nothing.
    assert door_lockdown(actor=operator) == []
    assert AccessEvent.objects.filter(details__action="lockdown").count() == 3

    commands.clear()
    with django_capture_on_commit_callbacks(execute=True):
        lifted = door_lockdown_lift(door=doors[1], actor=operator)
    assert [d.pk for d in lifted] == [doors[1].pk]
    assert commands == [(doors[1].pk, "lift_lockdown", {"reason": Reason.LOCKDOWN_LIFTED, "pulse_ms": 0})]
    lift_event = AccessEvent.objects.get(details__action="lockdown_lift")
    assert lift_event.details["previous_mode"] == "lockdown" and lift_event.door_id == doors[1].pk
    door_lockdown_lift(actor=operator)
    assert set(Door.objects.values_list("mode", flat=True)) == {"normal"}


def test_lift_leaves_held_open_doors_alone(operator, commands) -> None:
    held = Door.objects.create(name="Lobby", mode=Door.Mode.HELD_OPEN)
    assert door_lockdown_lift(door=held, actor=operator) == []
    held.refresh_from_db()
    assert held.mode == Door.Mode.HELD_OPEN


def test_lockdown_command_reaches_the_device_over_mqtt(
    operator, doors, django_capture_on_commit_callbacks, settings
) -> None:
    """The real broker and the real signer: a device subscribed to its topic gets a signed command."""
    from devices.commands import publisher, server_public_key_b64
    from devices.mqtt import broker_address
    from tests.broker_logins import device_client, device_login_issue

    device = EdgeDevice.objects.create(uid="cam-main-1", door=doors[0], public_key="x", status="online")
    received: list[bytes] = []
    subscribed, arrived = threading.Event(), threading.Event()
    client, address = device_client("cam-main-1", device_login_issue(device), clean_session=True), broker_address()
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = lambda c, u, msg: (received.append(msg.payload), arrived.set())
    client.on_connect = lambda c, *args: c.subscribe(protocol.commands_topic("cam-main-1"), qos=1)
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        assert subscribed.wait(10)
        with django_capture_on_commit_callbacks(execute=True):
            door_lockdown(door=doors[0], actor=operator)
        assert arrived.wait(10)
    finally:
        client.loop_stop()
        client.disconnect()
        publisher.close()
    payload = protocol.open_envelope(received[0], server_public_key_b64())
    assert payload["command"] == "lockdown" and payload["device_uid"] == "cam-main-1"
    assert json.dumps(payload)  # plain JSON


# --- the HTTP adapters -------------------------------------------------------------------------


def test_door_views_need_post_csrf_and_permission(operator, doors, commands) -> None:
    url = reverse("door_lockdown", args=[doors[0].pk])
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 403  # no CSRF token
    client.get(reverse("dashboard"))  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(url, HTTP_X_CSRFTOKEN=token, HTTP_ACCEPT="application/json")
    assert response.status_code == 200 and response.json()["ok"] is True
    doors[0].refresh_from_db()
    assert doors[0].mode == "lockdown"

    unlock = client.post(
        reverse("door_unlock", args=[doors[0].pk]), HTTP_X_CSRFTOKEN=token, HTTP_ACCEPT="application/json"
    )
    assert unlock.status_code == 409 and "locked down" in unlock.json()["message"]

    watcher = Client()
    watcher.force_login(user_create("wanda", "accessctl.view_dashboard"))
    assert watcher.post(reverse("door_lockdown_all")).status_code == 403
    assert watcher.post(reverse("door_unlock", args=[doors[1].pk])).status_code == 403


def test_door_view_without_javascript_redirects_with_a_message(operator, doors, commands, client) -> None:
    client.force_login(operator)
    response = client.post(reverse("door_lockdown_all"), follow=True)
    assert response.redirect_chain[-1][0] == reverse("dashboard")
    assert "All doors locked down." in response.content.decode()
    response = client.post(reverse("door_lockdown_lift_all"), follow=True)
    assert set(Door.objects.values_list("mode", flat=True)) == {"normal"}
