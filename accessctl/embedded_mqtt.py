"""amqtt plugin for the embedded MQTT broker (loaded by the broker process, see ``accessctl.embedded``).

amqtt's ``AnonymousAuthPlugin`` marks every client anonymous, and amqtt drops an anonymous
client's session on disconnect: a persistent subscriber (the bridge, clean_session False) would
lose its subscriptions and every QoS1 message published while it was away. The embedded broker
listens on loopback only, so it accepts every client as a named, non-anonymous session instead.
Real deployments use Mosquitto/EMQX/IoT Core with TLS client certificates or passwords.
"""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


class LoopbackAuthPlugin(BaseAuthPlugin):
    """Accept every client, keeping its session (not anonymous) so persistent sessions persist."""

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = False
        return True
