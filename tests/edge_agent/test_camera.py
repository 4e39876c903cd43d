"""Camera sources: a folder of images (PIL only) and a video file through OpenCV."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent.camera import CaptureSource, FolderSource, InboxSource, open_camera


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((48, 64, 3), i * 40, dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("ignored")


def test_folder_source_yields_rgb_frames_in_order(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 3)
    source = open_camera(str(tmp_path / "imgs"), folder_repeat=2)
    assert isinstance(source, FolderSource)
    frames = list(source.frames())
    assert len(frames) == 6
    assert [f.index for f in frames] == list(range(6))
    assert all(f.rgb.shape == (48, 64, 3) and f.rgb.dtype == np.uint8 for f in frames)
    assert [int(f.rgb[0, 0, 0]) for f in frames] == [0, 0, 40, 40, 80, 80]
    assert all(b.ts >= a.ts for a, b in itertools.pairwise(frames))


def test_folder_source_loop_and_close(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", 2)
    source = FolderSource(tmp_path / "imgs", loop=True)
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 5:
            source.close()
    assert len(frames) == 5


def test_empty_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        FolderSource(tmp_path)


def test_video_file_source(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(4):
        bgr = np.zeros((48, 64, 3), dtype=np.uint8)
        bgr[..., 2] = 200  # red in BGR order
        writer.write(bgr)
    writer.release()
    source = open_camera(str(path))
    assert isinstance(source, CaptureSource) and not source.live
    frames = list(source.frames())
    assert len(frames) == 4
    r, g, b = frames[0].rgb[24, 32]
    assert r > 150 and g < 50 and b < 50  # converted to RGB


def test_missing_video_file(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    with pytest.raises(FileNotFoundError):
        list(CaptureSource(str(tmp_path / "nope.mp4")).frames())


def test_inbox_source_shows_each_visitor_then_an_empty_scene(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    camera = open_camera(f"inbox:{inbox}", width=64, height=48, max_fps=200, folder_repeat=3)
    assert isinstance(camera, InboxSource)
    frames = camera.frames()
    empty = next(frames)
    assert empty.rgb.shape == (48, 64, 3) and int(empty.rgb.mean()) == 96
    staged = tmp_path / "b.png"
    Image.new("RGB", (20, 10), (255, 0, 0)).save(staged)
    staged.replace(inbox / "b.png")  # renamed in: never read half-written
    (inbox / "notes.txt").write_text("not an image")
    seen = [next(frames) for _ in range(6)]
    red = [f for f in seen if f.rgb.shape == (10, 20, 3)]
    assert len(red) == 3 and all(int(f.rgb[0, 0, 0]) == 255 for f in red)
    assert seen[-1].rgb.shape == (48, 64, 3)  # back to the empty scene
    assert (inbox / "shown" / "b.png").exists() and not (inbox / "b.png").exists()
    assert [f.index for f in seen] == sorted(f.index for f in seen)
    camera.close()
    assert list(frames) == []


def test_inbox_source_keeps_queued_visitors_apart_with_an_empty_scene(tmp_path: Path) -> None:
    """Two visitors already waiting are not shown back to back: the empty scene lasts ``gap_s``
    (frame time) in between, so the agent's track of the first ends before the second arrives
    (at the same spot, one track would swallow the second visitor)."""
    inbox = tmp_path / "inbox"
    camera = InboxSource(inbox, width=64, height=48, max_fps=200, repeat=2, gap_s=0.2)
    for name, colour in (("a.png", (255, 0, 0)), ("b.png", (0, 0, 255))):
        staged = tmp_path / name
        Image.new("RGB", (20, 10), colour).save(staged)
        staged.replace(inbox / name)
    frames = camera.frames()
    seen = [next(frames) for _ in range(200)]
    camera.close()
    kinds = ["a" if f.rgb[0, 0, 0] == 255 else "b" if f.rgb[0, 0, 2] == 255 else "-" for f in seen]
    last_a, first_b = len(kinds) - 1 - kinds[::-1].index("a"), kinds.index("b")
    assert kinds.count("a") == kinds.count("b") == 2 and last_a < first_b
    gap = seen[first_b - 1].ts - seen[last_a].ts  # the last empty frame before the second visitor
    assert set(kinds[last_a + 1 : first_b]) == {"-"} and gap > 0.2, (gap, kinds[:40])
