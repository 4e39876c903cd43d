"""Polling helper shared by the tests and the bench scripts (stdlib only)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, step: float = 0.2) -> bool:
    """Poll ``predicate`` every ``step`` seconds until it is true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
