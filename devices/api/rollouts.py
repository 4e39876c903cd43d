"""REST API of model rollouts: ``/api/v1/rollouts/`` (list, create, per-device status),
``.../<id>/pause|resume|rollback`` and ``/api/v1/rollouts/fleet`` (devices per model version).

Reading is ``devices:read`` (session: ``devices.view_edgedevice``); starting, pausing, resuming and
rolling back is ``devices:write`` (session: ``devices.change_edgedevice``): whoever may manage the
devices may change the model they run."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accessctl.api.views import ApiMixin
from accessctl.models import ApiToken
from devices.model_rollout import (
    fleet_model_counts,
    rollout_counts,
    rollout_create,
    rollout_pause,
    rollout_resume,
    rollout_roll_back,
)
from devices.models import ModelRollout, ModelRolloutDevice

TAG = "rollouts"
VIEW = ["devices.view_edgedevice"]
CHANGE = ["devices.change_edgedevice"]


class RolloutDeviceSerializer(serializers.ModelSerializer):
    device = serializers.CharField(source="device.uid", read_only=True)

    class Meta:
        model = ModelRolloutDevice
        fields = [
            "device", "previous_model_version", "status", "reason", "send_error", "offered_at",
            "download_started_at", "switched_at", "rollback_sent_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = fields


class RolloutSerializer(serializers.ModelSerializer):
    devices = RolloutDeviceSerializer(source="targets", many=True, read_only=True)
    counts = serializers.SerializerMethodField()

    class Meta:
        model = ModelRollout
        fields = [
            "id", "model_version", "state", "scope", "note", "created_by_name", "created_at", "updated_at",
            "finished_at", "history", "counts", "devices",
        ]  # fmt: skip
        read_only_fields = fields

    def get_counts(self, obj: ModelRollout) -> dict[str, int]:
        return rollout_counts(obj)


class RolloutCreateSerializer(serializers.Serializer):
    model_version = serializers.CharField(max_length=64)
    doors = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, default=list)
    devices = serializers.ListField(child=serializers.CharField(max_length=64), required=False, default=list)
    percent = serializers.IntegerField(min_value=1, max_value=100, required=False, allow_null=True, default=None)
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class FleetModelSerializer(serializers.Serializer):
    model_version = serializers.CharField()
    devices = serializers.IntegerField()


@extend_schema_view(
    list=extend_schema(summary="List model rollouts", tags=[TAG]),
    retrieve=extend_schema(summary="Get a model rollout with its per-device status", tags=[TAG]),
)
class ModelRolloutViewSet(
    ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    queryset = ModelRollout.objects.prefetch_related("targets__device").order_by("-created_at", "-id")
    serializer_class = RolloutSerializer
    read_scope = ApiToken.Scope.DEVICES_READ
    write_scope = ApiToken.Scope.DEVICES_WRITE
    session_permissions = {
        "list": VIEW, "retrieve": VIEW, "fleet": VIEW, "create": CHANGE, "pause": CHANGE, "resume": CHANGE,
        "rollback": CHANGE,
    }  # fmt: skip

    @extend_schema(
        summary="Start a rollout of a model version to devices in embedding mode",
        description=(
            "Scope: `doors` and/or `devices` (uids; neither: the whole fleet), optionally only `percent` % of "
            "them (a canary). Refused (400) when the version is not registered and signed, its bundle does not "
            "verify, or the gallery has no vectors of it for the active model's people."
        ),
        tags=[TAG],
        request=RolloutCreateSerializer,
        responses={201: RolloutSerializer},
    )
    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        params = RolloutCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        rollout = rollout_create(**params.validated_data, actor=request.user)
        return Response(RolloutSerializer(rollout).data, status=status.HTTP_201_CREATED)

    def _act(self, fn: object, request: Request) -> Response:
        rollout = fn(rollout=self.get_object(), actor=request.user)  # type: ignore[operator]
        return Response(RolloutSerializer(rollout).data)

    @extend_schema(summary="Pause a rollout (no more offers or downloads)", tags=[TAG], request=None,
                   responses={200: RolloutSerializer})  # fmt: skip
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        return self._act(rollout_pause, request)

    @extend_schema(summary="Resume a paused rollout (offers again to devices not switched)", tags=[TAG],
                   request=None, responses={200: RolloutSerializer})  # fmt: skip
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._act(rollout_resume, request)

    @extend_schema(summary="Roll a rollout back on every device", tags=[TAG], request=None,
                   responses={200: RolloutSerializer})  # fmt: skip
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: str | None = None) -> Response:
        return self._act(rollout_roll_back, request)

    @extend_schema(summary="How many devices run each model version", tags=[TAG],
                   responses={200: FleetModelSerializer(many=True)})  # fmt: skip
    @action(detail=False, methods=["get"])
    def fleet(self, request: Request) -> Response:
        return Response(FleetModelSerializer(fleet_model_counts(), many=True).data)
