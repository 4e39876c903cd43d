"""Signed model manifests: what a model version is made of, and the check a device runs on a bundle.

A model bundle is a folder of files (the weights) plus a *signed manifest* naming every file with
its SHA-256 and size, the model version, the backend that runs it (and its options), the input it
expects, its licence and the agent versions that may load it. The server signs the manifest with
its Ed25519 key (the key devices already trust for commands); :func:`bundle_verify` refuses a
bundle whose signature does not verify, whose files differ by one byte, are missing, or whose
manifest does not allow this agent's version.

Domain separation: the signature covers ``MANIFEST_CONTEXT + canonical_json(manifest)``, so a
signed manifest is never a valid command (commands sign the bare canonical payload) nor the other
way round, although both are signed with the same key.

Standard library only at import time (``cryptography`` is imported inside the signing helpers),
no Django: the edge agent verifies bundles with this module.

Signed form (JSON)::

    {"manifest": {...}, "sig": "<base64 Ed25519 signature>"}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from faceengine.protocol.envelope import canonical_json, loads_strict
from faceengine.protocol.signing import _public_key, load_private_key

MANIFEST_FORMAT = 1
MANIFEST_CONTEXT = b"accessctl/model-manifest/v1\n"
MAX_MANIFEST_BYTES = 64 * 1024
MAX_FILES = 32
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SPEC_PART = re.compile(r"^\s*(==|!=|>=|<=|>|<)\s*(\d+(?:\.\d+){0,3})\s*$")


class ManifestError(ValueError):
    """A manifest or bundle is refused; ``code`` says why (stable, for logs and audit records)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ModelFile:
    """One file of a bundle: a plain file name (no folders), its SHA-256 (hex) and size in bytes."""

    name: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "size": self.size}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        if not isinstance(data, Mapping) or set(data) != {"name", "sha256", "size"}:
            raise ManifestError("malformed", "a file entry needs exactly name, sha256, size")
        name, digest, size = data["name"], data["sha256"], data["size"]
        if not isinstance(name, str) or not _FILE_NAME.match(name) or name in (".", ".."):
            raise ManifestError("malformed", f"file name {name!r} is not a plain file name")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise ManifestError("malformed", f"file {name}: sha256 is not 64 lowercase hex digits")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ManifestError("malformed", f"file {name}: size is not a non-negative integer")
        return cls(name=name, sha256=digest, size=size)


