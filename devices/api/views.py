"""REST API v1: edge devices, read-only (provisioning happens in the admin / ``provision_device``)."""

from __future__ import annotations

import django_filters as filters
from django.db.models import Prefetch
from drf_spectacular.utils import extend_schema, extend_schema_view

from accessctl.api.filters import DateTimeFilter
from accessctl.api.views import ApiReadOnlyViewSet
from accessctl.models import ApiToken
from devices.api.serializers import EdgeDeviceSerializer
from devices.models import DeviceRevocation, EdgeDevice


class EdgeDeviceFilter(filters.FilterSet):
    door = filters.NumberFilter(field_name="door_id")
    seen_since = DateTimeFilter(field_name="last_seen", lookup_expr="gte")

    class Meta:
        model = EdgeDevice
        fields = ["status", "door", "uid", "model_version"]


@extend_schema_view(
    list=extend_schema(summary="List edge devices with their status", tags=["devices"]),
    retrieve=extend_schema(summary="Get an edge device", tags=["devices"]),
)
class EdgeDeviceViewSet(ApiReadOnlyViewSet):
    queryset = (
        EdgeDevice.objects.select_related("allowlist")
        .prefetch_related(
            Prefetch(
                "revocations",
                queryset=DeviceRevocation.objects.filter(acknowledged_at__isnull=True).order_by("seq"),
                to_attr="unacked_revocations",
            )
        )
        .order_by("uid", "id")
    )
    serializer_class = EdgeDeviceSerializer
    filterset_class = EdgeDeviceFilter
    read_scope = ApiToken.Scope.DEVICES_READ
