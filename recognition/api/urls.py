"""Recognition's REST API v1 (mounted at ``/api/v1/`` by ``accessctl/project/urls.py``): enrolment
photos of a person, ``identify``, the model registry and recognition health."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.routers import SimpleRouter

from recognition.api.health import RecognitionHealthViewSet
from recognition.api.registry import ModelVersionViewSet
from recognition.api.views import IdentifyView, PersonPhotoViewSet


@extend_schema(exclude=True)
class IdentifySlashView(IdentifyView):
    """``identify/`` as an alias of ``identify`` (not in the schema)."""


router = SimpleRouter()
router.register(r"people/(?P<person_pk>\d+)/photos", PersonPhotoViewSet, basename="api-person-photo")
router.register(r"models", ModelVersionViewSet, basename="api-model-version")
router.register(r"recognition-health", RecognitionHealthViewSet, basename="api-recognition-health")

#: Listed by the API root besides the router's collections (name -> URL name).
root_links = {"identify": "api-identify"}

urlpatterns = [
    path("identify", IdentifyView.as_view(), name="api-identify"),
    path("identify/", IdentifySlashView.as_view(), name="api-identify-slash"),
    *router.urls,
]
