"""Decoding uploaded pictures is bounded: a pixel cap read from the header before any decoding,
decodes off the event loop with bounded concurrency, and every upload path (enrolment page, API,
identify, bulk import) refuses the same way. Memory and time figures: ``bench/decode_cost.py``."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import ApplicationCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from accessctl.models import Person
from recognition import enrollment
from recognition.bulk_import import photos_import
from recognition.enrollment import DECODE_SLOTS, BadImageError, decode_image
from recognition.models import EnrollmentPhoto
from tests.accessctl.helpers import user_create
from tests.api_support import token_client


@pytest.fixture(autouse=True)
def _request_threads_close_their_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Views served through the ASGI app use connections in their own threads; closed after each
    request (as with ``DATABASE_CONN_MAX_AGE=0``) so the test database can be dropped at the end."""
    from django.db import connections

    monkeypatch.setitem(connections["default"].settings_dict, "CONN_MAX_AGE", 0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 6000, height: int = 6000, *, truncated: bool = False) -> bytes:
    """A real, complete grayscale PNG of ``width`` x ``height`` black pixels: ~35 KB for 6000x6000,
    ~36 MB once decoded (more as RGB). ``truncated`` keeps only the start of its pixel data."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    if truncated:
        pixels = pixels[: len(pixels) // 2]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def _jpeg(width: int, height: int, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 100, 110)).save(buffer, format="JPEG", quality=70, **options)
    return buffer.getvalue()


def _in_thread(function: Any, timeout: float = 30.0) -> Any:
    """Run ``function`` in a thread; fail (instead of hanging) if it does not finish in ``timeout``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "blocked: the picture was being decoded"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def all_slots_taken() -> Any:
    """Every decode slot of this process held by the test: any decode would have to wait."""
    slots = DECODE_SLOTS._slots()
    for _ in range(DECODE_SLOTS.size):
        slots.acquire()
    yield slots
    for _ in range(DECODE_SLOTS.size):
        slots.release()


def test_the_png_bomb_is_refused_from_its_header(all_slots_taken) -> None:
    bomb = png_bomb()
    assert len(bomb) < 64 * 1024
    with Image.open(io.BytesIO(bomb)) as img:
        assert img.size == (6000, 6000)  # genuine: Pillow reads it as a 36 MP picture
    # With every decode slot taken, an attempt to decode would block: the refusal needs none.
    with pytest.raises(BadImageError, match=r"too large to process \(6000x6000 pixels; at most 16 megapixels\)"):
        _in_thread(lambda: decode_image(bomb))


def test_camera_jpegs_are_decoded_at_a_reduced_scale_progressive_ones_count_in_full(settings) -> None:
    settings.RECOGNITION_MAX_DECODE_PIXELS = 4_000_000  # small pictures keep this test fast
    rgb = decode_image(_jpeg(3200, 2000))  # 6.4 MP baseline: decoded at 1/2 scale = 1.6 MP
    assert max(rgb.shape[:2]) <= enrollment.MAX_WORKING_SIDE and rgb.shape[2] == 3
    with pytest.raises(BadImageError, match="too large to process"):
        decode_image(_jpeg(3200, 2000, progressive=True))
    with pytest.raises(BadImageError, match="too large to process"):
        decode_image(png_bomb(2100, 2000))


@pytest.fixture
def no_embedder(monkeypatch: pytest.MonkeyPatch, media_root: Path) -> None:
    """The face model is never needed: every picture here is refused while it is decoded."""
    monkeypatch.setattr("recognition.enrollment.configured_embedder", lambda: object())


