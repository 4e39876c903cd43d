"""DRF serializers of edge devices: identity and health only.

Never exposes secrets: the server holds only the device's public key; ``config`` (pushed to the
agent, may carry site details) stays out of the API.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.allowlist import offline_mode
from devices.models import DeviceAllowlist, DeviceRevocation, EdgeDevice


class DeviceAllowlistSerializer(serializers.ModelSerializer):
    """The device's offline allow-list: the latest version issued and what the device acknowledged."""

    class Meta:
        model = DeviceAllowlist
        fields = [
            "version", "base_version", "issued_at", "expires_at", "model_version", "entry_count", "bytes",
            "full_bytes", "chunk_count", "revocation_seq", "refused", "push_error", "pushed_at", "acked_version",
            "acked_revocation_seq", "acked_offline_mode", "acked_expires_at", "acked_entries", "acked_at",
        ]  # fmt: skip
        read_only_fields = fields


class DeviceRevocationSerializer(serializers.ModelSerializer):
    """A revocation sent to the device and not acknowledged yet (``refs``: pseudonymous person uids)."""

    class Meta:
        model = DeviceRevocation
        fields = ["seq", "refs", "reason", "sent_at", "send_error", "created_at"]
        read_only_fields = fields


class EdgeDeviceSerializer(serializers.ModelSerializer):
    class Meta:
        model = EdgeDevice
        fields = [
            "id",
            "uid",
            "name",
            "door",
            "public_key",
            "status",
            "last_seen",
            "agent_version",
            "model_version",
            "last_heartbeat",
            "created_at",
            "offline_mode",
            "allowlist",
            "unacknowledged_revocations",
        ]
        read_only_fields = fields

    offline_mode = serializers.SerializerMethodField(
        help_text="online, or what the device does alone now that it cannot reach the server: offline-allowlist "
        "(it acknowledged an unexpired allow-list), offline-safe or offline-secure.",
    )
    allowlist = serializers.SerializerMethodField(
        help_text="The offline allow-list state; null when none was compiled."
    )
    unacknowledged_revocations = serializers.SerializerMethodField(
        help_text="Revocations sent to the device that it has not acknowledged yet."
    )

    def get_offline_mode(self, obj: EdgeDevice) -> str:
        return offline_mode(obj, getattr(obj, "allowlist", None))

    @extend_schema_field(DeviceAllowlistSerializer(allow_null=True))
    def get_allowlist(self, obj: EdgeDevice) -> dict | None:
        state = getattr(obj, "allowlist", None)
        return None if state is None else DeviceAllowlistSerializer(state).data

    @extend_schema_field(DeviceRevocationSerializer(many=True))
    def get_unacknowledged_revocations(self, obj: EdgeDevice) -> list[dict]:
        pending = getattr(obj, "unacked_revocations", None)
        if pending is None:
            pending = obj.revocations.filter(acknowledged_at__isnull=True).order_by("seq")
        return DeviceRevocationSerializer(pending, many=True).data
