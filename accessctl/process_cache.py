"""Configuration rows read on every door decision, kept per process for a few seconds.

Thresholds and webhook subscriptions change a few times a year but were read for every
detection. A :class:`ProcessCache` keeps what it loaded for ``ttl_s``; a save or delete of one of
its models in this process clears it at once, other processes see the change within ``ttl_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from django.db.models import Model
from django.db.models.signals import post_delete, post_save

T = TypeVar("T")


class ProcessCache:
    def __init__(self, name: str, *, ttl_s: float, cleared_by: tuple[type[Model], ...]) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._values: dict[Hashable, tuple[float, Any]] = {}
        for model in cleared_by:
            post_save.connect(self.clear, sender=model, weak=False, dispatch_uid=f"{name}-save")
            post_delete.connect(self.clear, sender=model, weak=False, dispatch_uid=f"{name}-delete")

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        """The value kept for ``key``, or ``load()`` when there is none younger than ``ttl_s``."""
        now = time.monotonic()
        with self._lock:
            hit = self._values.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = load()
        with self._lock:
            self._values[key] = (now, value)
        return value

    def clear(self, **_: object) -> None:
        with self._lock:
            self._values.clear()
