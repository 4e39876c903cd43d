"""Dashboard websocket: authenticate, join the dashboard group, forward what ``realtime`` sends.

Only signed-in users with ``accessctl.view_dashboard`` stay connected; everyone else is closed with
code 4403 (after the handshake, so the browser sees the code and stops reconnecting).

The right is not taken for granted after the handshake: it is checked again, afresh from the
session store and the database (``selectors.dashboard_watcher_get``), before every message is
forwarded and every ``DASHBOARD_RECHECK_S`` seconds while nothing arrives. Signing out, an expired
session, a changed password, deactivation or a removed permission closes the socket (4403) at the
next message or within that interval, whichever comes first; no message is forwarded after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accessctl.realtime import DASHBOARD_GROUP, MessageType
from accessctl.selectors import dashboard_watcher_get

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
VIEW_PERMISSION = "accessctl.view_dashboard"


def _session_key(scope: dict[str, Any]) -> str | None:
    session = scope.get("session")
    return getattr(session, "session_key", None) if session is not None else None


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    joined = False
    session_key: str | None = None
    user_id: Any = None
    _recheck: asyncio.Task | None = None

    async def connect(self) -> None:
        await self.accept()
        self.session_key = _session_key(self.scope)
        user = await database_sync_to_async(dashboard_watcher_get)(session_key=self.session_key)
        if user is None:
            logger.info("dashboard websocket refused for user %s", getattr(self.scope.get("user"), "pk", None))
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user_id = user.pk
        await self.channel_layer.group_add(DASHBOARD_GROUP, self.channel_name)
        self.joined = True
        self._recheck = asyncio.create_task(self._recheck_periodically(float(settings.DASHBOARD_RECHECK_S)))
        await self.send_json({"type": "hello", "payload": {"user": user.get_username()}})

    async def disconnect(self, code: int) -> None:
        if self._recheck is not None and self._recheck is not asyncio.current_task():
            self._recheck.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck
        await self._leave()

    async def _leave(self) -> None:
        if self.joined:
            self.joined = False
            await self.channel_layer.group_discard(DASHBOARD_GROUP, self.channel_name)

    async def _still_allowed(self) -> bool:
        """Check the right afresh; close the socket (once) when it is gone."""
        if not self.joined:
            return False
        user = await database_sync_to_async(dashboard_watcher_get)(session_key=self.session_key)
        if user is not None and user.pk == self.user_id:
            return True
        if self.joined:
            await self._leave()
            logger.info("dashboard websocket closed: user %s is no longer allowed to watch", self.user_id)
            await self.close(code=CLOSE_FORBIDDEN)
        return False

    async def _recheck_periodically(self, every_s: float) -> None:
        try:
            while True:
                await asyncio.sleep(every_s)
                if not await self._still_allowed():
                    return
        except Exception:  # fail closed: a check that cannot run keeps no one connected
            logger.exception("dashboard websocket: re-checking user %s failed; closing", self.user_id)
            await self._leave()
            await self.close(code=1011)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The dashboard only listens; actions go through audited HTTP POSTs. Answer pings, ignore the rest.
        if isinstance(content, dict) and content.get("type") == "ping" and await self._still_allowed():
            await self.send_json({"type": "pong", "payload": {}})

    async def _forward(self, message: dict[str, Any]) -> None:
        if await self._still_allowed():
            await self.send_json({"type": message["type"], "payload": message["payload"]})

    # One handler per realtime.MessageType ("access.event" -> access_event).
    access_event = _forward
    door_state = _forward
    device_status = _forward
    alarm_raised = _forward
    alarm_acknowledged = _forward
    alarm_cleared = _forward


assert {t.value.replace(".", "_") for t in MessageType} <= set(vars(DashboardConsumer)), "a MessageType has no handler"
