"""The devices app's REST API v1 (mounted at ``/api/v1/`` by ``accessctl/project/urls.py``)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from devices.api.views import EdgeDeviceViewSet

router = SimpleRouter()
router.register("devices", EdgeDeviceViewSet, basename="api-device")

urlpatterns = router.urls
