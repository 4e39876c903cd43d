"""The domain's REST API v1 (mounted at ``/api/v1/`` by ``accessctl/project/urls.py``): the API root,
the schema and its docs, and the domain's collections. Each app has its own ``api/urls.py`` mounted
at the same prefix (``recognition/api/urls.py``, ``devices/api/urls.py``); the root lists them all."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.urls import path, reverse
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from accessctl.api import views
from accessctl.api.docs import redoc_bundle


class ApiRedocView(SpectacularRedocView):
    """Redoc without the web fonts of the stock page and with its logo served locally (the CSP
    allows the site's own files only; see accessctl/api/docs.py)."""

    template_name = "accessctl/api_redoc.html"

    @staticmethod
    def _redoc_standalone() -> str:
        return reverse("api-redoc-bundle")


router = SimpleRouter()
router.register("people", views.PersonViewSet, basename="api-person")
router.register("doors", views.DoorViewSet, basename="api-door")
router.register("access-groups", views.AccessGroupViewSet, basename="api-access-group")
router.register("schedules", views.ScheduleViewSet, basename="api-schedule")
router.register("areas", views.AreaViewSet, basename="api-area")
router.register("access-events", views.AccessEventViewSet, basename="api-access-event")
router.register("alarms", views.AlarmViewSet, basename="api-alarm")
router.register("webhook-subscriptions", views.WebhookSubscriptionViewSet, basename="api-webhook-subscription")
router.register("webhook-deliveries", views.WebhookDeliveryViewSet, basename="api-webhook-delivery")

#: Listed by the API root besides the router's collections (name -> URL name).
root_links = {"schema": "api-schema", "docs": "api-docs", "redoc": "api-redoc"}

urlpatterns = [
    path("", views.ApiRootView.as_view(), name="api-root"),
    # The schema and its viewers are public: they describe an open-source API and hold no data.
    path("schema/", login_not_required(SpectacularAPIView.as_view()), name="api-schema"),
    # Swagger UI's initialiser is served as a script file (the split view), not inline: see accessctl/project/csp.py.
    path("docs/", login_not_required(SpectacularSwaggerSplitView.as_view(url_name="api-schema")), name="api-docs"),
    path("redoc/", login_not_required(ApiRedocView.as_view(url_name="api-schema")), name="api-redoc"),
    path("redoc/redoc.standalone.js", login_not_required(redoc_bundle), name="api-redoc-bundle"),
    *router.urls,
]
