"""A subscriber's in-app inbox: their actions on it (read, unread, archive,
unarchive) and the live push of a newly delivered message.

Each action is one UPDATE of the inbox fields only, so it never overwrites a status the
delivery worker writes at the same time, and repeating it changes nothing (the
first read or archive time is kept).
"""

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from channels_delivery.catalogue import Channel
from channels_delivery.models import Message, MessageStatus
from channels_delivery.selectors import inbox_list, inbox_unread_count
from tenants.db import tenant_connection

logger = logging.getLogger(__name__)

INBOX_FIELDS = ["seen_at", "read_at", "archived_at"]


def inbox_item(message: Message) -> dict[str, Any]:
    """A message as the inbox shows it, over HTTP and over the WebSocket alike."""
    content = message.content if isinstance(message.content, dict) else {}
    action_url = content.get("action_url")
    return {
        "id": message.id,
        "title": str(content.get("title") or ""),
        "body": str(content.get("body") or ""),
        "action_url": str(action_url) if action_url else None,
        "created_at": message.created_at,
        "seen_at": message.seen_at,
        "read_at": message.read_at,
        "archived_at": message.archived_at,
    }


def inbox_group(*, schema_name: str, subscriber_id: int) -> str:
    """The channel-layer group of one subscriber's open inboxes (every tab, every device)."""
    return f"inbox.{schema_name}.{subscriber_id}"


def inbox_notify(*, message: Message) -> None:
    """Push a delivered in_app message to the subscriber's open inboxes, after commit.

    Called by the in_app delivery in the message's tenant schema. Best effort: the
    row is the inbox, and a client that missed the push sees the message on its
    next list, so a channel-layer failure is logged and never fails the delivery.
    """
    if message.channel != Channel.IN_APP or message.subscriber_id is None:
        return
    group = inbox_group(
        schema_name=tenant_connection.schema_name, subscriber_id=message.subscriber_id
    )
    event = {
        "type": "inbox.message",
        # Through JSON so the channel layer carries plain values (ids, times as text).
        "item": json.loads(json.dumps(inbox_item(message), cls=DjangoJSONEncoder)),
        "unread_count": inbox_unread_count(subscriber_id=message.subscriber_id),
    }

    def push() -> None:
        try:
            layer = get_channel_layer()
            if layer is None:
                logger.warning("no channel layer configured: inbox push of %s skipped", message.pk)
                return
            async_to_sync(layer.group_send)(group, event)
        except Exception:
            logger.exception("inbox push of message %s to %s failed", message.pk, group)

    transaction.on_commit(push)


def _first(field: str, now: datetime) -> Coalesce:
    return Coalesce(F(field), Value(now))


def _updated(message: Message, **changes: object) -> Message:
    Message.objects.filter(pk=message.pk).update(**changes, updated_at=timezone.now())
    message.refresh_from_db(fields=[*INBOX_FIELDS, "updated_at"])
    return message


# The statuses from which reading the message makes it ``read``: the moves
# services.delivery.TRANSITIONS allows, applied in bulk by the WHERE clause.
READABLE = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.OPENED)


def _status_read(message_ids: Sequence[object]) -> None:
    """Messages read for the first time become ``read`` (once: unread and read
    again keeps the status), with a ``message.read`` callback for each."""
    from channels_delivery.services.callbacks import message_callbacks_emit_many

    readable = Message.objects.filter(pk__in=message_ids, status__in=READABLE)
    moved = list(readable.values_list("pk", flat=True))
    if moved:
        Message.objects.filter(pk__in=moved, status__in=READABLE).update(status=MessageStatus.READ)
        message_callbacks_emit_many(message_ids=moved, status=MessageStatus.READ)


def inbox_message_read(*, message: Message) -> Message:
    now = timezone.now()
    with transaction.atomic():
        _status_read([message.pk])
        return _updated(message, read_at=_first("read_at", now), seen_at=_first("seen_at", now))


def inbox_message_unread(*, message: Message) -> Message:
    return _updated(message, read_at=None)


def inbox_message_archive(*, message: Message) -> Message:
    now = timezone.now()
    return _updated(message, archived_at=_first("archived_at", now))


def inbox_message_unarchive(*, message: Message) -> Message:
    return _updated(message, archived_at=None)


def inbox_read_all(*, subscriber_id: int | None) -> int:
    """Mark every unread, unarchived message of the subscriber read; how many were."""
    now = timezone.now()
    with transaction.atomic():
        unread = inbox_list(subscriber_id=subscriber_id, unread=True)
        ids = list(unread.select_for_update().values_list("pk", flat=True))
        _status_read(ids)
        return Message.objects.filter(pk__in=ids).update(
            read_at=now, seen_at=_first("seen_at", now), updated_at=now
        )


def inbox_messages_seen(*, messages: Sequence[Message]) -> None:
    """The feed showed these: record when each was first seen (on the rows given too)."""
    unseen = [message for message in messages if message.seen_at is None]
    if not unseen:
        return
    now = timezone.now()
    Message.objects.filter(pk__in=[message.pk for message in unseen], seen_at__isnull=True).update(
        seen_at=now
    )
    for message in unseen:
        message.seen_at = now
