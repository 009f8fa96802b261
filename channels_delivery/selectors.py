"""Reads of messages and their delivery attempts for the API and the dashboard."""

import uuid

from django.db.models import Prefetch, QuerySet

from channels_delivery.models import DeliveryAttempt, Message


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
