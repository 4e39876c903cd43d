"""The dashboard websocket: only operators get in; they receive events, door states and alarms."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from accessctl.alarms import alarm_acknowledge, alarm_raise
from accessctl.asgi import application
from accessctl.codes import Decision, Reason
from accessctl.consumers import DashboardConsumer
from accessctl.doors import door_lockdown
from accessctl.models import Alarm, Door, Person
from accessctl.realtime import event_broadcast
from tests.accessctl.helpers import event_make, user_create

# Consumers use database_sync_to_async (its own connection handling): use real transactions.
pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://localhost")


def _session_headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [ORIGIN, (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


async def _closed_with(communicator: WebsocketCommunicator) -> int | None:
    connected, _ = await communicator.connect()
    output = await communicator.receive_output(timeout=5)
    await communicator.wait()
    assert output["type"] == "websocket.close", output
    return output.get("code") if connected else None


def test_anonymous_is_refused_with_4403() -> None:
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[ORIGIN])
    assert async_to_sync(_closed_with)(communicator) == 4403


def test_user_without_permission_is_refused_with_4403() -> None:
    user = user_create("nobody")
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=_session_headers(user))
    assert async_to_sync(_closed_with)(communicator) == 4403


def test_foreign_origin_is_refused() -> None:
    user = user_create("olga", "accessctl.view_dashboard")
    headers = [(b"origin", b"http://evil.example"), _session_headers(user)[1]]
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)

    async def run() -> bool:
        connected, _ = await communicator.connect()
        return connected

    assert async_to_sync(run)() is False


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
