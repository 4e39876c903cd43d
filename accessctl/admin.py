"""Admin for the core domain. Access events are read-only: the log is append-only."""

from __future__ import annotations

import zoneinfo
from functools import cache
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest

from accessctl.models import (
    AccessEvent,
    AccessGroup,
    Area,
    AreaPresence,
    Door,
    Holiday,
    Person,
    Schedule,
    ScheduleWindow,
)
from accessctl.passback import area_presence_reset
from accessctl.privacy.admin import erase_people, export_people
from accessctl.privacy.erasure import person_erase
from accessctl.second_factor import person_pin_set


class PersonAdminForm(forms.ModelForm):
    """The person, with a write-only PIN (stored hashed by accessctl.second_factor.person_pin_set)."""

    new_pin = forms.CharField(
        required=False,
        label="New PIN",
        widget=forms.PasswordInput(render_value=False),
        help_text="4-12 digits, for doors that require a second factor. Empty: unchanged.",
    )
    clear_pin = forms.BooleanField(required=False, label="Remove the PIN")

    class Meta:
        model = Person
        fields = [
            "name", "external_id", "kind", "status", "watchlist", "valid_from", "valid_until", "card_number", "notes",
        ]  # fmt: skip

    def clean_new_pin(self) -> str:
        pin = self.cleaned_data.get("new_pin") or ""
        if pin and not (pin.isdigit() and 4 <= len(pin) <= 12):
            raise forms.ValidationError("A PIN is 4 to 12 digits.")
        return pin


@admin.register(Person)
class PersonAdmin(admin.ModelAdmin):
    form = PersonAdminForm
    list_display = ["name", "external_id", "kind", "status", "valid_from", "valid_until", "watchlist"]
    list_filter = ["status", "kind", "watchlist", "access_groups"]
    search_fields = ["name", "external_id", "notes"]
    readonly_fields = ["uid", "created_at", "updated_at", "pin_set"]
    fieldsets = [
        (None, {"fields": ["name", "external_id", "kind", "status", "watchlist"]}),
        ("Validity", {"fields": ["valid_from", "valid_until"]}),
        ("Second factor", {"fields": ["card_number", "pin_set", "new_pin", "clear_pin"]}),
        ("Notes", {"fields": ["notes"]}),
        ("Record", {"fields": ["uid", "created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    actions = [export_people, erase_people]

    @admin.display(description="PIN set", boolean=True)
    def pin_set(self, obj: Person) -> bool:
        return bool(obj.pin_hash)

    def save_model(self, request: HttpRequest, obj: Person, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("new_pin"):
            person_pin_set(person=obj, pin=form.cleaned_data["new_pin"])
        elif form.cleaned_data.get("clear_pin"):
            person_pin_set(person=obj, pin=None)

    def get_actions(self, request: HttpRequest) -> dict:
        # Deleting a person must erase them everywhere: the "Erase" action replaces bulk delete.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def delete_model(self, request: HttpRequest, obj: Person) -> None:
        person_erase(person=obj, actor=request.user)


class ScheduleWindowInline(admin.TabularInline):
    model = ScheduleWindow
    extra = 1


class HolidayInline(admin.TabularInline):
    model = Holiday
    extra = 0


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = ["name", "description"]
    search_fields = ["name"]
    inlines = [ScheduleWindowInline, HolidayInline]


@cache
def _timezone_choices() -> list[tuple[str, str]]:
    """IANA zones (the same set ``validate_timezone`` accepts), UTC first, the rest alphabetical."""
    zones = sorted(zoneinfo.available_timezones() - {"UTC"})
    return [("UTC", "UTC"), *((zone, zone.replace("_", " ")) for zone in zones)]


class DoorAdminForm(forms.ModelForm):
    """The door; the issue 23 settings (door inputs, cooldown, second factor) keep their defaults when a
    form leaves them out or empty (forms and scripts written before them)."""

    _DEFAULTED = ("held_open_s", "cooldown_s", "second_factor")

    class Meta:
        model = Door
        fields = "__all__"  # noqa: DJ007 - every door setting is the administrator's

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in self._DEFAULTED:
            if name in self.fields:
                self.fields[name].required = False

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        for name in self._DEFAULTED:
            if name in self.fields and cleaned.get(name) in (None, ""):
                cleaned[name] = Door._meta.get_field(name).default
        return cleaned


@admin.register(Door)
class DoorAdmin(admin.ModelAdmin):
    form = DoorAdminForm
    list_display = [
        "name", "location", "timezone", "mode", "fail_mode", "relay_pulse_ms", "match_threshold", "liveness_required",
        "liveness_threshold", "held_open_s", "cooldown_s", "second_factor",
    ]  # fmt: skip
    list_filter = ["mode", "fail_mode", "liveness_required", "second_factor"]
    search_fields = ["name", "location"]

    def formfield_for_dbfield(self, db_field: models.Field, request: HttpRequest, **kwargs: Any) -> forms.Field | None:
        if db_field.name == "timezone":
            # A choice of IANA zones, not free text; the model's validator still checks what is saved.
            return forms.ChoiceField(
                choices=_timezone_choices(),
                initial=db_field.default,
                label="Time zone",
                help_text="Schedules of this door are read in this zone.",
                validators=db_field.validators,
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)


@admin.register(AccessGroup)
class AccessGroupAdmin(admin.ModelAdmin):
    list_display = ["name", "schedule"]
    search_fields = ["name"]
    filter_horizontal = ["people", "doors"]


@admin.register(Area)
class AreaAdmin(admin.ModelAdmin):
    list_display = ["name", "passback"]
    list_filter = ["passback"]
    search_fields = ["name"]
    filter_horizontal = ["entry_doors", "exit_doors"]


@admin.register(AreaPresence)
class AreaPresenceAdmin(admin.ModelAdmin):
    """Who is inside which anti-passback area; changed by grants, reset by an operator (audited)."""

    list_display = ["person", "area", "inside", "changed_at"]
    list_filter = ["area", "inside"]
    search_fields = ["person__name"]
    readonly_fields = ["area", "person", "inside", "changed_at", "event"]
    actions = ["reset_passback"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Reset anti-passback (the person may enter again)")
    def reset_passback(self, request: HttpRequest, queryset: QuerySet[AreaPresence]) -> None:
        try:
            for presence in queryset.select_related("area", "person"):
                area_presence_reset(area=presence.area, person=presence.person, actor=request.user)  # type: ignore[arg-type]
        except PermissionDenied as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"Reset {queryset.count()} presence(s); recorded in the access log.")


@admin.register(AccessEvent)
class AccessEventAdmin(admin.ModelAdmin):
    list_display = [
        "occurred_at", "door", "device_uid", "person", "decision", "reason", "similarity", "margin", "liveness_edge",
        "liveness_server",
    ]  # fmt: skip
    list_filter = ["decision", "reason", "source", "door"]
    search_fields = ["detection_id", "device_uid", "person__name"]
    date_hierarchy = "occurred_at"
    list_select_related = ["door", "person"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AccessEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: AccessEvent | None = None) -> bool:
        return False


import accessctl.admin_api  # noqa: E402,F401  (API tokens, webhook subscriptions and deliveries)
