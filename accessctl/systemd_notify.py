"""Tell systemd how a service is doing (``Type=notify`` units in deploy/systemd), stdlib only.

``systemd_notify("READY=1")`` sends one datagram to ``$NOTIFY_SOCKET`` (the sd_notify protocol);
outside systemd (no such variable) it does nothing. The Celery worker says READY once Celery's
``worker_ready`` fires, the MQTT bridge once it is connected and subscribed.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


def systemd_notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=...``); True when systemd was told."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        logger.warning("could not notify systemd (%s) of %s", os.environ.get("NOTIFY_SOCKET"), state, exc_info=True)
        return False
    return True
