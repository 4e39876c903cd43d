"""Public face datasets, found on this machine or downloaded once (as scikit-learn's loaders do),
and their layout: LFW's ``pairs.txt`` and labelled folders ``<person>/*.jpg``.

:func:`lfw_locate` answers the LFW folder the demo (``manage.py up --demo``) and the benchmarks
(``evaluate_lfw``, ``calibrate_threshold``) read: ``images/<Name>/<Name>_0001.jpg`` and ``pairs.txt``.
It looks, in this order, at

1. the folder the user named (``--lfw PATH``), then ``settings.LFW_DIR`` (``ACCESSCTL_LFW``): it
   must hold LFW photos;
2. the copy downloaded before (or put there), under ``VAR_DIR/datasets/lfw``;
3. else it downloads LFW (~173 MB) from the mirror scikit-learn uses, checks each file's SHA-256,
   extracts the archive (regular files and folders only, nothing outside the target) and keeps it
   under ``var/datasets/lfw``. Offline, it fails with one line saying what to do.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from accessctl.project.progress import progress_bar

logger = logging.getLogger(__name__)


class DatasetError(Exception):
    """A dataset could not be found or fetched; the message is one line saying what to do."""


@dataclass(frozen=True)
class RemoteFile:
    filename: str
    url: str
    sha256: str


# The original LFW (http://vis-www.cs.umass.edu/lfw/), as mirrored on figshare for scikit-learn's
# fetch_lfw_people / fetch_lfw_pairs (sklearn/datasets/_lfw.py: ARCHIVE and TARGETS).
LFW_ARCHIVE = RemoteFile(
    filename="lfw.tgz",
    url="https://ndownloader.figshare.com/files/5976018",
    sha256="055f7d9c632d7370e6fb4afc7468d40f970c34a80d4c6f50ffec63f5a8d536c0",
)
LFW_PAIRS = RemoteFile(
    filename="pairs.txt",
    url="https://ndownloader.figshare.com/files/5976006",
    sha256="ea42330c62c92989f9d7c03237ed5d591365e89b3e649747777b70e692dc1592",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WHAT_TO_DO = "pass --lfw PATH (a folder of LFW photos, <Name>/<Name>_0001.jpg) or set ACCESSCTL_LFW"


def lfw_has_photos(root: Path) -> bool:
    """True when ``root`` holds LFW-like photos: ``images/<Name>/*.jpg`` or ``<Name>/*.jpg``."""
    base = root / "images" if (root / "images").is_dir() else root
    return base.is_dir() and next(base.glob("*/*.jpg"), None) is not None


def lfw_locate(*, explicit: str | Path | None = None, download: bool = True, stream: IO[str] | None = None) -> Path:
    """The LFW folder to read (see the module docstring for the order); raises :class:`DatasetError`."""
    from django.conf import settings

    named = explicit or settings.LFW_DIR
    if named:
        root = Path(named).expanduser()
        if not lfw_has_photos(root):
            source = "--lfw" if explicit else "ACCESSCTL_LFW"
            raise DatasetError(f"no LFW photos in {root} ({source}): name a folder of <Name>/<Name>_0001.jpg photos")
        return root
    cache = Path(settings.VAR_DIR) / "datasets" / "lfw"
    if lfw_has_photos(cache) or download:
        return lfw_fetch(dest=cache, stream=stream)
    raise DatasetError(f"LFW photos not found: {WHAT_TO_DO}")


