"""``{{ event|offline_mark }}``: the offline mark of an access event (see accessctl.offline_marks)."""

from __future__ import annotations

from django import template

from accessctl.models import AccessEvent
from accessctl.offline_marks import offline_mark, offline_mark_text

register = template.Library()


@register.filter(name="offline_mark")
def offline_mark_filter(event: AccessEvent) -> str:
    return offline_mark_text(offline_mark(event))


@register.filter(name="offline_disagrees")
def offline_disagrees_filter(event: AccessEvent) -> bool:
    mark = offline_mark(event)
    return mark is not None and mark["agrees"] is False
