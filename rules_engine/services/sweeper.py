"""The events outbox sweeper: nothing committed is silently dropped.

Enqueueing after commit can be lost (the process dies between commit and
publish, or the broker is down); scheduled events wait in PostgreSQL, not in
the broker. So a periodic sweep, per tenant, claims events still ``accepted``
whose time has come — due scheduled events, and others older than a grace
period — with ``FOR UPDATE SKIP LOCKED`` (sweepers on several machines share
the work) and hands them to the pipeline again. Processing is idempotent, so
an event enqueued twice is processed once.
"""

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from rules_engine.models import Event, EventStatus

GRACE = timedelta(seconds=60)
CLAIM_LIMIT = 1000
CHUNK = 100


def events_due(*, now: datetime) -> Q:
    """Accepted events the pipeline should have by now."""
    return Q(status=EventStatus.ACCEPTED) & (
        Q(send_at__isnull=True, created_at__lt=now - GRACE) | Q(send_at__lte=now)
    )


def events_sweep(*, now: datetime | None = None) -> int:
    """Enqueue this tenant's due accepted events; returns how many."""
    from rules_engine.tasks import event_process_many

    now = now or timezone.now()
    with transaction.atomic():
        ids = [
            str(event_id)
            for event_id in Event.objects.select_for_update(skip_locked=True)
            .filter(events_due(now=now))
            .order_by("created_at")
            .values_list("id", flat=True)[:CLAIM_LIMIT]
        ]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            transaction.on_commit(
                lambda chunk=chunk: event_process_many.delay(chunk),  # type: ignore[misc]
                robust=True,
            )
    return len(ids)
