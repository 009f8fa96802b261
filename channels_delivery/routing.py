"""WebSocket routes: the live in-app inbox."""

from typing import Any

from django.urls import path

from channels_delivery.consumers import InboxConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/inbox", InboxConsumer.as_asgi()),
]
