"""The server's Ed25519 signing key (``SERVER_SIGNING_KEY_FILE``), created on first use.

One key signs what devices and auditors must be able to trust: door commands and offline
allow-lists (``devices/commands.py``), access-log checkpoints (``accessctl/anchoring.py``) and model
manifests (``recognition/model_registry.py``). Each signs a different shape of bytes (manifests add
a context prefix), so a signature made for one is never valid as another.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from django.conf import settings

from faceengine import protocol as p

logger = logging.getLogger(__name__)


def server_signing_key() -> Any:
    """The server's private key (an ``Ed25519PrivateKey``); the file is created, mode 0600, when missing."""
    path = Path(settings.SERVER_SIGNING_KEY_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        private_pem, _ = p.generate_keypair()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(private_pem)
            logger.info("created server signing key %s", path)
    return p.load_private_key(path.read_bytes())


def server_public_key_b64() -> str:
    """Base64 of the raw public half (what devices are given at provisioning)."""
    return p.public_key_b64(server_signing_key())
