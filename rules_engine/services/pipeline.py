"""The pipeline's entry: an accepted event is processed exactly once.

Rules, recipients and rendering arrive with the Rules engine issue; until a
tenant can define rules, every event is recorded as matching none, which is
also what an event of an unknown type always gets.
"""

import uuid

from django.db import transaction
from django.utils import timezone

from rules_engine.models import Event, EventStatus

# Normally queued (the dispatcher claimed it); accepted when called directly.
PENDING = frozenset({EventStatus.ACCEPTED, EventStatus.QUEUED})


def event_process(*, event_id: uuid.UUID) -> Event | None:
    """Move an accepted event through the pipeline; a no-op if it already went."""
    with transaction.atomic():
        event = Event.objects.select_for_update(skip_locked=True).filter(pk=event_id).first()
        if event is None or event.status not in PENDING:
            return event  # gone, being processed by another worker, or done
        known_type = event.event_type_key in _known_types()
        event.status = EventStatus.NO_MATCH
        event.outcome = {
            "matched_rules": [],
            "known_event_type": known_type,
            "reason": "no rule matches this event"
            if known_type
            else f"no event type {event.event_type_key!r} is declared, so no rule matches",
        }
        event.processed_at = timezone.now()
        event.save(update_fields=["status", "outcome", "processed_at"])
    return event


def _known_types() -> set[str]:
    from rules_engine.event_types import event_types_current

    return set(event_types_current())
