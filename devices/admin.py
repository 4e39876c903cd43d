"""Admin for edge devices. Keys are created by the ``provision_device`` command, never typed in.

The last heartbeat and the pushed configuration are shown as readable tables (one row per setting,
nested values as ``a.b``), and the configuration is edited as indented JSON, not one raw line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html, format_html_join

from accessctl.models import AccessEvent, Door
from devices.allowlist import offline_mode
from devices.model_rollout import (
    RolloutRefused,
    fleet_model_counts,
    rollout_candidates,
    rollout_check,
    rollout_counts,
    rollout_create,
    rollout_pause,
    rollout_resume,
    rollout_roll_back,
)
from devices.models import DeviceAllowlist, DeviceRevocation, EdgeDevice, ModelRollout, ModelRolloutDevice


def _flattened(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key in sorted(value):
            yield from _flattened(value[key], f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list) and not all(isinstance(item, str | int | float) for item in value):
        for index, item in enumerate(value):
            yield from _flattened(item, f"{prefix}[{index}]")
    elif isinstance(value, list):
        yield prefix, ", ".join(str(item) for item in value) or "(none)"
    elif value is None:
        yield prefix, "–"
    elif isinstance(value, bool):
        yield prefix, "yes" if value else "no"
    else:
        yield prefix, str(value)


def settings_table(value: Any) -> str:
    """HTML table of a JSON object (escaped), or a dash when it is empty."""
    rows = list(_flattened(value or {}))
    if not rows:
        return "–"
    body = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows)
    return format_html('<table class="json-table">{}</table>', body)


class IndentedJSONField(forms.JSONField):
    """Edit JSON indented, one key a line, keys sorted."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True, cls=self.encoder)


@admin.register(EdgeDevice)
class EdgeDeviceAdmin(admin.ModelAdmin):
    list_display = ["uid", "name", "door", "status", "last_seen", "agent_version", "model_version"]
    list_filter = ["status", "door"]
    search_fields = ["uid", "name"]
    exclude = ["mqtt_password_hash", "last_heartbeat"]
    readonly_fields = [
        "public_key", "last_seen", "agent_version", "model_version", "heartbeat", "offline_allowlist", "created_at",
    ]  # fmt: skip

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, Any, Any, list[Any]]:
        """A device the access log names is kept (the log refers to it by id and uid): listed as protected."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        ids = [obj.pk for obj in objs]
        logged = set(AccessEvent.objects.filter(device_id__in=ids).values_list("device_id", flat=True).distinct())
        protected = [*protected, *(f"{obj} (named by the access log)" for obj in objs if obj.pk in logged)]
        return deleted, counts, perms_needed, protected

    @admin.display(description="Last heartbeat")
    def heartbeat(self, obj: EdgeDevice) -> str:
        return settings_table(obj.last_heartbeat)

    @admin.display(description="Offline allow-list")
    def offline_allowlist(self, obj: EdgeDevice) -> str:
        state = DeviceAllowlist.objects.filter(device=obj).first()
        if state is None:
            return "–"
        pending = list(obj.revocations.filter(acknowledged_at__isnull=True).values_list("seq", flat=True))
        return settings_table({
            "offline mode now": offline_mode(obj, state),
            "version issued": state.version,
            "expires": str(state.expires_at or "–"),
            "entries": state.entry_count,
            "bytes": state.bytes,
            "refused": state.refused or "–",
            "acknowledged version": state.acked_version,
            "acknowledged revocation": state.acked_revocation_seq,
            "revocations not acknowledged": pending,
        })  # fmt: skip

    def formfield_for_dbfield(self, db_field: models.Field, request: HttpRequest, **kwargs: Any) -> forms.Field | None:
        if db_field.name == "config":
            return IndentedJSONField(
                required=False,
                initial=dict,
                help_text=db_field.help_text,
                widget=forms.Textarea(attrs={"rows": 12, "cols": 60, "class": "json-editor"}),
            )
        return super().formfield_for_dbfield(db_field, request, **kwargs)


class _ReadOnlyAdmin(admin.ModelAdmin):
    """State the server keeps by itself: shown, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(DeviceAllowlist)
class DeviceAllowlistAdmin(_ReadOnlyAdmin):
    list_display = [
        "device", "version", "entry_count", "bytes", "issued_at", "expires_at", "acked_version", "acked_offline_mode",
        "acked_at", "refused",
    ]  # fmt: skip
    list_select_related = ["device"]
    search_fields = ["device__uid"]
    exclude = ["digests", "pending_refs", "windows"]


