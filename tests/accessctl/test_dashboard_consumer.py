"""The dashboard websocket: only operators get in; they receive events, door states and alarms.

Only the site's own pages may open it (Origin), and it closes once its user loses the right.
"""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group, Permission
from django.test import Client
from django.urls import reverse

from accessctl.alarms import alarm_acknowledge, alarm_raise
from accessctl.codes import Decision, Reason
from accessctl.consumers import DashboardConsumer
from accessctl.doors import door_lockdown
from accessctl.models import Alarm, Door, Person
from accessctl.project.asgi import application
from accessctl.project.origins import origin_is_trusted
from accessctl.realtime import event_broadcast
from tests.accessctl.helpers import event_make, user_create

# Consumers use database_sync_to_async (its own connection handling): use real transactions.
pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")


def _cookie(client: Client) -> tuple[bytes, bytes]:
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def _session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [ORIGIN, HOST, _cookie(client)]


async def _closed_with(communicator: WebsocketCommunicator) -> int | None:
    connected, _ = await communicator.connect()
    output = await communicator.receive_output(timeout=5)
    await communicator.wait()
    assert output["type"] == "websocket.close", output
    return output.get("code") if connected else None


def test_anonymous_is_refused_with_4403() -> None:
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[ORIGIN, HOST])
    assert async_to_sync(_closed_with)(communicator) == 4403


def test_user_without_permission_is_refused_with_4403() -> None:
    user = user_create("nobody")
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=_session_headers(user))
    assert async_to_sync(_closed_with)(communicator) == 4403


def _handshake_accepted(headers: list[tuple[bytes, bytes]]) -> bool:
    async def run() -> bool:
        communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
        connected, _ = await communicator.connect()
        if connected:
            await communicator.disconnect()
        return connected

    return async_to_sync(run)()


