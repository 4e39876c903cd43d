"""Real face photos for tests: LFW from ../shared when present, otherwise scikit-image's astronaut.

LFW is research data: read in place, never copied into the repository.
"""

from __future__ import annotations

import io
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LFW_DIR = (ROOT.parent / "shared" / "data" / "lfw" / "images").resolve()
# People with many LFW photos: enough to enrol several and probe with others.
PEOPLE = ("Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "George_W_Bush")


def lfw_available() -> bool:
    return LFW_DIR.is_dir()


def face_paths(person: str, count: int, offset: int = 0) -> list[Path]:
    """``count`` photos of ``person`` from LFW (sorted, from ``offset``)."""
    paths = sorted((LFW_DIR / person).glob("*.jpg"))[offset : offset + count]
    if len(paths) < count:
        raise LookupError(f"LFW has fewer than {offset + count} photos of {person}")
    return paths


def face_jpeg(person: str = "Colin_Powell", index: int = 0) -> bytes:
    """JPEG bytes of one face photo; the astronaut photo when LFW is absent."""
    if lfw_available():
        return face_paths(person, 1, index)[0].read_bytes()
    return astronaut_jpeg()


def astronaut_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()
