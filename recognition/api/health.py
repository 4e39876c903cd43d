"""REST API of recognition health: ``/api/v1/recognition-health/`` (per door and model version) and
``.../<id>/rebaseline``. Reading needs ``events:read`` (or ``accessctl.view_accessevent``: it is a
summary of the access log); re-baselining is an operator's act, sessions only."""

from __future__ import annotations

import django_filters as filters
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from accessctl.api.views import ApiMixin
from accessctl.models import ApiToken
from recognition.api.serializers import RebaselineSerializer, RecognitionHealthSerializer
from recognition.health import health_rebaseline
from recognition.models import RecognitionHealth

TAG = "recognition health"


class RecognitionHealthFilter(filters.FilterSet):
    door = filters.NumberFilter(field_name="door_id")

    class Meta:
        model = RecognitionHealth
        fields = ["door", "model_version", "status"]


@extend_schema_view(
    list=extend_schema(summary="Recognition health per door and model version", tags=[TAG]),
    retrieve=extend_schema(summary="Recognition health of one door and model version", tags=[TAG]),
)
class RecognitionHealthViewSet(ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = RecognitionHealth.objects.select_related("door").order_by("door__name", "door_id", "model_version")
    serializer_class = RecognitionHealthSerializer
    filterset_class = RecognitionHealthFilter
    read_scope = ApiToken.Scope.EVENTS_READ
    session_permissions = {
        "list": ["accessctl.view_accessevent"],
        "retrieve": ["accessctl.view_accessevent"],
        "rebaseline": ["recognition.change_recognitionhealth"],
    }

    @extend_schema(
        summary="Accept this door's behaviour since a moment as its new baseline",
        description="After a deliberate change (new camera, new lighting). The baseline is taken from the "
        "decisions since `since` (default: the start of the recent window) as soon as there are enough; "
        "until then the status is `no_baseline` and no drift alarm is raised.",
        tags=[TAG],
        request=RebaselineSerializer,
        responses={200: RecognitionHealthSerializer},
    )
    @action(detail=True, methods=["post"], filterset_class=None)
    def rebaseline(self, request: Request, pk: str | None = None) -> Response:
        params = RebaselineSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        row = health_rebaseline(row=self.get_object(), actor=request.user, since=params.validated_data.get("since"))
        return Response(RecognitionHealthSerializer(row).data)
