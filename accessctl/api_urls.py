"""URLs of REST API v1 (mounted at ``/api/v1/`` by ``accessctl/urls.py``), its schema and docs."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.urls import path, reverse
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from accessctl import api
from accessctl.api_docs import redoc_bundle
from devices.api import EdgeDeviceViewSet
from recognition.api import IdentifyView, PersonPhotoViewSet


@extend_schema(exclude=True)
class IdentifySlashView(IdentifyView):
    """``identify/`` as an alias of ``identify`` (not in the schema)."""


class ApiRedocView(SpectacularRedocView):
    """Redoc without the web fonts of the stock page and with its logo served locally (the CSP
    allows the site's own files only; see accessctl/api_docs.py)."""

    template_name = "accessctl/api_redoc.html"

    @staticmethod
    def _redoc_standalone() -> str:
        return reverse("api-redoc-bundle")


router = SimpleRouter()
router.register("people", api.PersonViewSet, basename="api-person")
router.register(r"people/(?P<person_pk>\d+)/photos", PersonPhotoViewSet, basename="api-person-photo")
router.register("doors", api.DoorViewSet, basename="api-door")
router.register("access-groups", api.AccessGroupViewSet, basename="api-access-group")
router.register("schedules", api.ScheduleViewSet, basename="api-schedule")
router.register("devices", EdgeDeviceViewSet, basename="api-device")
router.register("access-events", api.AccessEventViewSet, basename="api-access-event")
router.register("alarms", api.AlarmViewSet, basename="api-alarm")
router.register("webhook-subscriptions", api.WebhookSubscriptionViewSet, basename="api-webhook-subscription")
router.register("webhook-deliveries", api.WebhookDeliveryViewSet, basename="api-webhook-delivery")

urlpatterns = [
    path("", api.ApiRootView.as_view(router=router), name="api-root"),
    path("identify", IdentifyView.as_view(), name="api-identify"),
    path("identify/", IdentifySlashView.as_view(), name="api-identify-slash"),
    # The schema and its viewers are public: they describe an open-source API and hold no data.
    path("schema/", login_not_required(SpectacularAPIView.as_view()), name="api-schema"),
    # Swagger UI's initialiser is served as a script file (the split view), not inline: see accessctl/csp.py.
    path("docs/", login_not_required(SpectacularSwaggerSplitView.as_view(url_name="api-schema")), name="api-docs"),
    path("redoc/", login_not_required(ApiRedocView.as_view(url_name="api-schema")), name="api-redoc"),
    path("redoc/redoc.standalone.js", login_not_required(redoc_bundle), name="api-redoc-bundle"),
    *router.urls,
]