@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (b"http://evil.example", b"localhost"),  # another site
        (b"http://localhost:8001", b"localhost:8000"),  # same host name, another port: another origin
        (b"http://localhost", b"localhost:8000"),
        (b"https://localhost:8000", b"localhost:8000"),  # another scheme (served over plain http here)
        (b"http://evil.example:8000", b"evil.example:8000"),  # matches its Host, but not an allowed host
        (b"null", b"localhost"),
    ],
)
def test_foreign_origin_is_refused(origin: bytes, host: bytes) -> None:
    user = user_create("olga", "accessctl.view_dashboard")
    cookie = _session_headers(user)[2]
    assert _handshake_accepted([(b"origin", origin), (b"host", host), cookie]) is False
    control = [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000"), cookie]
    assert _handshake_accepted(control) is True


def test_handshake_without_origin_is_refused() -> None:
    cookie = _session_headers(user_create("olga", "accessctl.view_dashboard"))[2]
    assert _handshake_accepted([HOST, cookie]) is False


def test_configured_trusted_origin_is_accepted(settings) -> None:
    settings.CSRF_TRUSTED_ORIGINS = ["https://ops.example.com", "https://*.guard.example"]
    cookie = _session_headers(user_create("olga", "accessctl.view_dashboard"))[2]
    assert _handshake_accepted([(b"origin", b"https://ops.example.com"), HOST, cookie]) is True
    assert _handshake_accepted([(b"origin", b"https://desk.guard.example"), HOST, cookie]) is True
    assert _handshake_accepted([(b"origin", b"https://ops.example.com:8443"), HOST, cookie]) is False
    assert _handshake_accepted([(b"origin", b"http://ops.example.com"), HOST, cookie]) is False


def test_origin_rules_follow_the_scheme_the_site_is_served_with(settings) -> None:
    settings.ALLOWED_HOSTS = ["acs.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []
    assert origin_is_trusted(origin="https://acs.example.com", host="acs.example.com", secure=True)
    assert not origin_is_trusted(origin="http://acs.example.com", host="acs.example.com", secure=True)
    assert not origin_is_trusted(origin="https://acs.example.com", host="acs.example.com", secure=False)
    assert not origin_is_trusted(origin="https://acs.example.com:444", host="acs.example.com", secure=True)
    assert not origin_is_trusted(origin=None, host="acs.example.com", secure=True)


def test_operator_receives_events_door_states_and_alarms() -> None:
    operator = user_create("olga", "accessctl.view_dashboard", "accessctl.operate_doors")
    door = Door.objects.create(name="Main entrance")
    person = Person.objects.create(name="Ada Lovelace")

    headers = _session_headers(operator)

    async def run() -> list[dict]:
        communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        hello = await communicator.receive_json_from(timeout=5)
        assert hello == {"type": "hello", "payload": {"user": "olga"}}

        def detection() -> None:
            event = event_make(
                door_id=door.pk, person_id=person.pk, decision=Decision.GRANT, reason=Reason.MATCHED,
                similarity=0.71, snapshot="crops/known/2026/03/02/x.jpg",
            )  # fmt: skip
            event.door, event.person = door, person
            event_broadcast(event)

        await database_sync_to_async(detection)()
        received = [await communicator.receive_json_from(timeout=5)]
        await database_sync_to_async(door_lockdown)(door=door, actor=operator)
        received += [await communicator.receive_json_from(timeout=5) for _ in range(2)]
        alarm = await database_sync_to_async(alarm_raise)(kind=Alarm.Kind.WATCHLIST, door=door)
        received.append(await communicator.receive_json_from(timeout=5))
        await database_sync_to_async(alarm_acknowledge)(alarm=alarm, actor=operator)
        received.append(await communicator.receive_json_from(timeout=5))
        # The dashboard only listens: what it sends is ignored (a ping is answered).
        await communicator.send_json_to({"type": "door.state", "payload": {"id": door.pk, "mode": "normal"}})
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from(timeout=5) == {"type": "pong", "payload": {}}
        await communicator.disconnect()
        return received

    received = async_to_sync(run)()
    types = [m["type"] for m in received]
    assert types == ["access.event", "access.event", "door.state", "alarm.raised", "alarm.acknowledged"]
    event = received[0]["payload"]
    assert event["person"] == "Ada Lovelace" and event["door"] == "Main entrance" and event["decision"] == "grant"
    assert event["similarity"] == pytest.approx(0.71)
    assert event["thumbnail_url"] == f"/events/{event['id']}/thumbnail.jpg"
    assert received[1]["payload"]["reason"] == "lockdown"
    assert received[2]["payload"] == {"id": door.pk, "name": "Main entrance", "mode": "lockdown"}
    assert received[3]["payload"]["kind"] == "watchlist" and received[4]["payload"]["acknowledged"] is True
    assert Door.objects.get(pk=door.pk).mode == "lockdown"  # the ignored message changed nothing


def test_every_message_type_has_a_handler() -> None:
    from accessctl.realtime import MessageType

    for message_type in MessageType:
        assert callable(getattr(DashboardConsumer, message_type.value.replace(".", "_")))


# --- the right is checked for as long as the socket is open (issue 15, item 7) -----------------------


async def _connected(headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    assert (await communicator.receive_json_from(timeout=5))["type"] == "hello"
    return communicator


async def _closed_code(communicator: WebsocketCommunicator, timeout: float) -> int | None:
    """The next output must be the close (no event before it); its code."""
    output = await communicator.receive_output(timeout=timeout)
    assert output["type"] == "websocket.close", output
    return output.get("code")


def _broadcast_events(door: Door, count: int) -> None:
    for _ in range(count):
        event = event_make(door_id=door.pk, decision=Decision.DENY, reason=Reason.UNKNOWN_FACE)
        event.door = door
        event_broadcast(event)


def _operator_with_browser() -> tuple[object, Client]:
    operator = user_create("olga", "accessctl.view_dashboard")
    browser = Client()
    browser.force_login(operator)
    return operator, browser


def test_signing_out_closes_the_socket_within_a_second(settings) -> None:
    settings.DASHBOARD_RECHECK_S = 0.2
    _, browser = _operator_with_browser()

    async def run() -> int | None:
        communicator = await _connected([ORIGIN, HOST, _cookie(browser)])
        response = await sync_to_async(browser.post)(reverse("logout"))
        assert response.status_code == 302
        code = await _closed_code(communicator, timeout=3)  # no event needed to notice
        await communicator.wait()
        return code

    assert async_to_sync(run)() == 4403


@pytest.mark.parametrize("revoke", ["logout", "deactivate", "permission", "group", "delete"])
def test_no_event_reaches_a_socket_whose_user_lost_the_right(settings, revoke: str) -> None:
    """Even when the periodic check is far off, the next event finds the right gone and closes instead."""
    settings.DASHBOARD_RECHECK_S = 3600
    door = Door.objects.create(name="Main entrance")
    watcher = user_create("wendy", "accessctl.view_dashboard")  # keeps the right: the witness
    watcher_browser = Client()
    watcher_browser.force_login(watcher)
    operator, browser = _operator_with_browser()
    if revoke == "group":
        operator.user_permissions.clear()
        guards = Group.objects.create(name="guards")
        guards.permissions.add(Permission.objects.get(codename="view_dashboard"))
        operator.groups.add(guards)

    def take_the_right() -> None:
        if revoke == "logout":
            assert browser.post(reverse("logout")).status_code == 302
        elif revoke == "deactivate":
            operator.is_active = False
            operator.save(update_fields=["is_active"])
        elif revoke == "permission":
            operator.user_permissions.remove(Permission.objects.get(codename="view_dashboard"))
        elif revoke == "group":
            operator.groups.clear()
        else:
            operator.delete()

    async def run() -> int | None:
        communicator = await _connected([ORIGIN, HOST, _cookie(browser)])
        witness = await _connected([ORIGIN, HOST, _cookie(watcher_browser)])
        await database_sync_to_async(take_the_right)()
        await database_sync_to_async(_broadcast_events)(door, 20)
        for _ in range(20):  # every event was delivered (to the one still allowed) ...
            assert (await witness.receive_json_from(timeout=5))["type"] == "access.event"
        code = await _closed_code(communicator, timeout=5)  # ... and not one to the other
        await communicator.wait()
        await witness.disconnect()
        return code

    assert async_to_sync(run)() == 4403


@pytest.mark.parametrize("revoke", ["deactivate", "permission"])
def test_losing_the_right_closes_an_idle_socket(settings, revoke: str) -> None:
    settings.DASHBOARD_RECHECK_S = 0.2
    operator, browser = _operator_with_browser()

    def take_the_right() -> None:
        if revoke == "deactivate":
            operator.is_active = False
            operator.save(update_fields=["is_active"])
        else:
            operator.user_permissions.clear()

    async def run() -> int | None:
        communicator = await _connected([ORIGIN, HOST, _cookie(browser)])
        await database_sync_to_async(take_the_right)()
        code = await _closed_code(communicator, timeout=3)
        await communicator.wait()
        return code

    assert async_to_sync(run)() == 4403
