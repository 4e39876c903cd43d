"""Top-level URLs. Everything but the login page and the health check requires authentication."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from accessctl import views
from accessctl.api.views import ApiNotFoundView
from accessctl.project.metrics_access import metrics_view
from accessctl.project.readiness import readyz

admin.site.site_header = "accessctl administration"
admin.site.site_title = "accessctl"
admin.site.index_title = "People, doors and devices"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    # Sign-in attempts are limited by django-axes inside authenticate() (accessctl/project/login_throttle.py).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Live dashboard: face crops behind permission checks, audited operator actions (POST + CSRF).
    path("events/<int:pk>/thumbnail.jpg", views.event_thumbnail, name="event_thumbnail"),
    path("doors/<int:pk>/unlock/", views.door_unlock_view, name="door_unlock"),
    path("doors/<int:pk>/lockdown/", views.door_lockdown_view, name="door_lockdown"),
    path("doors/<int:pk>/lockdown/lift/", views.door_lockdown_lift_view, name="door_lockdown_lift"),
    path("doors/lockdown/", views.door_lockdown_view, name="door_lockdown_all"),
    path("doors/lockdown/lift/", views.door_lockdown_lift_view, name="door_lockdown_lift_all"),
    path("alarms/<int:pk>/acknowledge/", views.alarm_acknowledge_view, name="alarm_acknowledge"),
    # Audit browser.
    path("audit/", views.audit_list, name="audit_list"),
    path("audit/export.csv", views.audit_export, name="audit_export"),
    path("people/<int:pk>/history/", views.person_history, name="person_history"),
    # Enrolment UI for administrators.
    path("enrol/", include("recognition.urls")),
    # REST API v1: each app's own api/urls.py at one prefix; the root (GET /api/v1/) lists them all.
    path("api/v1/", include("accessctl.api.urls")),
    path("api/v1/", include("recognition.api.urls")),
    path("api/v1/", include("devices.api.urls")),
    # Any other path under /api/: a JSON 404 in the API's error format, not the HTML page.
    re_path(r"^api(?:/.*)?$", ApiNotFoundView.as_view(), name="api-not-found"),
    # One sign-in page for the admin too (the admin's own login view would be locked out as well).
    path("admin/login/", auth_views.LoginView.as_view(), name="admin_login"),
    path("admin/", admin.site.urls),
]
