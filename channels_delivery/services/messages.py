"""Writing Message rows in bulk: one COPY, however many there are."""

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.db import connection

from channels_delivery.models import Message, MessageStatus
from channels_delivery.services.callbacks import message_callbacks_emit_many


@dataclass(frozen=True, kw_only=True)
class NewMessage:
    """A rendered message, ready to store (STYLE.md 6: rendered once, kept)."""

    id: uuid.UUID
    event_id: uuid.UUID
    subscriber_id: int
    channel: str
    content: dict[str, Any]
    rule_version_id: int
    template_version_id: int
    locale: str
    send_after: datetime | None
    status: str = MessageStatus.QUEUED
    error: str = ""


_COLUMNS = (
    "id",
    "event_id",
    "subscriber_id",
    "channel",
    "status",
    "content",
    "rule_version_id",
    "template_version_id",
    "locale",
    "send_after",
    "created_at",
    "updated_at",
)


def messages_copy(*, messages: Sequence[NewMessage], now: datetime) -> int:
    """Store ``messages`` with one COPY statement (a fan-out of 100,000 is one
    statement too); returns how many. A failed render is stored as a failed
    message whose content holds the reason."""
    if not messages:
        return 0
    table = connection.ops.quote_name(Message._meta.db_table)
    columns = ", ".join(connection.ops.quote_name(column) for column in _COLUMNS)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy,
    ):
        for message in messages:
            content = message.content if not message.error else {"error": message.error}
            copy.write_row(
                (
                    message.id,
                    message.event_id,
                    message.subscriber_id,
                    message.channel,
                    message.status,
                    orjson.dumps(content).decode(),
                    message.rule_version_id,
                    message.template_version_id,
                    message.locale,
                    message.send_after,
                    now,
                    now,
                )
            )
    failed = [message.id for message in messages if message.status == MessageStatus.FAILED]
    if failed:
        # Failed at birth (a render error): failed_at and the callback, like any failure.
        Message.objects.filter(pk__in=failed).update(failed_at=now)
        message_callbacks_emit_many(message_ids=failed, status=MessageStatus.FAILED)
    return len(messages)
