"""Progress bars: drawn on a terminal, nothing at all otherwise; every long command uses the one helper."""

from __future__ import annotations

import io
import re
from pathlib import Path

from accessctl.project.progress import progress_bar

ROOT = Path(__file__).resolve().parents[3]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_on_a_terminal_and_nothing_elsewhere() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        for _ in progress_bar(range(3), desc="work", unit="photo", stream=stream):
            pass
    assert "work" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert pipe.getvalue() == ""


def test_long_commands_draw_their_bars_through_the_helper() -> None:
    """tqdm is used only by the helper (which disables it off a terminal); the long commands use it."""
    sources = [p for top in ("accessctl", "recognition", "devices") for p in (ROOT / top).rglob("*.py")]
    direct = [
        str(p.relative_to(ROOT)) for p in sources if re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)
    ]
    assert direct == ["accessctl/project/progress.py"]
    for module in (
        "recognition/management/commands/enroll_folder.py",
        "recognition/management/commands/reembed_gallery.py",
        "recognition/management/commands/gallery_index.py",
        "recognition/embedding_cache.py",  # evaluate_lfw and calibrate_threshold: detection and embedding
        "recognition/datasets.py",  # the LFW download
        "devices/demo.py",  # the demo's enrolment
    ):
        assert "progress_bar(" in (ROOT / module).read_text(), module
