"""ASGI entry point: WebSocket traffic under /ws/ (and HTTP for the one-process demo)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herald.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from channels_delivery.routing import websocket_urlpatterns  # noqa: E402

# No Origin check on WebSockets: the only stream, /ws/inbox, is opened by tenants'
# own frontends on their own origins and authenticates with a subscriber hash, not
# a cookie, so a foreign page gains nothing from the browser's credentials. A
# cookie-authenticated route would need channels' AllowedHostsOriginValidator.
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
