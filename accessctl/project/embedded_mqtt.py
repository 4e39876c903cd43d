"""The embedded MQTT broker (amqtt 0.12), admitting only the identities in the server's files.

Run by ``accessctl.project.embedded.start_mqtt_broker`` as ``python -m accessctl.project.embedded_mqtt <config>``.
:class:`FileAuthPlugin` checks logins and topics against the password/ACL files described in
``accessctl.project.mqtt_identities`` (the same files a real Mosquitto reads), reloads them when they
change and disconnects identities that were revoked. amqtt itself is patched in :class:`GuardedBroker`:

* it looked up (and with clean_session, deleted) the session of a client id *before* checking the
  password, and took an authenticated session over for any client presenting its id: now a client
  is authenticated (and its client id checked against its identity) before any session is touched;
* on every connect it sent the retained messages matching *every* client's subscriptions, not the
  connecting client's (so an agent received the other devices' retained status): now a client gets
  retained messages only for its own subscriptions (MQTT 3.1.1, 3.3.1.3).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import BAD_USERNAME_PASSWORD, IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import format_client_message, gen_client_id

from accessctl.project.mqtt_identities import Identities, password_verify

logger = logging.getLogger(__name__)


class FileAuthPlugin(BaseAuthPlugin, BaseTopicPlugin):
    """Authenticates against the password files and filters topics with the ACL files."""

    @dataclass
    class Config:
        auth_dir: str = ""
        extra_dir: str = ""

    def __init__(self, context: object) -> None:
        super().__init__(context)  # type: ignore[call-arg]
        self.identities = Identities(
            auth_dir=Path(self.config.auth_dir),
            extra_dir=Path(self.config.extra_dir) if self.config.extra_dir else None,
        )
        self.identities.refresh()
        self._verified: dict[tuple[str, str], str] = {}  # (username, password) -> hash it verified against

    def check_login(self, session: Session) -> tuple[bool, int]:
        """(accepted, CONNACK code when refused) for a CONNECT; also checks the will's topic."""
        self.identities.refresh()
        username, password, client_id = session.username, session.password, session.client_id or ""
        realm = self.identities.login(username, password, client_id)
        if realm is None:
            known = self.identities.realm_of(username)
            verified = known is not None and password is not None and password_verify(password, known.users[username])
            return False, (IDENTIFIER_REJECTED if verified else BAD_USERNAME_PASSWORD)
        if session.will_flag and not realm.acl.may_publish(username, client_id, session.will_topic or ""):
            return False, NOT_AUTHORIZED
        return True, 0

    def still_valid(self, session: Session) -> bool:
        realm = self.identities.realm_of(session.username)
        return (
            realm is not None
            and session.password is not None
            and realm.client_id_allowed(session.username, session.client_id or "")
            and self._verify_cached(session.username, session.password, realm.users[session.username])
        )

    def _verify_cached(self, username: str, password: str, hashed: str) -> bool:
        if self._verified.get((username, password)) == hashed:
            return True
        if password_verify(password, hashed):
            self._verified[(username, password)] = hashed
            return True
        return False

    async def authenticate(self, *, session: Session) -> bool | None:
        return self.check_login(session)[0]

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None:
            return False
        # no refresh here (every delivery passes): the watcher reloads changed files within 0.5 s
        realm = self.identities.realm_of(session.username)
        if realm is None or not self.still_valid(session):
            return False
        client_id = session.client_id or ""
        if action == Action.PUBLISH:
            return realm.acl.may_publish(session.username, client_id, topic)
        if action == Action.SUBSCRIBE:
            return realm.acl.may_subscribe(session.username, client_id, topic)
        if action == Action.RECEIVE:  # each message delivered, as Mosquitto checks read access
            return realm.acl.may_read(session.username, client_id, topic)
        return False


class GuardedBroker(Broker):
    """amqtt's broker, authenticating before it touches a session (see the module docstring)."""

    def _auth_plugin(self) -> FileAuthPlugin:
        for plugin in self.plugins_manager.plugins:
            if isinstance(plugin, FileAuthPlugin):
                return plugin
        raise RuntimeError("FileAuthPlugin is not configured")

    async def _initialize_client_session(self, reader, writer, remote_address, remote_port):  # type: ignore[no-untyped-def]
        try:
            handler, client_session = await BrokerProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except AMQTTError as exc:
            raise AMQTTError(exc) from exc
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        peer = format_client_message(address=remote_address, port=remote_port)
        accepted, code = self._auth_plugin().check_login(client_session)
        if not accepted:
            logger.warning(
                "refused client %r (user %r) from %s: code %d",
                client_session.client_id,
                client_session.username,
                peer,
                code,
            )
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            raise MQTTError(f"client {client_session.client_id!r} refused")
        # From here on as amqtt 0.12.1, for an authenticated client only.
        if client_session.clean_session:
            if client_session.client_id:
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            existing.will_flag = client_session.will_flag
            existing.will_message = client_session.will_message
            existing.will_topic = client_session.will_topic
            existing.will_qos = client_session.will_qos
            existing.will_retain = client_session.will_retain
            existing.keep_alive = client_session.keep_alive
            existing.username = client_session.username
            existing.password = client_session.password
            client_session = existing
            client_session.parent = 1
        else:
            client_session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if client_session.keep_alive > 0 and isinstance(delay, int):
            client_session.keep_alive += delay
        return handler, client_session

    async def _publish_retained_messages_for_subscription(self, subscription, session):  # type: ignore[no-untyped-def]
        # amqtt calls this on connect for every filter any client subscribed to; a subscription
        # of this session's own is what MQTT asks for (and a resumed session gets none).
        topic_filter = subscription[0]
        if not any(s.client_id == session.client_id for s, _ in self._subscriptions.get(topic_filter, [])):
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)

    async def identities_watch(self, interval_s: float = 0.5) -> None:
        """Reload the identity files when they change; disconnect whoever is no longer allowed."""
        plugin = self._auth_plugin()
        seen = plugin.identities.generation
        while True:
            await asyncio.sleep(interval_s)
            try:
                plugin.identities.refresh()  # a login may have reloaded them already
                if plugin.identities.generation != seen:
                    seen = plugin.identities.generation
                    await self._revoked_disconnect(plugin)
            except Exception:
                logger.exception("reloading the broker identities failed")

    async def _revoked_disconnect(self, plugin: FileAuthPlugin) -> None:
        for client_id, (session, handler) in list(self._sessions.items()):
            if plugin.still_valid(session):
                continue
            logger.warning("identity %r (client %r) revoked: disconnecting it", session.username, client_id)
            session.will_flag = False
            if session.transitions.is_connected():
                await handler.handle_connection_closed()
                await handler.stop()
            await self._delete_session(client_id)
            if plugin.identities.realm_of(session.username) is None:
                prefix = f"acs/v1/devices/{session.username}/"
                for topic in [t for t in self._retained_messages if t.startswith(prefix)]:
                    del self._retained_messages[topic]


def main(argv: list[str] | None = None) -> None:
    """``python -m accessctl.project.embedded_mqtt <config.yaml>``: run the guarded broker."""
    from amqtt.utils import read_yaml_config

    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    config = read_yaml_config(args[0])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    broker = GuardedBroker(config, loop=loop)
    loop.run_until_complete(broker.start())
    watcher = loop.create_task(broker.identities_watch())
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.cancel()
        loop.run_until_complete(broker.shutdown())
        loop.close()


if __name__ == "__main__":
    # Run the imported module's main: the plugin amqtt loads by name must be the same class.
    from accessctl.project.embedded_mqtt import main as _main

    _main()
