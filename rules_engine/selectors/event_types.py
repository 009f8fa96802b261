"""Reads of declared event types (the ingest path has its own cache: rules_engine.event_types)."""

from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate
from rules_engine.models import EventType


def event_type_get(*, key: str) -> EventType | None:
    return EventType.objects.filter(key=key).first()


def event_type_list(
    *, category: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[EventType]:
    """Event types by key; raises InvalidCursor for a cursor this list did not make."""
    event_types = EventType.objects.all()
    if category is not None:
        event_types = event_types.filter(category=category)
    return cursor_paginate(event_types, field="key", cursor=cursor, limit=limit, descending=False)
