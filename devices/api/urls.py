"""The devices app's REST API v1 (mounted at ``/api/v1/`` by ``accessctl/project/urls.py``)."""

from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from devices.api.model_bundles import model_bundle_file
from devices.api.rollouts import ModelRolloutViewSet
from devices.api.views import EdgeDeviceViewSet

router = SimpleRouter()
router.register("devices", EdgeDeviceViewSet, basename="api-device")
router.register("rollouts", ModelRolloutViewSet, basename="api-rollout")

urlpatterns = [
    path("model-bundles/<str:model_version>/<str:file_name>", model_bundle_file, name="api-model-bundle-file"),
    *router.urls,
]
