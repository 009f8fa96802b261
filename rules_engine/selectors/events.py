"""Reads of events for the API and the dashboard."""

import uuid

from rules_engine.models import Event


def event_get(*, event_id: str) -> Event | None:
    """The event with its messages, or None (a malformed id is simply not found)."""
    try:
        parsed = uuid.UUID(event_id)
    except ValueError:
        return None
    return Event.objects.prefetch_related("messages").filter(pk=parsed).first()
