"""Ed25519 device and server keys (``cryptography`` imported lazily, inside the functions)."""

from __future__ import annotations

import base64
import binascii
import functools
from typing import Any

from faceengine.protocol.codes import Reason
from faceengine.protocol.validation import _b64encode, _fail

_KEY_BYTES = 32


def generate_keypair() -> tuple[str, str]:
    """New Ed25519 key pair: ``(private_key_pem, public_key_b64)`` (lazily imports cryptography).

    The private key is unencrypted PKCS#8 PEM (store it mode 0600); the public key is the raw
    32-byte key in base64, which is what the server stores and what :func:`open_envelope` takes.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return pem, public_key_b64(key)


def load_private_key(key: Any) -> Any:
    """An ``Ed25519PrivateKey`` from PEM (str/bytes), raw 32 bytes, base64 of those, or a key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, str):
        key = key.strip().encode("ascii")
    if isinstance(key, bytes) and key.startswith(b"-----BEGIN"):
        loaded = serialization.load_pem_private_key(key, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("private key is not Ed25519")
        return loaded
    if isinstance(key, bytes) and len(key) != _KEY_BYTES:
        key = base64.b64decode(key, validate=True)
    return Ed25519PrivateKey.from_private_bytes(key)


def public_key_b64(private_key: Any) -> str:
    """Base64 of the raw public key belonging to ``private_key`` (any form :func:`load_private_key` takes)."""
    from cryptography.hazmat.primitives import serialization

    raw = (
        load_private_key(private_key)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return _b64encode(raw)


@functools.lru_cache(maxsize=1024)
def _public_key(public_key_b64: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        raw = base64.b64decode(public_key_b64.encode("ascii"), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise _fail(
            "public key is not base64 of 32 raw Ed25519 bytes",
            Reason.BAD_SIGNATURE,
        ) from None