def lfw_fetch(
    *,
    dest: Path,
    archive: RemoteFile | None = None,
    pairs: RemoteFile | None = None,
    stream: IO[str] | None = None,
    timeout: float = 30.0,
) -> Path:
    """``dest`` with LFW in it (``images/`` and ``pairs.txt``), downloaded and extracted on first use."""
    archive = archive or LFW_ARCHIVE
    pairs = pairs or LFW_PAIRS
    if (dest / "pairs.txt").is_file() and lfw_has_photos(dest):
        return dest  # downloaded before
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("LFW photos not found on this machine: downloading them once into %s", dest)
    work = Path(tempfile.mkdtemp(prefix=".lfw-", dir=dest.parent))
    try:
        tgz = remote_fetch(archive, target=work / archive.filename, stream=stream, timeout=timeout)
        pairs_path = remote_fetch(pairs, target=work / "pairs.txt", stream=stream, timeout=timeout)
        extracted = work / "extracted"
        tar_extract_safely(tgz, extracted)
        tops = [p for p in extracted.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise DatasetError(f"{archive.url}: expected one top folder of LFW photos, found {len(tops)}")
        result = work / "lfw"
        result.mkdir()
        tops[0].rename(result / "images")
        pairs_path.rename(result / "pairs.txt")
        if dest.exists():  # an earlier download left something incomplete
            shutil.rmtree(dest)
        result.rename(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("LFW is in %s", dest)
    return dest


def remote_fetch(remote: RemoteFile, *, target: Path, stream: IO[str] | None = None, timeout: float = 30.0) -> Path:
    """Download ``remote`` to ``target`` with a progress bar; refuse it unless its SHA-256 matches."""
    digest = hashlib.sha256()
    part = target.with_name(target.name + ".part")
    request = urllib.request.Request(remote.url, headers={"User-Agent": "accessctl"})  # noqa: S310 (https URL)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, part.open("wb") as out:  # noqa: S310
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress_bar(desc=remote.filename, total=total, unit="B", unit_scale=True, stream=stream) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:  # offline, refused, timed out, HTTP error
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise DatasetError(f"LFW photos not found and {remote.url} is out of reach ({reason}): {WHAT_TO_DO}") from exc
    if digest.hexdigest() != remote.sha256:
        part.unlink()
        raise DatasetError(
            f"{remote.url} sent a {remote.filename} whose SHA-256 {digest.hexdigest()[:16]}... is not the expected "
            f"{remote.sha256[:16]}...; it was deleted. Try again later, or {WHAT_TO_DO}"
        )
    part.rename(target)
    return target


def tar_extract_safely(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``: regular files and folders only, every one inside ``dest``.

    A member that is a link or a device, or whose name is absolute or climbs out with ``..``, refuses
    the whole archive before anything is written.
    """
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            name = PurePosixPath(member.name)
            if not (member.isfile() or member.isdir()):
                raise DatasetError(f"{archive.name}: refused, {member.name!r} is a link or a special file")
            if name.is_absolute() or ".." in name.parts:
                raise DatasetError(f"{archive.name}: refused, {member.name!r} points outside its folder")
        dest.mkdir(parents=True, exist_ok=True)
        tar.extractall(dest, members=members, filter="data")  # the standard library's own checks as well


# --- LFW layout


@dataclass(frozen=True)
class Pair:
    path1: str  # relative to the images folder: "<Name>/<Name>_0001.jpg"
    path2: str
    same: bool
    fold: int


def lfw_relpath(name: str, number: int) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_lfw_pairs(pairs_path: str | Path) -> list[Pair]:
    """Parse the standard ``pairs.txt`` (header "folds n", then per fold n same + n different)."""
    lines = Path(pairs_path).read_text().split("\n")
    header = lines[0].split()
    folds, per = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
    pairs: list[Pair] = []
    rows = [ln.split() for ln in lines[1:] if ln.strip()]
    if len(rows) != folds * per * 2:
        raise ValueError(f"{pairs_path}: expected {folds * per * 2} pairs, found {len(rows)}")
    for i, row in enumerate(rows):
        fold = i // (2 * per)
        if len(row) == 3:
            pairs.append(Pair(lfw_relpath(row[0], row[1]), lfw_relpath(row[0], row[2]), True, fold))
        elif len(row) == 4:
            pairs.append(Pair(lfw_relpath(row[0], row[1]), lfw_relpath(row[2], row[3]), False, fold))
        else:
            raise ValueError(f"{pairs_path}: bad line {row}")
    return pairs


def list_identity_folder(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> dict[str, list[str]]:
    """``root/<person>/*.jpg`` -> {person: [relative paths, sorted]} (people with >= 1 image whose
    suffix, lower-cased, is one of ``extensions``)."""
    root = Path(root)
    people: dict[str, list[str]] = {}
    for person_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f"{person_dir.name}/{f.name}" for f in person_dir.iterdir() if f.suffix.lower() in extensions)
        if files:
            people[person_dir.name] = files
    return people
