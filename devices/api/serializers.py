"""DRF serializers of edge devices: identity and health only.

Never exposes secrets: the server holds only the device's public key; ``config`` (pushed to the
agent, may carry site details) stays out of the API.
"""

from __future__ import annotations

from rest_framework import serializers

from devices.models import EdgeDevice


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
        ]
        read_only_fields = fields
