"""Per-token rate limit: ``ApiToken.rate_limit_per_minute`` requests per clock minute.

A fixed one-minute window counted with an atomic ``incr`` in Django's cache (Redis/Valkey in
production: one counter shared by every API process). Session requests are not limited here.
If the cache is unreachable the request is let through and the failure logged: the limit
protects capacity, it is not an access control.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accessctl.models import ApiToken

logger = logging.getLogger(__name__)

WINDOW_S = 60


class ApiTokenRateThrottle(BaseThrottle):
    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        now = time.time()
        window = int(now // WINDOW_S)
        key = f"api-throttle:{token.pk}:{window}"
        try:
            cache.add(key, 0, timeout=WINDOW_S * 2)
            count = cache.incr(key)
        except Exception:
            logger.warning("rate limit cache unavailable; token %s not limited", token.prefix, exc_info=True)
            return True
        if count > token.rate_limit_per_minute:
            self._wait = (window + 1) * WINDOW_S - now
            if count == token.rate_limit_per_minute + 1:
                logger.info("token %s over its rate limit (%d/min)", token.prefix, token.rate_limit_per_minute)
            return False
        return True

    def wait(self) -> float | None:
        return self._wait