@dataclass(frozen=True)
class ModelManifest:
    """What a model version is: the signed part of a bundle."""

    model_version: str
    backend: str
    files: tuple[ModelFile, ...]
    dim: int
    input_kind: str
    input_size: int
    licence: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    agent_versions: str = ""
    issued_at: int = 0
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "model_version": self.model_version,
            "backend": self.backend,
            "options": dict(self.options),
            "files": [f.to_dict() for f in self.files],
            "dim": self.dim,
            "input_kind": self.input_kind,
            "input_size": self.input_size,
            "licence": self.licence,
            "agent_versions": self.agent_versions,
            "issued_at": self.issued_at,
        }

    @classmethod
    def from_dict(cls, data: object) -> Self:
        keys = {
            "format", "model_version", "backend", "options", "files", "dim", "input_kind", "input_size",
            "licence", "agent_versions", "issued_at",
        }  # fmt: skip
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ManifestError("malformed", f"a manifest has exactly the keys {sorted(keys)}")
        if data["format"] != MANIFEST_FORMAT:
            raise ManifestError("bad_version", f"manifest format {data['format']!r} is not {MANIFEST_FORMAT}")
        for key in ("model_version", "backend"):
            if not isinstance(data[key], str) or not _VERSION.match(data[key]):
                raise ManifestError("malformed", f"{key} is not a short label")
        for key in ("licence", "agent_versions", "input_kind"):
            if not isinstance(data[key], str) or len(data[key]) > 200:
                raise ManifestError("malformed", f"{key} is not a short string")
        for key in ("dim", "input_size", "issued_at"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ManifestError("malformed", f"{key} is not a non-negative integer")
        if not isinstance(data["options"], Mapping):
            raise ManifestError("malformed", "options is not an object")
        files = data["files"]
        if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
            raise ManifestError("malformed", f"files must list 1 to {MAX_FILES} files")
        parsed = tuple(ModelFile.from_dict(f) for f in files)
        if len({f.name for f in parsed}) != len(parsed):
            raise ManifestError("malformed", "a file is named twice")
        agent_versions_check(data["agent_versions"])
        return cls(
            model_version=data["model_version"], backend=data["backend"], files=parsed, dim=data["dim"],
            input_kind=data["input_kind"], input_size=data["input_size"], licence=data["licence"],
            options=dict(data["options"]), agent_versions=data["agent_versions"], issued_at=data["issued_at"],
        )  # fmt: skip


# --------------------------------------------------------------------------- files


def file_digest(path: str | Path) -> tuple[str, int]:
    """``(sha256 hex, size)`` of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def model_files_describe(paths: Iterable[str | Path]) -> tuple[ModelFile, ...]:
    """The manifest entries of ``paths`` (named by their base name)."""
    out = []
    for path in paths:
        digest, size = file_digest(path)
        out.append(ModelFile(name=Path(path).name, sha256=digest, size=size))
    return tuple(out)


# --------------------------------------------------------------------------- agent versions


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.match(r"^\s*(\d+(?:\.\d+){0,3})", text)
    if not match:
        raise ManifestError("malformed", f"version {text!r} does not start with dotted numbers")
    parts = tuple(int(p) for p in match.group(1).split("."))
    return parts + (0,) * (4 - len(parts))


def agent_versions_check(spec: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parse ``spec``: comma-separated comparisons (``>=0.1, <0.3``); empty means every version."""
    clauses = []
    for part in (p for p in spec.split(",") if p.strip()):
        match = _SPEC_PART.match(part)
        if not match:
            raise ManifestError("malformed", f"agent version clause {part.strip()!r} is not like '>=0.1.0'")
        clauses.append((match.group(1), _version_tuple(match.group(2))))
    return clauses


def agent_version_allowed(spec: str, version: str) -> bool:
    """Whether agent ``version`` (``0.1.0``, ``0.2.0rc1``: the leading numbers count) satisfies ``spec``."""
    have = _version_tuple(version)
    checks = {
        "==": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
    }  # fmt: skip
    return all(checks[op](have, want) for op, want in agent_versions_check(spec))


# --------------------------------------------------------------------------- signing


def _signed_bytes(manifest: ModelManifest) -> bytes:
    return MANIFEST_CONTEXT + canonical_json(manifest.to_dict())


def manifest_sign(manifest: ModelManifest, private_key: Any) -> str:
    """Base64 Ed25519 signature of ``manifest`` (with the manifest context) by ``private_key``."""
    ModelManifest.from_dict(manifest.to_dict())  # never sign what a device would refuse to parse
    return base64.b64encode(load_private_key(private_key).sign(_signed_bytes(manifest))).decode("ascii")


def signed_manifest_dumps(manifest: ModelManifest, sig: str) -> bytes:
    """The signed manifest as shipped with a bundle (``manifest.json``)."""
    return canonical_json({"manifest": manifest.to_dict(), "sig": sig})


def manifest_verify(signed: bytes | str | Mapping[str, Any], public_key_b64: str) -> ModelManifest:
    """The manifest inside ``signed`` (bytes of :func:`signed_manifest_dumps`, or its parsed dict)
    once its signature by ``public_key_b64`` verifies; :class:`ManifestError` otherwise."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(signed, bytes | str):
        if len(signed) > MAX_MANIFEST_BYTES:
            raise ManifestError("too_large", f"signed manifest is over {MAX_MANIFEST_BYTES} bytes")
        try:
            signed = loads_strict(signed)
        except ValueError:
            raise ManifestError("malformed", "signed manifest is not valid JSON") from None
    if not isinstance(signed, Mapping) or set(signed) != {"manifest", "sig"}:
        raise ManifestError("malformed", "a signed manifest has exactly the keys manifest and sig")
    manifest = ModelManifest.from_dict(signed["manifest"])
    try:
        sig = base64.b64decode(str(signed["sig"]).encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ManifestError("bad_signature", "signature is not base64") from None
    try:
        key = _public_key(public_key_b64)
    except ValueError:
        raise ManifestError("bad_signature", "the trusted public key is not an Ed25519 key") from None
    try:
        key.verify(sig, _signed_bytes(manifest))
    except InvalidSignature:
        message = f"manifest of {manifest.model_version} is not signed by the trusted key"
        raise ManifestError("bad_signature", message) from None
    return manifest


def files_verify(manifest: ModelManifest, folder: str | Path, *, paths: Mapping[str, Path] | None = None) -> None:
    """Check every file of ``manifest`` in ``folder`` (or at ``paths[name]``): present, same size,
    same SHA-256. :class:`ManifestError` names the first file that differs."""
    base = Path(folder)
    for entry in manifest.files:
        path = paths[entry.name] if paths and entry.name in paths else base / entry.name
        if not path.is_file():
            raise ManifestError("missing_file", f"{entry.name} is missing")
        if path.stat().st_size != entry.size:
            size = path.stat().st_size
            raise ManifestError("bad_file", f"{entry.name} has {size} bytes, the manifest says {entry.size}")
        digest, _ = file_digest(path)
        if digest != entry.sha256:
            raise ManifestError("bad_file", f"{entry.name} has sha256 {digest}, the manifest says {entry.sha256}")


def bundle_verify(
    signed: bytes | str | Mapping[str, Any],
    public_key_b64: str,
    folder: str | Path,
    *,
    agent_version: str | None = None,
    paths: Mapping[str, Path] | None = None,
) -> ModelManifest:
    """What a device runs before loading a model: the manifest's signature, then (when
    ``agent_version`` is given) that the manifest allows this agent, then every file's size and
    SHA-256. Returns the verified manifest; raises :class:`ManifestError` on the first failure."""
    manifest = manifest_verify(signed, public_key_b64)
    if agent_version is not None and not agent_version_allowed(manifest.agent_versions, agent_version):
        raise ManifestError(
            "incompatible_agent", f"{manifest.model_version} needs agent {manifest.agent_versions}, not {agent_version}"
        )
    files_verify(manifest, folder, paths=paths)
    return manifest