@pytest.mark.django_db
def test_every_upload_path_refuses_the_bomb_with_a_clear_message(client, no_embedder, tmp_path) -> None:
    person = Person.objects.create(name="Ada")
    bomb = png_bomb()

    api = token_client(["people:write", "identify"])
    identify = api.post("/api/v1/identify", {"image": SimpleUploadedFile("x.png", bomb)}, format="multipart")
    assert identify.status_code == 422
    assert identify.json()["error"]["code"] == "bad_image" and "too large" in identify.json()["error"]["message"]

    upload = api.post(
        f"/api/v1/people/{person.pk}/photos/", {"image": SimpleUploadedFile("x.png", bomb)}, format="multipart"
    )
    assert upload.status_code == 201 and upload.json()["status"] == "rejected"
    assert upload.json()["quality_reason"] == "bad_image" and "too large" in upload.json()["quality_message"]

    client.force_login(user_create("adm", "recognition.add_enrollmentphoto", is_staff=True))
    page = client.post(
        reverse("recognition:enrol_person", args=[person.pk]), {"photos": [SimpleUploadedFile("y.png", bomb)]}
    )
    assert page.status_code == 302

    archive = tmp_path / "import.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Ada/z.png", bomb)  # an existing person: a new one with no kept photo is not created
    summary = photos_import(source=archive, embedder=object())
    assert summary.rejected == 1 and summary.reasons == {"bad_image": 1}

    # Each refusal is on record: a rejected photo with its reason, for the administrator to see.
    rejected = EnrollmentPhoto.objects.filter(status="rejected", quality_reason="bad_image")
    assert rejected.count() == 3 and all("too large" in p.quality_message for p in rejected)


# --- off the event loop, bounded concurrency ------------------------------------------------------


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http", "http_version": "1.1", "method": method, "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": [(b"host", b"localhost"), *headers],
        "client": ["127.0.0.1", 50000], "server": ["127.0.0.1", 8000],
    }  # fmt: skip


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, bytes]:
    boundary = b"----accessctl-test"
    body = (
        b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + field.encode() + b"\"; filename=\""
        + filename.encode() + b"\"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
    )  # fmt: skip
    return body, b"multipart/form-data; boundary=" + boundary


async def _response(communicator: ApplicationCommunicator, timeout: float = 30) -> dict[str, Any]:
    start = await communicator.receive_output(timeout=timeout)
    body = b""
    while True:
        message = await communicator.receive_output(timeout=timeout)
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return {"status": start["status"], "body": body}


@pytest.mark.django_db(transaction=True)
def test_decodes_wait_for_a_slot_in_their_thread_not_on_the_event_loop(no_embedder, all_slots_taken) -> None:
    """With every decode slot taken, an identify request waits for one in its own thread while the same
    ASGI application keeps answering other requests; once a slot frees, it completes."""
    from accessctl.project.asgi import application

    client = token_client(["identify"])
    token = client._credentials["HTTP_AUTHORIZATION"].encode()
    body, content_type = _multipart("image", "face.png", png_bomb(200, 200, truncated=True))
    headers = [(b"authorization", token), (b"content-type", content_type), (b"content-length", str(len(body)).encode())]

    async def run() -> tuple[dict[str, Any], dict[str, Any], int]:
        identify = ApplicationCommunicator(application, _scope("POST", "/api/v1/identify", headers))
        await identify.send_input({"type": "http.request", "body": body})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while DECODE_SLOTS.waiting < 1:  # the request reached the decode and waits for a slot
            assert loop.time() < deadline, "the identify request never reached the decode"
            await asyncio.sleep(0.02)
        health = ApplicationCommunicator(application, _scope("GET", "/healthz", []))
        await health.send_input({"type": "http.request", "body": b""})
        healthz = await _response(health, timeout=10)  # answered while the decode waits
        waiting_during = DECODE_SLOTS.waiting
        all_slots_taken.release()  # one slot frees: the waiting decode proceeds
        try:
            identified = await _response(identify)
        finally:
            all_slots_taken.acquire(timeout=30)  # the fixture releases every slot it took
        return healthz, identified, waiting_during

    healthz, identified, waiting_during = async_to_sync(run)()
    assert healthz["status"] == 200 and waiting_during == 1
    assert identified["status"] == 422
    assert json.loads(identified["body"])["error"] == {
        "code": "bad_image", "message": "The picture is damaged or truncated."
    }  # fmt: skip
    assert DECODE_SLOTS.waiting == 0
