"""The LFW loader (recognition/datasets.py) on small archives this test builds and serves locally.

Nothing here reaches the internet: the remote files point at a local HTTP server (or a closed port).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from accessctl.project import embedded
from recognition import datasets
from recognition.datasets import DatasetError, RemoteFile

ROOT = Path(__file__).resolve().parent.parent.parent
PAIRS = b"1\t1\nAda_Lovelace\t1\t2\nAda_Lovelace\t1\tAlan_Turing\t1\n"


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 150, 120)).save(out, "JPEG")
    return out.getvalue()


def _tgz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _lfw_tgz(*extra: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    photo = _jpeg()
    return _tgz([
        _file("lfw/Ada_Lovelace/Ada_Lovelace_0001.jpg", photo),
        _file("lfw/Ada_Lovelace/Ada_Lovelace_0002.jpg", photo),
        _file("lfw/Alan_Turing/Alan_Turing_0001.jpg", photo),
        *extra,
    ])  # fmt: skip


class Server:
    """Serves ``files`` (path -> bytes) on 127.0.0.1 and counts the requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def remote(self, name: str, data: bytes, *, sha256: str | None = None) -> RemoteFile:
        self.files[f"/{name}"] = data
        url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"
        return RemoteFile(filename=name, url=url, sha256=sha256 or hashlib.sha256(data).hexdigest())


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_download_checked_extracted_and_reused(tmp_path: Path, server: Server) -> None:
    archive, pairs = server.remote("lfw.tgz", _lfw_tgz()), server.remote("pairs.txt", PAIRS)
    dest = tmp_path / "datasets" / "lfw"
    assert datasets.lfw_fetch(dest=dest, archive=archive, pairs=pairs) == dest
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.jpg")) == [
        "images/Ada_Lovelace/Ada_Lovelace_0001.jpg", "images/Ada_Lovelace/Ada_Lovelace_0002.jpg",
        "images/Alan_Turing/Alan_Turing_0001.jpg",
    ]  # fmt: skip
    assert (dest / "pairs.txt").read_bytes() == PAIRS
    assert [p.name for p in dest.parent.iterdir()] == ["lfw"], "no archive or partial download left behind"
    assert len(server.requests) == 2

    assert datasets.lfw_fetch(dest=dest, archive=archive, pairs=pairs) == dest
    assert len(server.requests) == 2, "the cached copy is reused, nothing downloaded again"


def test_a_download_that_does_not_match_its_checksum_is_refused(tmp_path: Path, server: Server) -> None:
    archive = server.remote("lfw.tgz", _lfw_tgz(), sha256="0" * 64)
    pairs = server.remote("pairs.txt", PAIRS)
    dest = tmp_path / "datasets" / "lfw"
    with pytest.raises(DatasetError, match=r"SHA-256 .* is not the expected 0000000000000000.*--lfw PATH"):
        datasets.lfw_fetch(dest=dest, archive=archive, pairs=pairs)
    assert list(dest.parent.iterdir()) == [], "nothing kept"


