"""REST API v1: enrolment photos (upload with quality verdict) and 1:N identification."""

from __future__ import annotations

import logging
from typing import IO, Any

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.generics import get_object_or_404
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accessctl.api.views import ApiMixin
from accessctl.exceptions import InvalidInput, ServiceUnavailable, Unprocessable
from accessctl.models import ApiToken, Person
from faceengine.embedder import EmbedderError
from recognition import enrollment
from recognition.api.serializers import (
    EnrollmentPhotoSerializer,
    IdentifyRequestSerializer,
    IdentifyResponseSerializer,
    PhotoUploadSerializer,
)
from recognition.calibration import CalibrationError, threshold_for
from recognition.enrollment import photo_enroll
from recognition.gallery import gallery_search
from recognition.models import EnrollmentPhoto

logger = logging.getLogger(__name__)


def face_identify(*, image: bytes | IO[bytes], limit: int = 5) -> dict[str, Any]:
    """Rank the ``limit`` enrolled people closest to the largest usable face in ``image``.

    Raises :class:`Unprocessable` (code = the quality reason, e.g. ``no_face``) when the picture
    holds no usable face, :class:`ServiceUnavailable` when the embedder cannot be loaded.
    """
    if hasattr(image, "read"):
        data = image.read(enrollment.MAX_UPLOAD_BYTES + 1)
    else:
        data = bytes(image)
    if len(data) > enrollment.MAX_UPLOAD_BYTES:
        raise InvalidInput(f"The picture is larger than {enrollment.MAX_UPLOAD_BYTES} bytes.", code="too_large")
    try:
        embedder = enrollment.configured_embedder()
    except EmbedderError as exc:
        logger.error("identify: embedder unavailable: %s", exc)
        raise ServiceUnavailable("The face embedder is not available.") from exc
    analysis = enrollment.face_analyse(data, embedder=embedder)
    if not analysis.ok or analysis.embedding is None:
        raise Unprocessable(analysis.message or "No usable face in the picture.", code=analysis.reason or "no_face")
    candidates = gallery_search(analysis.embedding, model_version=analysis.model_version, limit_people=limit)
    try:
        threshold: float | None = threshold_for(analysis.model_version)
    except CalibrationError:
        threshold = None
    people = Person.objects.in_bulk([c.person_id for c in candidates])
    matches = [
        {
            "person_id": c.person_id,
            "name": people[c.person_id].name,
            "external_id": people[c.person_id].external_id,
            "similarity": round(float(c.similarity), 6),
            "above_threshold": threshold is not None and c.similarity >= threshold,
        }
        for c in candidates
        if c.person_id in people
    ]
    logger.info(
        "identify (%s): %d candidates, best person %s",
        analysis.model_version, len(matches), matches[0]["person_id"] if matches else "-",
    )  # fmt: skip
    return {
        "model_version": analysis.model_version,
        "threshold": threshold,
        "box": list(analysis.box),
        "quality": dict(analysis.metrics),
        "matches": matches,
    }


_PERSON_PK = OpenApiParameter("person_pk", int, OpenApiParameter.PATH, description="Person id.")


@extend_schema_view(
    list=extend_schema(summary="List a person's enrolment photos", tags=["people"], parameters=[_PERSON_PK]),
    retrieve=extend_schema(summary="Get an enrolment photo", tags=["people"], parameters=[_PERSON_PK]),
    create=extend_schema(
        summary="Upload an enrolment photo",
        description=(
            "Multipart upload. The answer is the verdict: `accepted` (in the gallery), "
            "`rejected` (`quality_reason`/`quality_message` say why) or `held` for review, not in the "
            "gallery until an administrator approves it: `quality_reason` `not_same_person` (below the "
            "model's threshold against the person's accepted photos, `own_similarity`) or "
            "`matches_other_person` (another person, `duplicate_of`, matches it better: "
            "`other_similarity`)."
        ),
        tags=["people"],
        parameters=[_PERSON_PK],
        request={"multipart/form-data": PhotoUploadSerializer},
        responses={201: EnrollmentPhotoSerializer},
    ),
)
class PersonPhotoViewSet(ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = EnrollmentPhotoSerializer
    permission_model = EnrollmentPhoto
    parser_classes = [MultiPartParser, FormParser]
    read_scope = ApiToken.Scope.PEOPLE_READ
    write_scope = ApiToken.Scope.PEOPLE_WRITE

    def _person(self) -> Person:
        return get_object_or_404(Person.objects.all(), pk=self.kwargs["person_pk"])

    def get_queryset(self) -> Any:
        return EnrollmentPhoto.objects.filter(person_id=self.kwargs.get("person_pk")).order_by("-uploaded_at", "-id")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self._person()
        return super().list(request, *args, **kwargs)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        person = self._person()
        upload = PhotoUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        image = upload.validated_data["image"]
        photo = photo_enroll(person=person, image=image, uploaded_by=request.user, filename=image.name)
        return Response(EnrollmentPhotoSerializer(photo).data, status=status.HTTP_201_CREATED)


class IdentifyView(ApiMixin, APIView):
    """1:N identification of a face picture against the enrolled gallery."""

    parser_classes = [MultiPartParser, FormParser]
    write_scope = ApiToken.Scope.IDENTIFY
    session_permissions = {"POST": ["accessctl.view_person"]}

    @extend_schema(
        summary="Identify a face",
        description="Multipart upload of a picture; ranked enrolled people, closest first. 422 without a usable face.",
        tags=["identify"],
        request={"multipart/form-data": IdentifyRequestSerializer},
        responses={200: IdentifyResponseSerializer},
        operation_id="identify",
    )
    def post(self, request: Request) -> Response:
        params = IdentifyRequestSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        result = face_identify(image=params.validated_data["image"], limit=params.validated_data["limit"])
        return Response(IdentifyResponseSerializer(result).data)
