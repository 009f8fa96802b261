"""The live inbox: a WebSocket per open inbox that receives newly delivered messages.

The frontend authenticates as it does over HTTP (channels_delivery.inbox_auth),
with query parameters because browsers can not set headers on a WebSocket:
``/ws/inbox?tenant=<slug>&subscriber=<external id>&hash=<subscriber hash>``.
A refused socket is accepted and then closed with code 4401 (4403 for a
suspended tenant) and the problem's slug as the reason, so the client can tell
bad credentials, which retrying will not fix, from a dropped connection.
"""

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from channels_delivery.inbox_auth import QUERY_NAMES, InboxPrincipal, inbox_authenticate
from channels_delivery.services.inbox import inbox_group
from tenants.authentication import AuthenticationFailed

# WebSocket close codes 4000-4999 are the application's; these mirror HTTP's.
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403


@database_sync_to_async
def _authenticate(query: dict[str, list[str]]) -> InboxPrincipal:
    def first(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    return inbox_authenticate(
        tenant_slug=first(QUERY_NAMES.tenant),
        external_id=first(QUERY_NAMES.subscriber),
        given_hash=first(QUERY_NAMES.hash),
        names=QUERY_NAMES,
    )


class InboxConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            principal = await _authenticate(query)
        except AuthenticationFailed as failure:
            await self.accept()
            await self.send_json(
                {
                    "type": "error",
                    "problem": {
                        "type": f"urn:herald:problem:{failure.slug}",
                        "title": failure.title,
                        "status": failure.status,
                        "detail": failure.detail,
                    },
                }
            )
            code = CLOSE_FORBIDDEN if failure.status == 403 else CLOSE_UNAUTHORIZED
            await self.close(code=code, reason=failure.slug)
            return
        if principal.subscriber_id is not None:
            # A subscriber the tenant has not created yet has nothing to receive
            # until it exists; the client reconnects as it would after any drop.
            self.group = inbox_group(
                schema_name=principal.tenant.schema_name, subscriber_id=principal.subscriber_id
            )
            await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def inbox_message(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {"type": "message", "item": event["item"], "unread_count": event["unread_count"]}
        )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The socket only pushes; the inbox is changed over HTTP."""
