"""The backup archive's encryption: a passphrase, scrypt, AES-256-GCM in authenticated segments.

A backup holds the site's face images, its gallery and the server's signing key: whoever reads it
can impersonate the server to every door. So it is encrypted before it leaves the machine, with
a key derived from an operator's passphrase (scrypt, random salt), in segments of
:data:`SEGMENT_BYTES` so that a many-gigabyte archive streams in constant memory:

    MAGIC | header length (4 bytes, big endian) | header JSON | segment | segment | ...
    segment = ciphertext length (4 bytes) | AES-256-GCM(key, nonce, plaintext, aad=header)
    nonce   = 7-byte random prefix | 4-byte segment counter | 1 byte: 1 on the last segment, else 0

Every segment is authenticated together with the header (the KDF parameters cannot be swapped),
the counter fixes their order (no segment can be dropped, repeated or moved), and the last-segment
flag makes a truncated archive an error instead of a shorter backup (the STREAM construction).
"""

from __future__ import annotations

import base64
import json
import os
import struct
from typing import IO, Any

MAGIC = b"ACCESSCTL-BACKUP\x01"
SEGMENT_BYTES = 1 << 20
#: scrypt cost (2**15, r 8: ~32 MiB and ~0.1 s per derivation on a small server)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 15, 8, 1
MIN_PASSPHRASE = 12
_MAX_HEADER = 4096


class BackupCryptoError(ValueError):
    """Wrong passphrase, a damaged or truncated archive, or not an archive at all."""


def _key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 2**32:
        raise BackupCryptoError("archive too large (2**32 segments)")
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


class EncryptingWriter:
    """A write-only file object: what is written reaches ``raw`` encrypted (call :meth:`close`)."""

    def __init__(self, raw: IO[bytes], passphrase: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(passphrase) < MIN_PASSPHRASE:
            raise BackupCryptoError(f"the backup passphrase must have at least {MIN_PASSPHRASE} characters")
        salt, self._prefix = os.urandom(16), os.urandom(7)
        header = {
            "kdf": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(),
            "nonce_prefix": base64.b64encode(self._prefix).decode(),
            "cipher": "AES-256-GCM",
            "segment": SEGMENT_BYTES,
        }
        self._header = json.dumps(header, sort_keys=True).encode()
        self._aead = AESGCM(_key(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))
        self._raw = raw
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        self.bytes_written = 0
        self._emit(MAGIC + struct.pack(">I", len(self._header)) + self._header)

    def _emit(self, data: bytes) -> None:
        self._raw.write(data)
        self.bytes_written += len(data)

    def _segment(self, plain: bytes, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, last), plain, self._header)
        self._emit(struct.pack(">I", len(sealed)) + sealed)
        self._counter += 1

    def write(self, data: bytes) -> int:
        if self._closed:
            raise ValueError("write to a closed archive")
        self._buffer += data
        while len(self._buffer) > SEGMENT_BYTES:  # keep at least one byte back for the last segment
            self._segment(bytes(self._buffer[:SEGMENT_BYTES]), last=False)
            del self._buffer[:SEGMENT_BYTES]
        return len(data)

    def close(self) -> None:
        if self._closed:
            return
        self._segment(bytes(self._buffer), last=True)
        self._buffer.clear()
        self._closed = True
        self._raw.flush()

    def __enter__(self) -> EncryptingWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()


class DecryptingReader:
    """A read-only file object over an archive written by :class:`EncryptingWriter`.

    Raises :class:`BackupCryptoError` on a wrong passphrase, a changed byte, a missing or extra
    segment, or a truncated archive (the last segment never came).
    """

    def __init__(self, raw: IO[bytes], passphrase: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if raw.read(len(MAGIC)) != MAGIC:
            raise BackupCryptoError("not an accessctl backup archive")
        (length,) = struct.unpack(">I", _exactly(raw, 4))
        if not 0 < length <= _MAX_HEADER:
            raise BackupCryptoError("damaged archive header")
        self._header = _exactly(raw, length)
        try:
            header = json.loads(self._header)
            salt = base64.b64decode(header["salt"])
            self._prefix = base64.b64decode(header["nonce_prefix"])
            n, r, p = int(header["n"]), int(header["r"]), int(header["p"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupCryptoError(f"damaged archive header: {exc}") from None
        if header.get("kdf") != "scrypt" or header.get("cipher") != "AES-256-GCM" or len(self._prefix) != 7:
            raise BackupCryptoError("unsupported archive encryption")
        if not (2**14 <= n <= 2**20 and 1 <= r <= 16 and 1 <= p <= 4):  # a hostile header must not hang us
            raise BackupCryptoError("unsupported scrypt parameters")
        self._aead = AESGCM(_key(passphrase, salt, n, r, p))
        self._raw = raw
        self._counter = 0
        self._buffer = b""
        self._done = False

    def _next_segment(self) -> None:
        from cryptography.exceptions import InvalidTag

        size_bytes = self._raw.read(4)
        if len(size_bytes) < 4:
            raise BackupCryptoError("the archive is truncated (its last segment is missing)")
        (size,) = struct.unpack(">I", size_bytes)
        if size > SEGMENT_BYTES + 16:
            raise BackupCryptoError("damaged archive (segment too large)")
        sealed = _exactly(self._raw, size)
        for last in (False, True):
            try:
                plain = self._aead.decrypt(_nonce(self._prefix, self._counter, last), sealed, self._header)
            except InvalidTag:
                continue
            self._counter += 1
            self._buffer += plain
            if last:
                if self._raw.read(1):
                    raise BackupCryptoError("damaged archive (data after the last segment)")
                self._done = True
            return
        if self._counter == 0:
            raise BackupCryptoError("wrong passphrase, or the archive is damaged")
        raise BackupCryptoError(f"the archive is damaged (segment {self._counter} does not authenticate)")

    def read(self, n: int = -1) -> bytes:
        while not self._done and (n < 0 or len(self._buffer) < n):
            self._next_segment()
        if n < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def _exactly(raw: IO[bytes], n: int) -> bytes:
    data = raw.read(n)
    if len(data) != n:
        raise BackupCryptoError("the archive is truncated")
    return data
