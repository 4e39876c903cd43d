"""Websocket URL patterns (Channels)."""

from django.urls import path  # noqa: F401  (patterns are added by the dashboard)

websocket_urlpatterns: list = []
