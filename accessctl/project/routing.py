"""Websocket URL patterns (Channels)."""

from django.urls import path

from accessctl.consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]
