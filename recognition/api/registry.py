"""REST API of the model registry: ``/api/v1/models/`` (read), ``.../<version>/transition``,
``.../<version>/verify``, ``.../<version>/manifest``, ``.../<version>/promote``,
``.../<version>/gallery/pause|resume`` and ``.../<version>/shadow/`` (the shadow figures,
:func:`recognition.shadow.shadow_summary`). ``<version>`` is the row id or the model version's name.

Reading (and verifying) is the token scope ``models:read`` (``recognition.view_modelversion`` for a
session); moving a version between states is ``models:write`` (``recognition.change_modelversion``).
Tokens issued before these scopes existed read models with ``devices:read``: migration
``recognition.0010`` gave each of them ``models:read`` (and their owners the view permission), so
they keep doing what they did and nothing more."""

from __future__ import annotations

from django.db.models import Model, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accessctl.api.views import ApiMixin
from accessctl.exceptions import NotFound
from accessctl.models import ApiToken
from faceengine.protocol.model_manifest import loads_strict
from recognition.api.serializers import (
    ModelPromotionSerializer,
    ModelTransitionSerializer,
    ModelVerificationSerializer,
    ModelVersionSerializer,
)
from recognition.gallery_migration import gallery_migration_pause, gallery_migration_resume, gallery_migration_start
from recognition.model_registry import model_signed_manifest, model_version_transition, model_version_verify
from recognition.models import GalleryMigration, ModelVersion
from recognition.shadow import shadow_summary

TAG = "models"


@extend_schema_view(
    list=extend_schema(summary="List model versions", tags=[TAG]),
    retrieve=extend_schema(summary="Get a model version", tags=[TAG]),
)
class ModelVersionViewSet(ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = ModelVersion.objects.order_by("model_version")
    serializer_class = ModelVersionSerializer
    read_scope = ApiToken.Scope.MODELS_READ
    write_scope = ApiToken.Scope.MODELS_WRITE
    action_scopes = {
        "verify": ApiToken.Scope.MODELS_READ,
        "transition": ApiToken.Scope.MODELS_WRITE,
        "promote": ApiToken.Scope.MODELS_WRITE,
        "gallery_pause": ApiToken.Scope.MODELS_WRITE,
        "gallery_resume": ApiToken.Scope.MODELS_WRITE,
    }
    session_permissions = {
        "list": ["recognition.view_modelversion"],
        "retrieve": ["recognition.view_modelversion"],
        "manifest": ["recognition.view_modelversion"],
        "verify": ["recognition.view_modelversion"],
        "shadow": ["recognition.view_modelversion"],
        "transition": ["recognition.change_modelversion"],
        "promote": ["recognition.change_modelversion"],
        "gallery_pause": ["recognition.change_modelversion"],
        "gallery_resume": ["recognition.change_modelversion"],
    }
    # A version by its id or its name (model version names are never all digits: they name a model).
    lookup_value_regex = r"[A-Za-z0-9._-]+"

    def get_object(self) -> Model:
        value = str(self.kwargs[self.lookup_url_kwarg or self.lookup_field])
        field = "pk" if value.isdigit() else "model_version"
        model = get_object_or_404(self.get_queryset(), **{field: value})
        self.check_object_permissions(self.request, model)
        return model

    def get_queryset(self) -> QuerySet[ModelVersion]:
        return super().get_queryset().select_related("gallery_migration")

    @extend_schema(
        summary="Promote a model version: build its gallery in the background, then activate it",
        description=(
            "Queues the re-embedding of every accepted enrolment photo with this version (rate-limited, resumable, "
            "on the gallery worker); the version becomes active only once its gallery covers every accepted photo "
            "and everyone the active version covers. The old version keeps its vectors and index until it is "
            "retired. Progress: `gallery` of the model version. `build_only`: build without activating."
        ),
        tags=[TAG],
        request=ModelPromotionSerializer,
        responses={202: ModelVersionSerializer},
    )
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str | None = None) -> Response:
        params = ModelPromotionSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        migration = gallery_migration_start(
            model=self.get_object(), actor=request.user, activate=not params.validated_data["build_only"],
            note=params.validated_data["note"],
        )  # fmt: skip
        return Response(ModelVersionSerializer(self._fresh(migration.model_id)).data, status=202)

    @extend_schema(summary="Pause a model version's gallery build", tags=[TAG], request=None,
                   responses={200: ModelVersionSerializer})  # fmt: skip
    @action(detail=True, methods=["post"], url_path="gallery/pause")
    def gallery_pause(self, request: Request, pk: str | None = None) -> Response:
        migration = gallery_migration_pause(migration=self._migration(), actor=request.user)
        return Response(ModelVersionSerializer(self._fresh(migration.model_id)).data)

    @extend_schema(summary="Resume a model version's gallery build", tags=[TAG], request=None,
                   responses={202: ModelVersionSerializer})  # fmt: skip
    @action(detail=True, methods=["post"], url_path="gallery/resume")
    def gallery_resume(self, request: Request, pk: str | None = None) -> Response:
        migration = gallery_migration_resume(migration=self._migration(), actor=request.user)
        return Response(ModelVersionSerializer(self._fresh(migration.model_id)).data, status=202)

    def _migration(self) -> GalleryMigration:
        migration = GalleryMigration.objects.select_related("model").filter(model=self.get_object()).first()
        if migration is None:
            raise NotFound("This model version has no gallery build; promote it first.", code="no_gallery_build")
        return migration

    def _fresh(self, pk: int) -> ModelVersion:
        return ModelVersion.objects.select_related("gallery_migration").get(pk=pk)

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

    @extend_schema(
        summary="Shadow figures of a model version: how it decided live detections beside the active one",
        description=(
            "Over every shadow decision of the version: `samples`; `agreement` (same person, same decision, "
            "both; counts and rates); `confusion` (active decision -> shadow decision, grant/deny); "
            "`similarity.buckets` (histogram of the best similarity, active and shadow side by side: 20 "
            "buckets over [0, 1) plus one below and one at or above); `mean_ms` per shadow decision."
        ),
        tags=[TAG],
        responses={200: OpenApiTypes.OBJECT},
    )
    @action(detail=True, methods=["get"], url_path="shadow")
    def shadow(self, request: Request, pk: str | None = None) -> Response:
        return Response(shadow_summary(model=self.get_object()))
