"""Signed model manifests as a device checks them (faceengine.protocol.model_manifest, no Django)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from faceengine import protocol as p
from faceengine.protocol.model_manifest import (
    MANIFEST_CONTEXT,
    ManifestError,
    ModelManifest,
    agent_version_allowed,
    bundle_verify,
    manifest_sign,
    manifest_verify,
    model_files_describe,
    signed_manifest_dumps,
)

ROOT = Path(__file__).resolve().parents[2]


def _bundle(folder: Path, agent_versions: str = ">=0.1.0, <1") -> tuple[ModelManifest, bytes, str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.onnx").write_bytes(bytes(range(256)) * 40)
    (folder / "extra.bin").write_bytes(b"\x00" * 1000)
    manifest = ModelManifest(
        model_version="toy-1", backend="sface", files=model_files_describe(sorted(folder.iterdir())), dim=128,
        input_kind="arcface112", input_size=112, licence="MIT", options={"flip": True},
        agent_versions=agent_versions, issued_at=1_700_000_000,
    )  # fmt: skip
    private_pem, public = p.generate_keypair()
    signed = signed_manifest_dumps(manifest, manifest_sign(manifest, private_pem))
    return manifest, signed, public, private_pem


def test_a_good_bundle_verifies(tmp_path: Path) -> None:
    manifest, signed, public, _ = _bundle(tmp_path / "b")
    assert bundle_verify(signed, public, tmp_path / "b", agent_version="0.1.0") == manifest
    assert [f.name for f in manifest.files] == ["extra.bin", "weights.onnx"]


@pytest.mark.parametrize("name", ["weights.onnx", "extra.bin"])
@pytest.mark.parametrize("offset", [0, 511, -1])
def test_one_flipped_byte_in_any_file_is_refused(tmp_path: Path, name: str, offset: int) -> None:
    _, signed, public, _ = _bundle(tmp_path / "b")
    path = tmp_path / "b" / name
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError) as refused:
        bundle_verify(signed, public, tmp_path / "b")
    assert refused.value.code == "bad_file" and name in refused.value.message


def test_a_missing_or_truncated_file_is_refused(tmp_path: Path) -> None:
    _, signed, public, _ = _bundle(tmp_path / "b")
    (tmp_path / "b" / "extra.bin").write_bytes(b"\x00" * 999)
    with pytest.raises(ManifestError, match="999 bytes"):
        bundle_verify(signed, public, tmp_path / "b")
    (tmp_path / "b" / "extra.bin").unlink()
    with pytest.raises(ManifestError) as refused:
        bundle_verify(signed, public, tmp_path / "b")
    assert refused.value.code == "missing_file"


def test_a_wrong_key_or_an_edited_manifest_is_refused(tmp_path: Path) -> None:
    _, signed, _, _ = _bundle(tmp_path / "b")
    _, other_public = p.generate_keypair()
    with pytest.raises(ManifestError) as refused:
        bundle_verify(signed, other_public, tmp_path / "b")
    assert refused.value.code == "bad_signature"
    # An attacker who replaces a file and rewrites its hash in the manifest still lacks the key.
    _, _, public, _ = _bundle(tmp_path / "c")
    doc = json.loads(signed)
    doc["manifest"]["files"][1]["sha256"] = "0" * 64
    with pytest.raises(ManifestError, match="not signed"):
        manifest_verify(json.dumps(doc).encode(), public)
    doc = json.loads(signed)
    doc["sig"] = doc["sig"][:-4] + "AAA="
    with pytest.raises(ManifestError) as refused:
        manifest_verify(doc, public)
    assert refused.value.code == "bad_signature"


def test_a_command_signature_is_not_a_manifest_signature(tmp_path: Path) -> None:
    """Same key, different bytes: a signature over the bare canonical manifest (what the envelope of
    a command signs) does not verify as a manifest signature (the manifest context is missing)."""
    manifest, _, public, private_pem = _bundle(tmp_path / "b")
    bare = p.load_private_key(private_pem).sign(p.canonical_json(manifest.to_dict()))
    forged = {"manifest": manifest.to_dict(), "sig": base64.b64encode(bare).decode()}
    with pytest.raises(ManifestError):
        manifest_verify(forged, public)
    assert MANIFEST_CONTEXT.endswith(b"\n")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m["files"][0].update(name="../etc/passwd"),
        lambda m: m["files"][0].update(name="sub/weights.onnx"),
        lambda m: m["files"].append(dict(m["files"][0])),
        lambda m: m.update(format=2),
        lambda m: m.update(extra=1),
        lambda m: m.update(dim=True),
        lambda m: m.update(files=[]),
        lambda m: m["files"][0].update(sha256="ABC"),
        lambda m: m.update(agent_versions="~=1.0"),
    ],
)
def test_malformed_manifests_are_refused_before_any_file_is_read(tmp_path: Path, edit) -> None:
    manifest, _, _, _ = _bundle(tmp_path / "b")
    data = manifest.to_dict()
    edit(data)
    with pytest.raises(ManifestError):
        ModelManifest.from_dict(data)


def test_agent_versions(tmp_path: Path) -> None:
    assert agent_version_allowed("", "0.0.1")
    assert agent_version_allowed(">=0.1.0, <1", "0.1.0")
    assert agent_version_allowed(">=0.1.0, <1", "0.9.9rc1")
    assert not agent_version_allowed(">=0.2", "0.1.9")
    assert not agent_version_allowed(">=0.1.0, <1", "1.0")
    assert agent_version_allowed("!=0.1.3", "0.1.4")
    _, signed, public, _ = _bundle(tmp_path / "b", agent_versions=">=0.2")
    with pytest.raises(ManifestError) as refused:
        bundle_verify(signed, public, tmp_path / "b", agent_version="0.1.0")
    assert refused.value.code == "incompatible_agent"


def test_a_device_verifies_without_django(tmp_path: Path) -> None:
    """What the edge agent will run: a fresh interpreter that imports only faceengine."""
    _, signed, public, _ = _bundle(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_bytes(signed)
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from faceengine.protocol.model_manifest import ManifestError, bundle_verify
        folder = Path({str(tmp_path / "b")!r})
        signed = (folder / "manifest.json").read_bytes()
        print(bundle_verify(signed, {public!r}, folder, agent_version="0.1.0").model_version)
        data = bytearray((folder / "weights.onnx").read_bytes()); data[100] ^= 0x80
        (folder / "weights.onnx").write_bytes(bytes(data))
        try:
            bundle_verify(signed, {public!r}, folder)
        except ManifestError as exc:
            print("refused", exc.code)
        assert not any(m.split(".")[0] in ("django", "accessctl", "recognition", "devices") for m in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    assert out[:2] == ["toy-1", "refused bad_file"]
