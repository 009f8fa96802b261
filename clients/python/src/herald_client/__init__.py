"""herald-client: the Python SDK for Herald's API.

Send an event::

    from herald_client import Herald

    with Herald(api_key="hk_live_…", base_url="https://herald.example.com") as herald:
        herald.events.send("order.shipped", to=["user-42"], payload={"order_id": "1042"})
"""

from herald_client._retry import Backoff
from herald_client._transport import VERSION
from herald_client.async_client import AsyncHerald, AsyncHeraldInbox
from herald_client.client import Herald, HeraldInbox
from herald_client.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequest,
    Conflict,
    FieldError,
    HeraldError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ValidationError,
)
from herald_client.inbox_auth import subscriber_hash
from herald_client.models import (
    BatchItemResult,
    BatchResult,
    BulkItemResult,
    BulkResult,
    Channel,
    DeliveryAttempt,
    Event,
    EventAccepted,
    EventInput,
    InboxItem,
    InboxPage,
    InboxSecret,
    InlineSubscriber,
    Me,
    MembersAdded,
    MembersRemoved,
    Message,
    MessageDetail,
    MessageStatus,
    MessageSummary,
    Page,
    Preference,
    PreferenceInput,
    Recipient,
    Subscriber,
    SubscriberInput,
    SubscriberUpserted,
    Topic,
)
from herald_client.webhooks import VerifiedWebhook, WebhookVerificationError, WebhookVerifier

__version__ = VERSION

__all__ = [
    "APIConnectionError",
    "AsyncHerald",
    "AsyncHeraldInbox",
    "AuthenticationError",
    "Backoff",
    "BadRequest",
    "BatchItemResult",
    "BatchResult",
    "BulkItemResult",
    "BulkResult",
    "Channel",
    "Conflict",
    "DeliveryAttempt",
    "Event",
    "EventAccepted",
    "EventInput",
    "FieldError",
    "Herald",
    "HeraldError",
    "HeraldInbox",
    "InboxItem",
    "InboxPage",
    "InboxSecret",
    "InlineSubscriber",
    "Me",
    "MembersAdded",
    "MembersRemoved",
    "Message",
    "MessageDetail",
    "MessageStatus",
    "MessageSummary",
    "NotFound",
    "Page",
    "PayloadTooLarge",
    "PermissionDenied",
    "Preference",
    "PreferenceInput",
    "RateLimited",
    "Recipient",
    "ServerError",
    "ServiceUnavailable",
    "Subscriber",
    "SubscriberInput",
    "SubscriberUpserted",
    "Topic",
    "ValidationError",
    "VerifiedWebhook",
    "WebhookVerificationError",
    "WebhookVerifier",
    "__version__",
    "subscriber_hash",
]
