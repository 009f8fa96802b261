"""Reads of subscribers."""

from herald.pagination import DEFAULT_LIMIT, Page, cursor_paginate
from rules_engine.models import Subscriber


def subscriber_get(*, external_id: str) -> Subscriber | None:
    return Subscriber.objects.filter(external_id=external_id).first()


def subscriber_list(
    *, email: str | None = None, cursor: str | None = None, limit: int = DEFAULT_LIMIT
) -> Page[Subscriber]:
    """Oldest first, so a walk through every page also sees subscribers created meanwhile.

    Raises InvalidCursor for a cursor this list did not make.
    """
    subscribers = Subscriber.objects.all()
    if email:
        subscribers = subscribers.filter(email__iexact=email)
    return cursor_paginate(
        subscribers, field="created_at", cursor=cursor, limit=limit, descending=False
    )
