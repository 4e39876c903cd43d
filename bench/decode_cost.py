"""What decoding one uploaded picture costs: wall time and peak memory, before and after the pixel cap.

    .venv/bin/python bench/decode_cost.py

Each case runs in a fresh process (peak RSS is per process). "main" decodes as the code before the
cap did (Pillow open, 40 MP check, load, EXIF transpose, RGB, thumbnail); "now" calls
``recognition.enrollment.decode_image``. The 6000x6000 PNG is the 35 KB picture of issue 15.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_black(width: int, height: int) -> bytes:
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def jpeg_photo(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def decode_as_main(data: bytes) -> None:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as img:
        if img.width * img.height > 40_000_000:
            raise ValueError("too large")
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB")
    if max(rgb.size) > 1600:
        rgb.thumbnail((1600, 1600))


def decode_now(data: bytes) -> None:
    import django

    django.setup()
    from recognition.enrollment import BadImageError, decode_image

    try:
        decode_image(data)
    except BadImageError as exc:
        print(f"    refused: {exc}", file=sys.stderr)


def child(mode: str, path: str, copies: int) -> None:
    data = Path(path).read_bytes()
    decode = decode_as_main if mode == "main" else decode_now
    from PIL import Image, ImageOps  # noqa: F401 - imported before the baseline

    if mode == "now":
        import django

        django.setup()
        import recognition.enrollment  # noqa: F401
    before = _rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:  # the resident set every 2 ms: ru_maxrss also counts start-up spikes
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, _rss_bytes())

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=decode, args=(data,)) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    sampler.join()
    print(f"{elapsed:.2f} {(peak - before) / 2**20:.0f}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    workdir = Path(tempfile.mkdtemp(prefix="decode-cost-"))
    cases = {
        "png 6000x6000 (36 MP, issue 15)": png_black(6000, 6000),
        "png 4000x4000 (16 MP, at the cap)": png_black(4000, 4000),
        "jpeg 6000x4000 (24 MP camera photo)": jpeg_photo(6000, 4000),
    }
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "accessctl.project.settings",
        "ACCESSCTL_VAR_DIR": str(workdir / "var"),
        "PYTHONPATH": str(ROOT),
    }
    print(f"{'picture':38} {'file':>8} {'decode':6} {'at once':>7} {'seconds':>8} {'peak MB':>8}")
    for name, data in cases.items():
        path = workdir / "picture"
        path.write_bytes(data)
        for mode in ("main", "now"):
            for copies in (1, 4):
                result = subprocess.run(
                    [sys.executable, __file__, "--child", mode, str(path), str(copies)],
                    env=env, capture_output=True, text=True, check=True,
                )  # fmt: skip
                seconds, peak = result.stdout.split()
                size = f"{len(data) // 1024} KB"
                print(f"{name:38} {size:>8} {mode:6} {copies:>7} {seconds:>8} {peak:>8}")


if __name__ == "__main__":
    main()