@pytest.mark.parametrize(
    "evil",
    [
        _file("../escaped.txt", b"x"),
        _file("lfw/../../escaped.txt", b"x"),
        _file("/tmp/escaped-absolute.txt", b"x"),
        (tarfile.TarInfo("lfw/Ada_Lovelace/link.jpg"), None),  # a symlink (type set below)
        (tarfile.TarInfo("lfw/Ada_Lovelace/hard.jpg"), None),  # a hard link
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"],
)
def test_an_archive_with_a_path_outside_or_a_link_is_refused(
    tmp_path: Path, server: Server, evil: tuple[tarfile.TarInfo, bytes | None]
) -> None:
    info, _ = evil
    if info.name.endswith("link.jpg"):
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif info.name.endswith("hard.jpg"):
        info.type, info.linkname = tarfile.LNKTYPE, "../../../../etc/passwd"
    archive = server.remote("lfw.tgz", _lfw_tgz(evil))
    pairs = server.remote("pairs.txt", PAIRS)
    dest = tmp_path / "deep" / "datasets" / "lfw"
    with pytest.raises(DatasetError, match="refused"):
        datasets.lfw_fetch(dest=dest, archive=archive, pairs=pairs)
    assert list(dest.parent.iterdir()) == [], "nothing extracted, nothing kept"
    assert not list(tmp_path.rglob("escaped*")) and not Path("/tmp/escaped-absolute.txt").exists()


def test_offline_says_in_one_line_what_to_do(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{embedded.free_port()}/lfw.tgz"  # nothing listens there
    remote = RemoteFile(filename="lfw.tgz", url=closed, sha256="0" * 64)
    with pytest.raises(DatasetError) as caught:
        datasets.lfw_fetch(dest=tmp_path / "lfw", archive=remote, pairs=remote)
    message = str(caught.value)
    assert "\n" not in message and "pass --lfw PATH" in message and "out of reach" in message
    assert list(tmp_path.iterdir()) == []


def test_locate_prefers_the_named_folder_then_the_download(
    tmp_path: Path, server: Server, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BASE_DIR = tmp_path / "checkout"
    settings.VAR_DIR = tmp_path / "checkout" / "var"
    settings.LFW_DIR = None
    monkeypatch.setattr(datasets, "LFW_ARCHIVE", server.remote("lfw.tgz", _lfw_tgz()))
    monkeypatch.setattr(datasets, "LFW_PAIRS", server.remote("pairs.txt", PAIRS))

    with pytest.raises(DatasetError, match=r"no LFW photos in .*missing \(--lfw\)"):
        datasets.lfw_locate(explicit=tmp_path / "missing")
    settings.LFW_DIR = str(tmp_path / "also-missing")
    with pytest.raises(DatasetError, match=r"no LFW photos in .*also-missing \(ACCESSCTL_LFW\)"):
        datasets.lfw_locate()
    assert server.requests == [], "a folder the user named is never replaced by a download"

    settings.LFW_DIR = None
    downloaded = datasets.lfw_locate()
    assert downloaded == settings.VAR_DIR / "datasets" / "lfw" and len(server.requests) == 2
    assert datasets.lfw_locate() == downloaded and len(server.requests) == 2
    assert datasets.lfw_locate(explicit=downloaded) == downloaded

    beside = tmp_path / "shared" / "data" / "lfw" / "images" / "Grace_Hopper"  # outside the checkout: not looked at
    beside.mkdir(parents=True)
    (beside / "Grace_Hopper_0001.jpg").write_bytes(_jpeg())
    assert datasets.lfw_locate() == downloaded


def test_up_demo_offline_fails_in_one_line_before_starting_anything(
    tmp_path: Path, settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BASE_DIR = tmp_path / "checkout"  # nothing beside this checkout
    settings.VAR_DIR = tmp_path / "var"
    settings.LFW_DIR = None
    closed = RemoteFile(filename="lfw.tgz", url=f"http://127.0.0.1:{embedded.free_port()}/lfw.tgz", sha256="0" * 64)
    monkeypatch.setattr(datasets, "LFW_ARCHIVE", closed)
    from accessctl.project import supervisor

    monkeypatch.setattr(supervisor, "services_start", lambda: pytest.fail("services started before LFW was found"))
    with pytest.raises(CommandError, match=r"^LFW photos not found and .* pass --lfw PATH") as caught:
        call_command("up", "--demo")
    assert "\n" not in str(caught.value)


def test_up_demo_with_a_wrong_lfw_path_prints_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    env = {"ACCESSCTL_VAR_DIR": str(tmp_path / "var"), "DATABASE_URL": "postgres://nobody@127.0.0.1:1/unused"}
    result = subprocess.run(
        [sys.executable, "manage.py", "up", "--demo", "--lfw", str(tmp_path / "nowhere")],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "ACCESSCTL_DEMO_LFW" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "CommandError" in line]
    assert errors == [f"CommandError: no LFW photos in {tmp_path / 'nowhere'} (--lfw): "
                      "name a folder of <Name>/<Name>_0001.jpg photos"]  # fmt: skip
