"""Reads of messages and their delivery attempts for the API and the dashboard,
and of subscribers' in-app inboxes."""

import uuid

from django.db.models import Prefetch, QuerySet

from channels_delivery.catalogue import Channel
from channels_delivery.models import DeliveryAttempt, Message, MessageStatus


def message_list(
    *,
    subscriber_external_id: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    event_id: uuid.UUID | None = None,
) -> QuerySet[Message]:
    """Messages matching every filter given, each with its subscriber joined in."""
    messages = Message.objects.select_related("subscriber")
    if subscriber_external_id is not None:
        messages = messages.filter(subscriber__external_id=subscriber_external_id)
    if status is not None:
        messages = messages.filter(status=status)
    if channel is not None:
        messages = messages.filter(channel=channel)
    if event_id is not None:
        messages = messages.filter(event_id=event_id)
    return messages


def message_get(*, message_id: str) -> Message | None:
    """The message with its subscriber and attempts (oldest first), or None; a
    malformed id is simply not found."""
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        return None
    return (
        Message.objects.select_related("subscriber")
        .prefetch_related(
            Prefetch("attempts", queryset=DeliveryAttempt.objects.order_by("started_at", "pk"))
        )
        .filter(pk=parsed)
        .first()
    )


# Delivered in_app messages: a queued one may still be waiting for its send_after,
# a failed or cancelled one never reached the inbox.
INBOX_VISIBLE_STATUSES = (
    MessageStatus.SENT,
    MessageStatus.DELIVERED,
    MessageStatus.OPENED,
    MessageStatus.CLICKED,
    MessageStatus.READ,
)


def inbox_messages(*, subscriber_id: int | None) -> QuerySet[Message]:
    """Every in_app message in one subscriber's inbox (archived ones included).

    ``None`` (a subscriber the tenant has not created) has an empty inbox.
    """
    if subscriber_id is None:
        return Message.objects.none()
    return Message.objects.filter(
        subscriber_id=subscriber_id,
        channel=Channel.IN_APP,
        status__in=INBOX_VISIBLE_STATUSES,
    )


def inbox_list(
    *, subscriber_id: int | None, unread: bool | None = None, archived: bool = False
) -> QuerySet[Message]:
    """One subscriber's feed: archived or not, and read, unread or both."""
    messages = inbox_messages(subscriber_id=subscriber_id).filter(archived_at__isnull=not archived)
    if unread is not None:
        messages = messages.filter(read_at__isnull=unread)
    return messages


def inbox_unread_count(*, subscriber_id: int | None) -> int:
    """The badge: unread messages that are not archived."""
    return inbox_list(subscriber_id=subscriber_id, unread=True).count()


def inbox_message_get(*, subscriber_id: int | None, message_id: str) -> Message | None:
    """One of the subscriber's inbox messages, or None (another's, or not in_app,
    or a malformed id: not found alike)."""
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        return None
    return inbox_messages(subscriber_id=subscriber_id).filter(pk=parsed).first()
