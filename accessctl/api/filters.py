"""django-filter FilterSets of the core API (query parameters of the list endpoints), and the filter
backend every API view uses: it refuses unknown query parameters and reports every bad one at once."""

from __future__ import annotations

import datetime as dt
from typing import Any

import django_filters as filters
from django import forms
from django.db.models import QuerySet
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from django_filters.widgets import SuffixedMultiWidget
from rest_framework.request import Request
from rest_framework.settings import api_settings

from accessctl.codes import DECISION_CHOICES, REASON_CHOICES
from accessctl.exceptions import InvalidInput
from accessctl.models import AccessEvent, AccessGroup, Alarm, Area, Door, Person, Schedule, WebhookDelivery

# Query parameters of the paginators (whichever a view uses), besides its filters.
_PAGINATION_PARAMS = ("limit_query_param", "offset_query_param", "cursor_query_param", "page_query_param")
_PAGINATION_SIZE_PARAMS = ("page_size_query_param",)


def filter_parameter_names(filterset: filters.FilterSet) -> list[str]:
    """The query parameters ``filterset`` reads (a range filter reads ``<name>_after``/``_before``...)."""
    names: list[str] = []
    for name, field in filterset.form.fields.items():
        widget = field.widget
        if isinstance(widget, SuffixedMultiWidget):
            names += [widget.suffixed(name, suffix) for suffix in widget.suffixes]
        else:
            names.append(name)
    return names


def _view_parameter_names(view: Any) -> set[str]:
    """Query parameters a view reads besides its filters: its paginator's, and ``format``."""
    names = {api_settings.URL_FORMAT_OVERRIDE} if api_settings.URL_FORMAT_OVERRIDE else set()
    paginator = getattr(view, "paginator", None)
    for attr in (*_PAGINATION_PARAMS, *_PAGINATION_SIZE_PARAMS):
        value = getattr(paginator, attr, None)
        if value:
            names.add(value)
    return names


class ApiFilterBackend(DjangoFilterBackend):
    """django-filter, strict: an unknown query parameter is an error, not silently ignored (a client
    sending ``since=yesterday`` where the filter is ``occurred_after`` would otherwise get the whole
    log), and every bad parameter is reported at once: ``details`` maps each to its messages."""

    def filter_queryset(self, request: Request, queryset: QuerySet, view: Any) -> QuerySet:
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None and getattr(view, "action", None) != "list":
            return queryset  # an extra action or a detail route of a view without filters
        errors: dict[str, list[str]] = {}
        if filterset is not None and not filterset.is_valid():
            errors = {name: list(messages) for name, messages in filterset.errors.items()}
        accepted = filter_parameter_names(filterset) if filterset is not None else []
        known = set(accepted) | _view_parameter_names(view)
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            filters_named = ", ".join(sorted(accepted)) if accepted else "nothing"
            hint = f"Unknown parameter. This endpoint filters by: {filters_named}."
            for name in unknown:
                errors[name] = [hint]
        if errors:
            names = ", ".join(sorted(errors))
            raise InvalidInput(f"Invalid query parameter(s): {names}.", details=errors)
        return filterset.qs if filterset is not None else queryset


class UtcIsoDateTimeField(IsoDateTimeField):
    """ISO 8601 with any offset Python accepts, normalised to UTC (PostgreSQL refuses offsets over 15:59)."""

    def to_python(self, value: object) -> dt.datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(dt.UTC)
        except OverflowError:
            raise forms.ValidationError("Date and time out of range.", code="overflow") from None


class DateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class PersonFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains", help_text="Case-insensitive substring of the name.")
    external_id = filters.CharFilter(help_text="Exact HR identifier.")
    updated_since = DateTimeFilter(
        field_name="updated_at", lookup_expr="gte", help_text="Changed at or after (ISO 8601)."
    )
    access_group = filters.NumberFilter(field_name="access_groups", help_text="Member of this access group id.")

    class Meta:
        model = Person
        fields = ["status", "kind", "watchlist", "external_id", "name"]


class DoorFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Door
        fields = ["mode", "fail_mode", "name"]


class AreaFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Area
        fields = ["name", "passback"]


class AccessGroupFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")
    person = filters.NumberFilter(field_name="people", help_text="Groups this person id belongs to.")
    door = filters.NumberFilter(field_name="doors", help_text="Groups that open this door id.")

    class Meta:
        model = AccessGroup
        fields = ["name", "schedule"]

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        return super().filter_queryset(queryset).distinct()


class ScheduleFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Schedule
        fields = ["name"]


class AccessEventFilter(filters.FilterSet):
    occurred_after = DateTimeFilter(field_name="occurred_at", lookup_expr="gte", help_text="At or after (ISO 8601).")
    occurred_before = DateTimeFilter(
        field_name="occurred_at", lookup_expr="lt", help_text="Strictly before (ISO 8601)."
    )
    decision = filters.ChoiceFilter(choices=DECISION_CHOICES)
    reason = filters.MultipleChoiceFilter(choices=REASON_CHOICES, help_text="Repeat for several reasons.")
    door = filters.NumberFilter(field_name="door_id")
    person = filters.NumberFilter(field_name="person_id")
    device = filters.NumberFilter(field_name="device_id")
    device_uid = filters.CharFilter()

    class Meta:
        model = AccessEvent
        fields = ["decision", "reason", "source", "door", "person", "device", "device_uid"]


class AlarmFilter(filters.FilterSet):
    acknowledged = filters.BooleanFilter(field_name="acknowledged_at", lookup_expr="isnull", exclude=True)
    raised_after = DateTimeFilter(field_name="raised_at", lookup_expr="gte")
    raised_before = DateTimeFilter(field_name="raised_at", lookup_expr="lt")
    door = filters.NumberFilter(field_name="door_id")
    device = filters.NumberFilter(field_name="device_id")

    class Meta:
        model = Alarm
        fields = ["kind", "acknowledged", "door", "device"]


class WebhookDeliveryFilter(filters.FilterSet):
    subscription = filters.NumberFilter(field_name="subscription_id")
    created_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = WebhookDelivery
        fields = ["status", "event_type", "subscription"]
