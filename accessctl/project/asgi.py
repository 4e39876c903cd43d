"""ASGI entry point: HTTP through Django, websockets through Channels (authenticated sessions)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "accessctl.project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from accessctl.project.origins import SiteOriginValidator  # noqa: E402
from accessctl.project.request_limits import RequestBodyLimitMiddleware  # noqa: E402
from accessctl.project.routing import websocket_urlpatterns  # noqa: E402

http_app = django_asgi_app
if settings.SERVE_STATIC:
    from accessctl.project.static_files import StaticFilesHandler

    http_app = StaticFilesHandler(django_asgi_app)
# Outermost: oversized bodies are refused before anything reads them (accessctl/project/request_limits.py).
http_app = RequestBodyLimitMiddleware(http_app)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        # Only the site's own pages may open a websocket (accessctl/project/origins.py), then the session decides.
        "websocket": SiteOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