@admin.register(DeviceRevocation)
class DeviceRevocationAdmin(_ReadOnlyAdmin):
    list_display = ["device", "seq", "reason", "sent_at", "acknowledged_at", "send_error"]
    list_filter = ["reason", ("acknowledged_at", admin.EmptyFieldListFilter)]
    list_select_related = ["device"]
    search_fields = ["device__uid", "refs"]


class ModelRolloutForm(forms.ModelForm):
    """Start a rollout: the version, where (doors, devices, neither: the fleet) and how many (a canary %)."""

    doors = forms.ModelMultipleChoiceField(queryset=Door.objects.order_by("name"), required=False)
    devices = forms.ModelMultipleChoiceField(
        queryset=EdgeDevice.objects.exclude(model_version="").order_by("uid"),
        required=False,
        help_text="Devices in embedding mode (they report a model version). Neither doors nor devices: the fleet.",
    )
    percent = forms.IntegerField(min_value=1, max_value=100, required=False, help_text="A canary: this % of them.")

    class Meta:
        model = ModelRollout
        fields = ["model_version", "note"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        try:
            if data.get("model_version"):
                rollout_check(model_version=data["model_version"])
            targets = rollout_candidates(
                doors=[d.pk for d in data.get("doors") or []], devices=[d.uid for d in data.get("devices") or []]
            )
            if not targets.exclude(model_version=data.get("model_version", "")).exists():
                raise RolloutRefused("No device in embedding mode in that scope needs this version.")
        except RolloutRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


class ModelRolloutDeviceInline(admin.TabularInline):
    model = ModelRolloutDevice
    extra = 0
    can_delete = False
    fields = readonly_fields = [
        "device", "previous_model_version", "status", "reason", "send_error", "offered_at", "download_started_at",
        "switched_at", "rollback_sent_at",
    ]  # fmt: skip

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelRollout)
class ModelRolloutAdmin(admin.ModelAdmin):
    """Rollouts with per-device status; actions pause / resume / roll back; the changelist shows how
    many devices run each model version (their heartbeats)."""

    list_display = ["id", "model_version", "state", "progress", "created_by_name", "created_at", "finished_at"]
    list_filter = ["state", "model_version"]
    inlines = [ModelRolloutDeviceInline]
    actions = ["pause", "resume", "roll_back"]
    form = ModelRolloutForm
    change_list_template = "admin/devices/modelrollout/change_list.html"

    def get_inline_instances(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return super().get_inline_instances(request, obj) if obj is not None else []

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return []
        return ["model_version", "state", "scope", "note", "created_by_name", "created_at", "finished_at", "log"]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return ["model_version", "doors", "devices", "percent", "note"]
        return self.get_readonly_fields(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("devices.change_edgedevice")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("devices.change_edgedevice")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Devices")
    def progress(self, obj: ModelRollout) -> str:
        counts = {k: v for k, v in rollout_counts(obj).items() if v}
        return ", ".join(f"{v} {k}" for k, v in counts.items()) or "–"

    @admin.display(description="History")
    def log(self, obj: ModelRollout) -> str:
        rows = [(h.get("at", ""), h.get("action", ""), h.get("actor", "")) for h in obj.history or []]
        return format_html_join("", "<div>{} {} ({})</div>", rows) or "–"

    def save_model(self, request: HttpRequest, obj: ModelRollout, form: Any, change: bool) -> None:
        if change:
            return
        data = form.cleaned_data
        created = rollout_create(
            model_version=data["model_version"],
            doors=[d.pk for d in data.get("doors") or []],
            devices=[d.uid for d in data.get("devices") or []],
            percent=data.get("percent"),
            note=data.get("note") or "",
            actor=request.user,
        )
        obj.pk, obj.state, obj.created_at = created.pk, created.state, created.created_at

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        pass  # the per-device rows are the service's

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {**(extra_context or {}), "fleet_models": fleet_model_counts()})

    def _each(self, request: HttpRequest, queryset: Any, fn: Any, done: str) -> None:
        for rollout in queryset:
            try:
                fn(rollout=rollout, actor=request.user)
                self.message_user(request, f"Rollout {rollout.pk} {done}.")
            except RolloutRefused as exc:
                self.message_user(request, str(exc), level=messages.ERROR)

    @admin.action(description="Pause the selected rollouts")
    def pause(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, rollout_pause, "paused")

    @admin.action(description="Resume the selected rollouts")
    def resume(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, rollout_resume, "resumed")

    @admin.action(description="Roll back the selected rollouts on every device")
    def roll_back(self, request: HttpRequest, queryset: Any) -> None:
        self._each(request, queryset, rollout_roll_back, "rolled back")
