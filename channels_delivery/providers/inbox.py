"""The in-app inbox: Herald itself is the provider.

The Message row *is* the inbox item, so there is nothing to hand over and
sending always succeeds at once. The delivery service then marks the message
delivered and pushes it to the subscriber's open sockets
(services.inbox.inbox_notify) after its transaction commits. No tenant
integration is needed (services.delivery.BUILT_IN).
"""

from collections.abc import Mapping
from typing import Any, ClassVar

from channels_delivery.catalogue import Channel
from channels_delivery.providers.base import (
    ConfigInvalid,
    ProviderResult,
    RenderedMessage,
    ResultKind,
    provider_register,
)


@provider_register
class InboxProvider:
    """Config: none. Address: the subscriber (the row is already in their inbox)."""

    channel: ClassVar[str] = Channel.IN_APP.value
    key: ClassVar[str] = "inbox"
    config_fields: ClassVar[frozenset[str]] = frozenset()
    secret_fields: ClassVar[frozenset[str]] = frozenset()

    def validate_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        if config:
            raise ConfigInvalid({name: "unknown field" for name in config})
        return {}

    def send(self, message: RenderedMessage, config: Mapping[str, Any]) -> ProviderResult:
        if not message.address.get("subscriber"):
            return ProviderResult(
                kind=ResultKind.PERMANENT, error="an in-app message needs a subscriber"
            )
        return ProviderResult(kind=ResultKind.ACCEPTED, provider_message_id=message.message_id)
