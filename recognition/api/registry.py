"""REST API of the model registry: ``/api/v1/models/`` (read), ``.../<id>/transition``,
``.../<id>/verify`` and ``.../<id>/manifest``.

Reading is ``devices:read`` (or ``devices.view_edgedevice`` for a session): who may see the fleet
may see the models it runs. Moving a version between states is an administrator's act: sessions
only, with ``recognition.change_modelversion``."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accessctl.api.views import ApiMixin
from accessctl.models import ApiToken
from faceengine.protocol.model_manifest import loads_strict
from recognition.api.serializers import ModelTransitionSerializer, ModelVerificationSerializer, ModelVersionSerializer
from recognition.model_registry import model_signed_manifest, model_version_transition, model_version_verify
from recognition.models import ModelVersion

TAG = "models"


@extend_schema_view(
    list=extend_schema(summary="List model versions", tags=[TAG]),
    retrieve=extend_schema(summary="Get a model version", tags=[TAG]),
)
class ModelVersionViewSet(ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = ModelVersion.objects.order_by("model_version")
    serializer_class = ModelVersionSerializer
    read_scope = ApiToken.Scope.DEVICES_READ
    session_permissions = {
        "list": ["devices.view_edgedevice"],
        "retrieve": ["devices.view_edgedevice"],
        "manifest": ["devices.view_edgedevice"],
        "verify": ["devices.view_edgedevice"],
        "transition": ["recognition.change_modelversion"],
    }

    @extend_schema(
        summary="Move a model version to another state",
        description=(
            "candidate -> shadow | active | retired; shadow -> candidate | active | retired; retired -> candidate. "
            "Activating verifies the signed bundle (never skipped), needs a gallery covering the people the "
            "active version covers (`force` skips only that) and retires the previously active version."
        ),
        tags=[TAG],
        request=ModelTransitionSerializer,
        responses={200: ModelVersionSerializer},
    )
    @action(detail=True, methods=["post"])
    def transition(self, request: Request, pk: str | None = None) -> Response:
        params = ModelTransitionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        model = model_version_transition(
            model=self.get_object(), to_state=params.validated_data["state"], actor=request.user,
            force=params.validated_data["force"], note=params.validated_data["note"],
        )  # fmt: skip
        return Response(ModelVersionSerializer(model).data)

    @extend_schema(
        summary="Verify a model version's signature and files on this server",
        description="409 with the reason code (`bad_signature`, `bad_file`, `missing_file`, ...) when it fails.",
        tags=[TAG],
        request=None,
        responses={200: ModelVerificationSerializer},
    )
    @action(detail=True, methods=["post"])
    def verify(self, request: Request, pk: str | None = None) -> Response:
        manifest = model_version_verify(model=self.get_object())
        data = {"model_version": manifest.model_version, "ok": True, "files": len(manifest.files)}
        return Response(ModelVerificationSerializer(data).data)

    @extend_schema(
        summary="The signed manifest of a model version (what a device verifies a bundle with)",
        tags=[TAG],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(detail=True, methods=["get"])
    def manifest(self, request: Request, pk: str | None = None) -> Response:
        return Response(loads_strict(model_signed_manifest(self.get_object())))
