"""Dashboard websocket: authenticate, join the dashboard group, forward what ``realtime`` sends.

Only signed-in users with ``accessctl.view_dashboard`` stay connected; everyone else is closed with
code 4403 (after the handshake, so the browser sees the code and stops reconnecting).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accessctl.realtime import DASHBOARD_GROUP, MessageType

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
VIEW_PERMISSION = "accessctl.view_dashboard"


@database_sync_to_async
def _may_watch(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.has_perm(VIEW_PERMISSION))


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    joined = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if not await _may_watch(user):
            logger.info("dashboard websocket refused for user %s", getattr(user, "pk", None))
            await self.close(code=CLOSE_FORBIDDEN)
            return
        await self.channel_layer.group_add(DASHBOARD_GROUP, self.channel_name)
        self.joined = True
        await self.send_json({"type": "hello", "payload": {"user": user.get_username()}})

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(DASHBOARD_GROUP, self.channel_name)
            self.joined = False

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The dashboard only listens; actions go through audited HTTP POSTs. Answer pings, ignore the rest.
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong", "payload": {}})

    async def _forward(self, message: dict[str, Any]) -> None:
        if self.joined:
            await self.send_json({"type": message["type"], "payload": message["payload"]})

    # One handler per realtime.MessageType ("access.event" -> access_event).
    access_event = _forward
    door_state = _forward
    device_status = _forward
    alarm_raised = _forward
    alarm_acknowledged = _forward


assert {t.value.replace(".", "_") for t in MessageType} <= set(vars(DashboardConsumer)), "a MessageType has no handler"
