"""Top-level URLs. Everything but the login page and the health check requires authentication."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path

from accessctl import views

admin.site.site_header = "accessctl administration"
admin.site.site_title = "accessctl"
admin.site.index_title = "People, doors and devices"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
