"""Camera sources yielding RGB frames with timestamps.

* :class:`CaptureSource`: V4L2 device (``0``, ``/dev/video0``), RTSP, HTTP(S) MJPEG stream or a
  video file, through OpenCV's ``cv2.VideoCapture`` (``opencv-python-headless``, imported lazily).
  Live sources are reopened with backoff when they fail; a file ends.
* :class:`FolderSource`: a folder of images (simulation and tests), needs only Pillow.
* :class:`InboxSource` (``inbox:DIR``): a folder that visitors are dropped into while the agent
  runs; each new image is shown for a while, then moved to ``DIR/shown/``; an empty scene in
  between (benches and end-to-end tests drive a running agent process with it).

:func:`open_camera` picks one from the ``camera.source`` string.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Frame:
    rgb: np.ndarray  # HxWx3 uint8 RGB
    ts: float  # unix seconds when captured
    index: int


class CameraSource(Protocol):
    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class _Pacer:
    """Sleeps so that at most ``max_fps`` frames per second are produced (0 = unlimited)."""

    def __init__(self, max_fps: float) -> None:
        self.interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._next = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now) + self.interval


class FolderSource:
    """Images of a folder in name order, each shown ``repeat`` frames (a visitor standing there).

    A folder of consecutive captures (e.g. a webcam recording split into JPEGs) plays as a video:
    one visitor in front of the camera. ``limit``: only the first ``limit`` images.
    """

    def __init__(
        self,
        folder: Path | str,
        *,
        max_fps: float = 0.0,
        repeat: int = 1,
        loop: bool = False,
        limit: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if limit is not None:
            self.paths = self.paths[: max(0, limit)]
        if not self.paths:
            raise FileNotFoundError(f"no images in {self.folder}")
        self.max_fps = max_fps
        self.repeat = max(1, repeat)
        self.loop = loop
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        from PIL import Image

        pacer = _Pacer(self.max_fps)
        index = 0
        while not self._closed.is_set():
            for path in self.paths:
                with Image.open(path) as img:
                    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
                for _ in range(self.repeat):
                    if self._closed.is_set():
                        return
                    pacer.wait()
                    yield Frame(rgb=rgb, ts=time.time(), index=index)
                    index += 1
            if not self.loop:
                return

    def close(self) -> None:
        self._closed.set()


class InboxSource:
    """Visitors dropped into a folder while the agent runs (tests, benches, demos).

    Each image that appears in ``folder`` (write it elsewhere and rename it in, so it is never
    read half-written) is shown for ``repeat`` frames, in name order, then moved to
    ``folder/shown/``; between visitors the camera sees an empty grey scene of ``width`` x
    ``height`` for at least ``gap_s`` seconds, also when the next visitor is already waiting (so
    the agent's tracks end and are emitted: longer than its ``track_timeout_s``; otherwise two
    visitors at the same spot are one track, and the second is never sent). Frames come at most
    ``max_fps`` a second (10 when 0: an idle inbox must not spin).
    """

    #: the empty scene between two visitors, seconds (the agent's default track timeout is 0.5 s)
    GAP_S = 1.5

    def __init__(
        self,
        folder: Path | str,
        *,
        width: int = 640,
        height: int = 480,
        max_fps: float = 0.0,
        repeat: int = 1,
        gap_s: float = GAP_S,
    ) -> None:
        self.folder = Path(folder)
        self.shown = self.folder / "shown"
        self.shown.mkdir(parents=True, exist_ok=True)
        self.empty = np.full((height, width, 3), 96, dtype=np.uint8)
        self.max_fps = max_fps if max_fps > 0 else 10.0
        self.repeat = max(1, repeat)
        self.gap_s = max(0.0, gap_s)
        self._closed = threading.Event()

    def _next_visitor(self) -> Path | None:
        found = sorted(p for p in self.folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return found[0] if found else None

    def frames(self) -> Iterator[Frame]:
        from PIL import Image

        pacer = _Pacer(self.max_fps)
        index = 0
        left_at, ready = float("-inf"), True  # the last visitor's last frame; the scene empty long enough since
        while not self._closed.is_set():
            visitor = self._next_visitor() if ready else None
            shots = [self.empty]
            if visitor is not None:
                try:
                    with Image.open(visitor) as img:
                        shots = [np.asarray(img.convert("RGB"), dtype=np.uint8)] * self.repeat
                except OSError:
                    logger.warning("inbox: cannot read %s; skipped", visitor.name)
                visitor.replace(self.shown / visitor.name)
                logger.info("inbox: visitor %s in view for %d frame(s)", visitor.name, len(shots))
            for rgb in shots:
                if self._closed.is_set():
                    return
                pacer.wait()
                ts = time.time()
                yield Frame(rgb=rgb, ts=ts, index=index)
                index += 1
                if visitor is None:
                    ready = ready or ts - left_at > self.gap_s
                else:
                    left_at, ready = ts, False

    def close(self) -> None:
        self._closed.set()


#: ``camera.source`` prefix of an :class:`InboxSource`
INBOX_PREFIX = "inbox:"


def _capture_target(source: str) -> tuple[Any, bool]:
    """``(cv2 argument, is_live)`` for a source string."""
    if source.isdigit():
        return int(source), True
    if source.startswith("/dev/video"):
        return source, True
    if source.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "udp", "tcp"):
        return source, True
    return source, False


class CaptureSource:
    """OpenCV ``VideoCapture`` source; BGR frames are converted to RGB."""

    def __init__(
        self,
        source: str,
        *,
        width: int = 640,
        height: int = 480,
        max_fps: float = 0.0,
        reopen_max_s: float = 30.0,
    ) -> None:
        self.source = source
        self.target, self.live = _capture_target(source)
        self.width, self.height = width, height
        self.max_fps = max_fps
        self.reopen_max_s = reopen_max_s
        self._closed = threading.Event()
        self._cap: Any = None

    def _open(self) -> Any:
        import cv2

        if isinstance(self.target, int) or str(self.target).startswith("/dev/video"):
            cap = cv2.VideoCapture(self.target, cv2.CAP_V4L2)
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # always the latest frame, not a backlog
        else:
            cap = cv2.VideoCapture(self.target)
        return cap

    def frames(self) -> Iterator[Frame]:
        import cv2

        pacer = _Pacer(self.max_fps)
        index = 0
        backoff = 0.5
        while not self._closed.is_set():
            self._cap = self._open()
            if not self._cap.isOpened():
                if not self.live:
                    raise FileNotFoundError(f"cannot open video {self.source}")
                logger.warning("camera %s not available, retrying in %.1fs", self.source, backoff)
                self._closed.wait(backoff)
                backoff = min(backoff * 2, self.reopen_max_s)
                continue
            logger.info("camera %s opened", self.source)
            while not self._closed.is_set():
                ok, bgr = self._cap.read()
                if not ok:
                    break
                backoff = 0.5
                pacer.wait()
                yield Frame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ts=time.time(), index=index)
                index += 1
            self._cap.release()
            if not self.live:
                return
            logger.warning("camera %s stopped delivering frames; reopening", self.source)

    def close(self) -> None:
        self._closed.set()


def open_camera(
    source: str,
    *,
    width: int = 640,
    height: int = 480,
    max_fps: float = 0.0,
    folder_repeat: int = 1,
    folder_loop: bool = False,
) -> CameraSource:
    """``inbox:DIR`` gives an :class:`InboxSource`, a folder path a :class:`FolderSource`, anything
    else a :class:`CaptureSource`."""
    if source.startswith(INBOX_PREFIX):
        return InboxSource(
            source[len(INBOX_PREFIX) :], width=width, height=height, max_fps=max_fps, repeat=folder_repeat
        )
    if Path(source).is_dir():
        return FolderSource(source, max_fps=max_fps, repeat=folder_repeat, loop=folder_loop)
    return CaptureSource(source, width=width, height=height, max_fps=max_fps)
