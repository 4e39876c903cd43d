"""Real face photos for tests, and the research data sets some tests need.

Research data (LFW, ...) is read in place, never copied into the repository. A test that needs a
data set says so with ``@pytest.mark.dataset("lfw")`` (or ``pytestmark``): when the data set is
missing, the test is skipped with a message saying where it was looked for and how to get it, and
under ``CI=true`` it fails instead, so that a CI machine without the data cannot pass by skipping.
Tests that only need *a* face fall back to scikit-image's astronaut (:func:`face_jpeg`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: A folder of research data sets, ``<name>/`` each (e.g. a shared, read-only copy on a team machine);
#: by default ``shared/data`` beside the checkout, then ``var/datasets`` (where LFW is downloaded).
RESEARCH_DATA_ENV = "ACCESSCTL_RESEARCH_DATA"


@dataclass(frozen=True)
class Dataset:
    """A research data set: its folder name, the variable that names its folder, what it must hold."""

    name: str
    env: str  # a variable naming the data set's own folder; wins over the shared data folder
    probes: tuple[str, ...]  # globs, one of which must match inside the folder
    how_to_get: str


DATASETS = {
    "lfw": Dataset(
        "lfw",
        "ACCESSCTL_LFW",
        ("images/*/*.jpg", "*/*.jpg"),  # the LFW folder, or its images/ folder (as recognition.datasets)
        f"set ACCESSCTL_LFW to a folder holding images/<Name>/<Name>_0001.jpg (or {RESEARCH_DATA_ENV} to a "
        "folder holding lfw/), or run `manage.py evaluate_lfw` once to download it into var/datasets/lfw",
    ),
    "celeba-dev": Dataset(
        "celeba-dev", "ACCESSCTL_CELEBA_DEV", ("*/*.jpg",), f"set ACCESSCTL_CELEBA_DEV or {RESEARCH_DATA_ENV}"
    ),
    "nuaa-dev": Dataset("nuaa-dev", "ACCESSCTL_NUAA_DEV", ("*/*",), f"set ACCESSCTL_NUAA_DEV or {RESEARCH_DATA_ENV}"),
}


def dataset_candidates(name: str, environ: Mapping[str, str] | None = None) -> list[Path]:
    """The folders looked at for data set ``name``, in order."""
    environ = os.environ if environ is None else environ
    dataset = DATASETS[name]
    if environ.get(dataset.env):
        return [Path(environ[dataset.env]).expanduser()]  # named explicitly: that folder or nothing
    if environ.get(RESEARCH_DATA_ENV):
        return [Path(environ[RESEARCH_DATA_ENV]).expanduser() / name]
    # The team's research data beside the checkout (read in place, never copied), then downloads.
    return [ROOT.parent / "shared" / "data" / name, ROOT / "var" / "datasets" / name]


def dataset_dir(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of data set ``name``, or None when it is not on this machine."""
    probes = DATASETS[name].probes
    for folder in dataset_candidates(name, environ):
        if folder.is_dir() and any(next(folder.glob(probe), None) is not None for probe in probes):
            return folder.resolve()
    return None


def dataset_missing_message(name: str, environ: Mapping[str, str] | None = None) -> str:
    where = ", ".join(str(p) for p in dataset_candidates(name, environ))
    return f"{name} not found at {where}; {DATASETS[name].how_to_get}"


def dataset_require(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """The folder of data set ``name``; else skip the test, or fail it under ``CI=true``."""
    environ = os.environ if environ is None else environ
    folder = dataset_dir(name, environ)
    if folder is not None:
        return folder
    message = dataset_missing_message(name, environ)
    if environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


# --- LFW ------------------------------------------------------------------------------------------

_LFW_ROOT = dataset_dir("lfw")
#: LFW's photo folder (``<Name>/<Name>_0001.jpg``); one that does not exist when LFW is missing.
_LFW_BASE = _LFW_ROOT or dataset_candidates("lfw")[0]
#: The LFW folder (``images/`` and ``pairs.txt``), where it is or would be.
LFW_ROOT = _LFW_BASE
LFW_DIR = _LFW_BASE if _LFW_ROOT and not (_LFW_BASE / "images").is_dir() else _LFW_BASE / "images"
# People with many LFW photos: enough to enrol several and probe with others.
PEOPLE = ("Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "George_W_Bush")


def lfw_available() -> bool:
    return _LFW_ROOT is not None


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
