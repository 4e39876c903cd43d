"""Admin for edge devices. Keys are created by the ``provision_device`` command, never typed in."""

from __future__ import annotations

from django.contrib import admin

from devices.models import EdgeDevice


@admin.register(EdgeDevice)
class EdgeDeviceAdmin(admin.ModelAdmin):
    list_display = ["uid", "name", "door", "status", "last_seen", "agent_version", "model_version"]
    list_filter = ["status", "door"]
    search_fields = ["uid", "name"]
    exclude = ["mqtt_password_hash"]
    readonly_fields = ["public_key", "last_seen", "agent_version", "model_version", "last_heartbeat", "created_at"]
