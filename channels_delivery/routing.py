"""WebSocket routes; the in-app inbox stream joins this list (Delivery issue)."""

from typing import Any

websocket_urlpatterns: list[Any] = []
