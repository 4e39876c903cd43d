"""``{{ event|offline_mark }}``: the offline mark of an access event; ``{{ device|link_mode }}``: what a
dashboard device does without the server (see accessctl.offline_marks)."""

from __future__ import annotations

import time
from typing import Any

from django import template

from accessctl.models import AccessEvent
from accessctl.offline_marks import LinkMode, link_mode, offline_mark, offline_mark_text

register = template.Library()


@register.filter(name="offline_mark")
def offline_mark_filter(event: AccessEvent) -> str:
    return offline_mark_text(offline_mark(event))


@register.filter(name="offline_disagrees")
def offline_disagrees_filter(event: AccessEvent) -> bool:
    mark = offline_mark(event)
    return mark is not None and mark["agrees"] is False


@register.filter(name="link_mode")
def link_mode_filter(device: Any) -> LinkMode:
    """The link mode of a dashboard tile's device (any object with ``status`` and ``last_heartbeat``)."""
    return link_mode(status=str(device.status), heartbeat=getattr(device, "last_heartbeat", None), now=time.time())
