"""Progress bars for the commands that take more than a few seconds (tqdm).

A bar is drawn only on a terminal: logs, pipes, cron and tests get nothing extra. Every long
command draws its bars through :func:`progress_bar` (tests/accessctl/test_progress.py checks it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm


def stream_is_terminal(stream: IO[str] | Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    unit_scale: bool = False,
    stream: IO[str] | None = None,
) -> tqdm:
    """A tqdm bar on ``stream`` (default stderr), disabled unless ``stream`` is a terminal.

    Management commands pass ``self.stderr._out`` (Django's wrapper would add a newline per update).
    """
    stream = stream if stream is not None else sys.stderr
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        unit_scale=unit_scale,
        file=stream,
        disable=not stream_is_terminal(stream),
        dynamic_ncols=True,
    )
