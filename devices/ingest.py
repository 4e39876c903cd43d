"""Turn one raw MQTT message into a verified detection task, a heartbeat or a status update."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def message_ingest(topic: str, payload: bytes) -> None:
    """Entry point of the bridge for every message."""
    logger.info("message on %s (%d bytes)", topic, len(payload))
