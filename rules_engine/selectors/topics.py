"""Reads of topics and their members."""

from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate
from rules_engine.models import Subscriber, Topic


def topic_get(*, key: str) -> Topic | None:
    return Topic.objects.filter(key=key).first()


def topic_list(*, cursor: str | None = None, limit: int = DEFAULT_LIMIT) -> Page[Topic]:
    """Topics by key; raises InvalidCursor for a cursor this list did not make."""
    return cursor_paginate(
        Topic.objects.all(), field="key", cursor=cursor, limit=limit, descending=False
    )


def topic_subscriber_list(
    *, topic: Topic, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Subscriber]:
    """The topic's members by external id; raises InvalidCursor as topic_list does."""
    members = Subscriber.objects.filter(memberships__topic=topic)
    return cursor_paginate(
        members, field="external_id", cursor=cursor, limit=limit, descending=False
    )
